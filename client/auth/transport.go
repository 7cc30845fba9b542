package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// DefaultTokenTimeout bounds a token fetch when no WithTokenTimeout is given,
// whether or not the caller's context has a deadline.
const DefaultTokenTimeout = 30 * time.Second

// DefaultClientID is the OAuth2 client_id sent when none is configured.
const DefaultClientID = "trustgate"

// maxRefreshMargin is the longest a token is refreshed before its expiry.
const maxRefreshMargin = 10 * time.Second

// Cache bounds: beyond them, expired tokens and arbitrary learned contexts
// are dropped so that a long-lived transport cannot grow without limit.
const (
	maxTokens   = 1024
	maxContexts = 8192
)

// Option configures a Transport.
type Option func(*Transport)

// WithBase sets the transport that carries the requests (registry and token
// endpoint alike). The default is http.DefaultTransport. When it is an
// *http.Transport without a custom TLS dialer, token requests for a public
// registry go through a copy of it whose dialer refuses private addresses
// (see WithResolver); any other RoundTripper only gets a check of the
// realm's addresses before each request, which DNS rebinding can outwit.
func WithBase(rt http.RoundTripper) Option { return func(t *Transport) { t.base = rt } }

// WithCredentials sets where credentials come from; see FromDockerConfig.
// Without it every token is fetched anonymously.
func WithCredentials(f CredentialFunc) Option { return func(t *Transport) { t.creds = f } }

// WithOAuth2 makes the transport use the OAuth2 password grant (POST) for
// username and password credentials, falling back to GET on a 404. A
// refresh token always uses OAuth2.
func WithOAuth2(clientID string) Option {
	return func(t *Transport) {
		t.oauth2 = true
		if clientID != "" {
			t.clientID = clientID
		}
	}
}

// WithTokenTimeout bounds each token fetch (default DefaultTokenTimeout).
func WithTokenTimeout(d time.Duration) Option {
	return func(t *Transport) {
		if d > 0 {
			t.tokenTimeout = d
		}
	}
}

// WithLogger sets the logger for debug events (learned scopes, token
// fetches). The default discards.
func WithLogger(l *slog.Logger) Option { return func(t *Transport) { t.log = l } }

// WithClock sets the clock used for token expiry (tests use a fake one).
func WithClock(now func() time.Time) Option { return func(t *Transport) { t.now = now } }

// Transport is an http.RoundTripper that authenticates registry requests
// with scoped tokens. It is safe for concurrent use; share one per process
// so that its cache is shared too.
type Transport struct {
	base         http.RoundTripper
	creds        CredentialFunc
	clientID     string
	oauth2       bool
	tokenTimeout time.Duration
	log          *slog.Logger
	now          func() time.Time
	resolver     Resolver
	guard        *realmGuard
	// guarded carries token requests for public registries: base with
	// guard's dialer, or nil when base is not an *http.Transport.
	guarded http.RoundTripper

	group singleflight.Group

	mu       sync.Mutex
	contexts map[string]*learned   // origin + " " + context key
	hosts    map[string]*hostState // origin
	tokens   map[string]*tokenEntry
	postless map[string]bool // realms that answered OAuth2 POST with 404
}

// learned is what a server demanded in one context.
type learned struct {
	basic   bool
	realm   *url.URL
	service string
	scopes  []string
}

// hostState is what the transport knows about one origin.
type hostState struct {
	basic bool
	// hint is the realm and service of a challenge that asked for exactly
	// the derived scope; set only while the origin has never asked for
	// anything else, so that new contexts can fetch their token up front.
	hint     *learned
	mismatch bool
}

type tokenEntry struct {
	origin, realm, service string
	scopes                 []Scope
	token                  string
	refreshAt, expires     time.Time
}

// New returns a Transport.
func New(opts ...Option) *Transport {
	t := &Transport{
		base:         http.DefaultTransport,
		creds:        func(context.Context, string) (Credential, error) { return Credential{}, nil },
		clientID:     DefaultClientID,
		tokenTimeout: DefaultTokenTimeout,
		log:          slog.New(slog.DiscardHandler),
		now:          time.Now,
		contexts:     map[string]*learned{},
		hosts:        map[string]*hostState{},
		tokens:       map[string]*tokenEntry{},
		postless:     map[string]bool{},
	}
	for _, o := range opts {
		o(t)
	}
	if t.resolver == nil {
		t.resolver = net.DefaultResolver
	}
	t.guard = &realmGuard{resolver: t.resolver}
	t.guarded = t.guard.guardedTransport(t.base)
	return t
}

// reqScope is the context of a request: a key and the scopes its path and
// method need (none for the /v2/ ping and for unknown paths).
type reqScope struct {
	key    string
	scopes []string
}

var endpointRE = regexp.MustCompile(`^/v2/(.+?)/(manifests/[^/]+|blobs/uploads/[^/]*|blobs/[^/]+|tags/list|referrers/[^/]+)$`)

// deriveScope maps a request to the scopes the distribution API needs for it.
func deriveScope(req *http.Request) reqScope {
	p := req.URL.Path
	switch p {
	case "/v2/", "/v2":
		return reqScope{key: "ping"}
	case "/v2/_catalog":
		return reqScope{key: "registry:catalog:*", scopes: []string{"registry:catalog:*"}}
	}
	m := endpointRE.FindStringSubmatch(p)
	if m == nil || validateResourceName(m[1]) != nil {
		return reqScope{key: "path:" + req.Method + ":" + p}
	}
	var scopes []string
	switch req.Method {
	case http.MethodGet, http.MethodHead:
		scopes = []string{"repository:" + m[1] + ":pull"}
	case http.MethodDelete:
		scopes = []string{"repository:" + m[1] + ":delete"}
	default:
		scopes = []string{"repository:" + m[1] + ":pull,push"}
		q := req.URL.Query()
		if from := q.Get("from"); req.Method == http.MethodPost && q.Get("mount") != "" && validateResourceName(from) == nil {
			scopes = append(scopes, "repository:"+from+":pull")
		}
	}
	scopes = CleanScopes(scopes)
	return reqScope{key: strings.Join(scopes, " "), scopes: scopes}
}

// attempt records which token went out with a request.
type attempt struct {
	tokKey string
	token  string
	scopes []string
	// guessed is set when the context had not learned its scope: the
	// token was chosen from the derived scope, so a challenge answering it
	// is a first challenge, not a request for more scope.
	guessed bool
}

// RoundTrip sends req, attaching the token its context needs, and answers
// one 401 challenge (or one insufficient_scope) by fetching a token and
// retrying once. A request that already carries Authorization is passed
// through unchanged, except that once a redirect chain has left the origin
// of its first request, no later hop carries that header.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil || req.URL.Host == "" {
		closeBody(req)
		return nil, errors.New("auth: request has no URL host")
	}
	ctx := req.Context()
	out := req.Clone(ctx)
	if req.Response != nil && chainLeftOrigin(req) {
		out.Header.Del("Authorization")
	}
	if out.Header.Get("Authorization") != "" {
		return t.base.RoundTrip(out)
	}
	origin := strings.ToLower(req.URL.Scheme) + "://" + canonicalHostPort(req.URL)
	rs := deriveScope(req)

	att, hdr, err := t.prepare(ctx, origin, rs, req.URL)
	if err != nil {
		closeBody(req)
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), err)
	}
	if hdr != "" {
		out.Header.Set("Authorization", hdr)
	}
	resp, err := t.base.RoundTrip(out)
	// Answer the first challenge, and then at most one insufficient_scope:
	// once a refusal with insufficient_scope has been answered, the next
	// answer is final.
	refused := false
	for round := 0; err == nil && resp.StatusCode == http.StatusUnauthorized && round < 2; round++ {
		scope := insufficientScope(resp)
		if round == 1 && (refused || !scope) {
			break
		}
		refused = scope
		var retried bool
		resp, att, retried, err = t.answer(req, resp, origin, rs, att)
		if !retried {
			break
		}
	}
	return resp, err
}

// insufficientScope reports whether a 401 carries a Bearer challenge with
// error="insufficient_scope".
func insufficientScope(resp *http.Response) bool {
	chs, err := ParseChallenges(resp.Header.Values("Www-Authenticate")...)
	if err != nil {
		return false
	}
	for _, c := range chs {
		if c.Scheme == "bearer" && c.Params["error"] == "insufficient_scope" {
			return true
		}
	}
	return false
}

// prepare picks the Authorization for a request before it is sent.
func (t *Transport) prepare(ctx context.Context, origin string, rs reqScope, u *url.URL) (*attempt, string, error) {
	t.mu.Lock()
	l := t.contexts[origin+" "+rs.key]
	hs := t.hosts[origin]
	var predicted *learned
	if l == nil && hs != nil && hs.hint != nil && !hs.mismatch && len(rs.scopes) > 0 {
		predicted = &learned{realm: hs.hint.realm, service: hs.hint.service, scopes: rs.scopes}
	}
	basic := hs != nil && hs.basic
	t.mu.Unlock()

	if basic || (l != nil && l.basic) {
		h, err := t.basicHeader(ctx, u.Host)
		return nil, h, err
	}
	if l != nil {
		return t.bearer(ctx, origin, l, u, "")
	}
	if len(rs.scopes) == 0 {
		return nil, "", nil
	}
	// A context not yet learned may reuse a fresh token from this origin
	// that covers its derived scope and names no other resource.
	if need, err := ParseScopes(strings.Join(rs.scopes, " ")); err == nil {
		if e := t.covering(origin, need, nil, ""); e != nil {
			return &attempt{token: e.token, scopes: rs.scopes, guessed: true}, "Bearer " + e.token, nil
		}
	}
	if predicted == nil {
		return nil, "", nil
	}
	att, h, err := t.bearer(ctx, origin, predicted, u, "")
	if err != nil {
		// A failed prediction costs nothing: send unauthenticated and
		// learn from the challenge.
		t.log.DebugContext(ctx, "predicted token fetch failed", "origin", origin, "err", err)
		return nil, "", nil
	}
	att.guessed = true
	return att, h, nil
}

// answer handles a 401: learn the challenge for this context, get the token
// it asks for, and send the request again. It reports the attempt it made
// and whether it retried at all.
func (t *Transport) answer(req *http.Request, resp *http.Response, origin string, rs reqScope, att *attempt) (*http.Response, *attempt, bool, error) {
	ctx := req.Context()
	chs, err := ParseChallenges(resp.Header.Values("Www-Authenticate")...)
	if err != nil {
		t.log.DebugContext(ctx, "unparsable challenge", "url", req.URL.Redacted(), "err", err)
		return resp, att, false, nil
	}
	var bearer, basic *Challenge
	for i := range chs {
		switch {
		case chs[i].Scheme == "bearer" && bearer == nil:
			bearer = &chs[i]
		case chs[i].Scheme == "basic" && basic == nil:
			basic = &chs[i]
		}
	}
	var hdr string
	switch {
	case bearer != nil:
		realm, err := validateRealm(bearer.Params["realm"], req.URL)
		if err != nil {
			drainClose(resp.Body)
			closeBody(req)
			return nil, att, false, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), err)
		}
		scopes := CleanScopes(strings.Fields(bearer.Params["scope"]))
		if len(scopes) == 0 {
			scopes = rs.scopes
		}
		if att != nil && !att.guessed && bearer.Params["error"] == "insufficient_scope" {
			scopes = CleanScopes(append(slices.Clone(att.scopes), scopes...))
		}
		l := &learned{realm: realm, service: bearer.Params["service"], scopes: scopes}
		t.learn(ctx, origin, rs, l)
		if !rewindable(req) {
			return resp, att, false, nil
		}
		rejected := ""
		if att != nil {
			rejected = att.token
		}
		var next *attempt
		next, hdr, err = t.bearer(ctx, origin, l, req.URL, rejected)
		if err != nil {
			drainClose(resp.Body)
			closeBody(req)
			return nil, att, false, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), err)
		}
		att = next
	case basic != nil && att == nil:
		cred, err := t.credential(ctx, req.URL.Host)
		if err != nil || cred.Username == "" || !rewindable(req) {
			return resp, att, false, nil
		}
		t.mu.Lock()
		t.host(origin).basic = true
		t.mu.Unlock()
		hdr = basicValue(cred)
	default:
		return resp, att, false, nil
	}
	drainClose(resp.Body)
	retry := req.Clone(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		body, err := req.GetBody()
		if err != nil {
			return nil, att, false, fmt.Errorf("%s %s: rewind body: %w", req.Method, req.URL.Redacted(), err)
		}
		retry.Body = body
	}
	retry.Header.Set("Authorization", hdr)
	resp, err = t.base.RoundTrip(retry)
	return resp, att, true, err
}

// learn records what the server demanded for a context and whether the
// origin asks for the derived scope.
func (t *Transport) learn(ctx context.Context, origin string, rs reqScope, l *learned) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.contexts) >= maxContexts {
		for k := range t.contexts {
			delete(t.contexts, k)
			break
		}
	}
	t.contexts[origin+" "+rs.key] = l
	if len(rs.scopes) > 0 {
		hs := t.host(origin)
		if slices.Equal(l.scopes, rs.scopes) {
			hs.hint = &learned{realm: l.realm, service: l.service}
		} else {
			hs.mismatch = true
		}
	}
	t.log.DebugContext(ctx, "learned challenge", "origin", origin, "context", rs.key,
		"realm", l.realm.Redacted(), "service", l.service, "scope", strings.Join(l.scopes, " "))
}

func (t *Transport) host(origin string) *hostState {
	hs := t.hosts[origin]
	if hs == nil {
		hs = &hostState{}
		t.hosts[origin] = hs
	}
	return hs
}

func tokenKey(origin string, l *learned) string {
	return origin + "\x00" + l.realm.String() + "\x00" + l.service + "\x00" + strings.Join(l.scopes, " ")
}

// bearer returns the Bearer header for l's scope, from the cache when fresh,
// else from one shared fetch. rejected names a token the server just refused,
// which must not be returned again.
func (t *Transport) bearer(ctx context.Context, origin string, l *learned, u *url.URL, rejected string) (*attempt, string, error) {
	key := tokenKey(origin, l)
	if e := t.cached(origin, l, key, rejected); e != nil {
		return &attempt{tokKey: key, token: e.token, scopes: l.scopes}, "Bearer " + e.token, nil
	}
	ch := t.group.DoChan(key, func() (any, error) {
		if e := t.cached(origin, l, key, rejected); e != nil {
			return e, nil
		}
		fetched := t.now()
		tr, err := t.fetch(context.WithoutCancel(ctx), tokenRequest{registry: u, realm: l.realm, service: l.service, scopes: l.scopes})
		if err != nil {
			return nil, err
		}
		parsed, _ := ParseScopes(strings.Join(l.scopes, " "))
		exp := tr.Expiry(fetched)
		margin := min(exp.Sub(fetched)/4, maxRefreshMargin)
		e := &tokenEntry{origin: origin, realm: l.realm.String(), service: l.service, scopes: parsed,
			token: tr.Token, expires: exp, refreshAt: exp.Add(-margin)}
		t.store(key, e)
		t.log.DebugContext(ctx, "fetched token", "origin", origin, "realm", l.realm.Redacted(),
			"scope", strings.Join(l.scopes, " "), "expires_in", tr.ExpiresIn)
		return e, nil
	})
	select {
	case <-ctx.Done():
		return nil, "", fmt.Errorf("waiting for token: %w", ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return nil, "", fmt.Errorf("fetch token for %q: %w", strings.Join(l.scopes, " "), r.Err)
		}
		e := r.Val.(*tokenEntry)
		return &attempt{tokKey: key, token: e.token, scopes: l.scopes}, "Bearer " + e.token, nil
	}
}

// cached returns a fresh token usable for l: the one issued for exactly l's
// scope, or, when the origin has only ever asked for derived scopes, one from
// the same realm and service whose scope covers l's.
func (t *Transport) cached(origin string, l *learned, key, rejected string) *tokenEntry {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.tokens[key]; e != nil && now.Before(e.refreshAt) && e.token != rejected {
		return e
	}
	hs := t.hosts[origin]
	if hs == nil || hs.hint == nil || hs.mismatch {
		return nil
	}
	need, err := ParseScopes(strings.Join(l.scopes, " "))
	if err != nil || len(need) == 0 {
		return nil
	}
	return t.coveringLocked(origin, need, l, rejected, now)
}

// covering finds a fresh token for origin whose scope covers need and names
// no resource outside it; with l set, only from l's realm and service.
func (t *Transport) covering(origin string, need []Scope, l *learned, rejected string) *tokenEntry {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.coveringLocked(origin, need, l, rejected, now)
}

func (t *Transport) coveringLocked(origin string, need []Scope, l *learned, rejected string, now time.Time) *tokenEntry {
	for _, e := range t.tokens {
		if e.origin != origin || !now.Before(e.refreshAt) || e.token == rejected {
			continue
		}
		if l != nil && (e.realm != l.realm.String() || e.service != l.service) {
			continue
		}
		if Covers(e.scopes, need) && onlyResources(e.scopes, need) {
			return e
		}
	}
	return nil
}

// onlyResources reports whether every scope in have is on a resource that
// need names, so that a token for have grants nothing about other resources.
func onlyResources(have, need []Scope) bool {
	for _, h := range have {
		if !slices.ContainsFunc(need, func(n Scope) bool { return n.resource() == h.resource() }) {
			return false
		}
	}
	return true
}

func (t *Transport) store(key string, e *tokenEntry) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.tokens) >= maxTokens {
		for k, old := range t.tokens {
			if !now.Before(old.expires) {
				delete(t.tokens, k)
			}
		}
	}
	t.tokens[key] = e
}

func (t *Transport) credential(ctx context.Context, host string) (Credential, error) {
	c, err := t.creds(ctx, host)
	if err != nil {
		return Credential{}, fmt.Errorf("resolve credential for %s: %w", host, err)
	}
	return c, nil
}

func (t *Transport) basicHeader(ctx context.Context, host string) (string, error) {
	cred, err := t.credential(ctx, host)
	if err != nil || cred.Username == "" {
		return "", err
	}
	return basicValue(cred), nil
}

func basicValue(c Credential) string {
	r := &http.Request{Header: http.Header{}}
	r.SetBasicAuth(c.Username, c.Password)
	return r.Header.Get("Authorization")
}

func (t *Transport) noPOST(realm *url.URL) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.postless[realm.String()]
}

func (t *Transport) markNoPOST(realm *url.URL) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.postless[realm.String()] = true
}

// rewindable reports whether req can be sent a second time.
func rewindable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}
