package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/client/auth"
	"github.com/trustgate/trustgate/policy"
	"github.com/trustgate/trustgate/token"
)

// TokenServiceOptions configure the token service: GET and POST /token,
// which exchange an attestation token or a JWT-SVID for a scoped token in
// the format of the distribution token spec, and the Bearer challenges of
// plugin endpoints, which then also accept scoped tokens.
type TokenServiceOptions struct {
	// Realm is the absolute URL of the token endpoint as callers reach
	// it, such as "https://broker.example.org/token". Challenges name it.
	Realm string
	// Service is the broker's own service name: the audience of scoped
	// tokens for its plugin endpoints, named in their challenges.
	Service string
	// Services are the other services (registries) tokens may be issued
	// for. A request for any other service is refused.
	Services []string
	// X5CServices are those of Services whose tokens carry an "x5c"
	// chain to the token CA (token.Authority.SignWithChain): registries
	// that trust the broker through auth.token.rootcertbundle
	// (distribution v2.x, Harbor, v3 with a rootcertbundle). A registry
	// with only a JWKS refuses chained tokens, so the others get none.
	X5CServices []string
	// ExpiresIn is a scoped token's lifetime (default 5m). A token never
	// outlives the credential it was exchanged for, and ExpiresIn may not
	// exceed the token Authority's MaxTokenTTL.
	ExpiresIn time.Duration
	// SVIDs, when set, is the source of the JWT-SVID keys (the svid
	// plugin): a JWT-SVID of the broker's trust domain whose audience
	// holds SVIDAudience is then a caller credential at /token.
	SVIDs SVIDBundle
	// SVIDAudience is the audience a caller's JWT-SVID must hold (default
	// Service).
	SVIDAudience string
	// MaxScopes bounds the scopes of one request (default 32).
	MaxScopes int
}

// SVIDBundle is where the token service finds the JWT-SVID signing keys:
// a SPIFFE bundle document, as (*svid.Plugin).Bundle returns it.
type SVIDBundle interface {
	Bundle() []byte
}

// Token service limits.
const (
	// DefaultScopedTokenTTL is a scoped token's lifetime unless
	// TokenServiceOptions.ExpiresIn says otherwise.
	DefaultScopedTokenTTL = 5 * time.Minute
	defaultMaxScopes      = 32
	maxTokenForm          = 64 << 10
)

// ProblemInsufficientScope is a scoped token that does not cover the
// plugin request it came with. Status 403.
const ProblemInsufficientScope = "InsufficientScope"

// tokenService is the validated configuration of the token service.
type tokenService struct {
	realm     string
	service   string
	services  map[string]bool
	x5c       map[string]bool
	expiresIn time.Duration
	maxScopes int
	svids     *svidVerifier
}

func newTokenService(o *TokenServiceOptions, td spiffeid.TrustDomain, maxTTL time.Duration) (*tokenService, error) {
	u, err := url.Parse(o.Realm)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || !quotable(o.Realm) {
		return nil, fmt.Errorf("broker: token service realm %q: want an absolute http(s) URL such as \"https://broker.example.org/token\"", o.Realm)
	}
	ts := &tokenService{realm: o.Realm, service: o.Service, services: map[string]bool{o.Service: true},
		x5c: map[string]bool{}, expiresIn: o.ExpiresIn, maxScopes: o.MaxScopes}
	if o.Service == "" || !quotable(o.Service) {
		return nil, fmt.Errorf("broker: token service name %q: want a non-empty name without quotes, backslashes or control characters", o.Service)
	}
	for _, svc := range o.Services {
		if svc == "" || !quotable(svc) {
			return nil, fmt.Errorf("broker: token service: service name %q: want a non-empty name without quotes, backslashes or control characters", svc)
		}
		ts.services[svc] = true
	}
	for _, svc := range o.X5CServices {
		if svc == o.Service || !ts.services[svc] {
			return nil, fmt.Errorf("broker: token service: x5c service %q is not one of the registry services %q", svc, o.Services)
		}
		ts.x5c[svc] = true
	}
	if ts.expiresIn <= 0 {
		ts.expiresIn = DefaultScopedTokenTTL
	}
	if ts.expiresIn > maxTTL {
		return nil, fmt.Errorf("broker: token service expires_in %v exceeds the signing keys' MaxTokenTTL %v", ts.expiresIn, maxTTL)
	}
	if ts.maxScopes <= 0 {
		ts.maxScopes = defaultMaxScopes
	}
	if o.SVIDs != nil {
		aud := o.SVIDAudience
		if aud == "" {
			aud = o.Service
		}
		ts.svids = &svidVerifier{td: td, src: o.SVIDs, audience: aud}
	}
	return ts, nil
}

// quotable reports whether s can sit in a quoted-string of a challenge
// without escaping.
func quotable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// challenge is the WWW-Authenticate value of the token service's
// endpoints and plugin endpoints: realm and service always, scope when
// the request has one, and an RFC 6750 error code when there is one.
func (ts *tokenService) challenge(scope, errCode string) string {
	return ts.challengeFor(ts.service, scope, errCode)
}

// challengeFor is challenge for a known service (validated quotable).
func (ts *tokenService) challengeFor(service, scope, errCode string) string {
	v := `Bearer realm="` + ts.realm + `",service="` + service + `"`
	if scope != "" {
		v += `,scope="` + scope + `"`
	}
	if errCode != "" {
		v += `,error="` + errCode + `"`
	}
	return v
}

// svidVerifier verifies JWT-SVIDs against the svid plugin's bundle,
// re-parsing the bundle only when it changes.
type svidVerifier struct {
	td       spiffeid.TrustDomain
	src      SVIDBundle
	audience string

	mu     sync.Mutex
	raw    []byte
	parsed *spiffebundle.Bundle
}

func (v *svidVerifier) bundle() (*spiffebundle.Bundle, error) {
	doc := v.src.Bundle()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.parsed == nil || !bytes.Equal(v.raw, doc) {
		b, err := spiffebundle.Parse(v.td, doc)
		if err != nil {
			return nil, fmt.Errorf("svid bundle: %w", err)
		}
		v.raw, v.parsed = bytes.Clone(doc), b
	}
	return v.parsed, nil
}

func (v *svidVerifier) verify(raw string) (*callerEntry, error) {
	b, err := v.bundle()
	if err != nil {
		return nil, err
	}
	sv, err := jwtsvid.ParseAndValidate(raw, b, []string{v.audience})
	if err != nil {
		return nil, fmt.Errorf("neither an attestation token nor a valid JWT-SVID: %w", err)
	}
	id := sv.ID.String()
	e := &callerEntry{kind: credSVID, caller: plugin.Caller{Subject: id, SPIFFEID: id},
		claims: policy.Claims{Subject: id, SPIFFEID: id}, expiry: sv.Expiry, teeKeyErr: errors.New("a JWT-SVID carries no tee-pubkey")}
	if iat, ok := sv.Claims["iat"].(float64); ok {
		e.notBefore = time.Unix(int64(iat), 0)
	}
	return e, nil
}

// tokenRequest is one parsed request to /token.
type tokenRequest struct {
	oauth    bool
	service  string
	scopes   []auth.Scope
	username string
	cred     string
}

// tokenError is a refused /token request.
type tokenError struct {
	status int
	// oauthCode is the RFC 6749 error code of an OAuth2 (POST) answer.
	oauthCode string
	detail    string
	challenge bool
	errCode   string // RFC 6750 error code for the challenge
}

func (e *tokenError) Error() string { return e.detail }

func badTokenRequest(code, format string, args ...any) *tokenError {
	return &tokenError{status: http.StatusBadRequest, oauthCode: code, detail: fmt.Sprintf(format, args...)}
}

// parseTokenRequest reads the service, scopes and credential of a GET
// (query, Authorization header) or OAuth2 POST (form) token request. On a
// refused credential it returns the request too, so that the challenge can
// name the service requested.
func (ts *tokenService) parseTokenRequest(w http.ResponseWriter, r *http.Request) (*tokenRequest, *tokenError) {
	tr := &tokenRequest{}
	var params url.Values
	var scopes []string
	switch r.Method {
	case http.MethodGet:
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			return nil, badTokenRequest("invalid_request", "query: %v", err)
		}
		params, scopes = q, q["scope"]
	default:
		tr.oauth = true
		if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); !strings.EqualFold(strings.TrimSpace(ct), "application/x-www-form-urlencoded") {
			return nil, badTokenRequest("invalid_request", "an OAuth2 token request is a form: Content-Type application/x-www-form-urlencoded")
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxTokenForm)
		if err := r.ParseForm(); err != nil {
			return nil, badTokenRequest("invalid_request", "form: %v", err)
		}
		params = r.PostForm
		for _, k := range []string{"grant_type", "client_id", "username", "password", "scope", "service"} {
			if len(params[k]) > 1 {
				return nil, badTokenRequest("invalid_request", "form parameter %s appears %d times", k, len(params[k]))
			}
		}
		switch gt := params.Get("grant_type"); gt {
		case "password":
			tr.username, tr.cred = params.Get("username"), params.Get("password")
			if tr.cred == "" {
				return nil, badTokenRequest("invalid_request", "grant_type=password needs password: the attestation token or a JWT-SVID")
			}
		case "refresh_token":
			return nil, badTokenRequest("unsupported_grant_type", "this token service issues no refresh tokens: use grant_type=password with the attestation token or a JWT-SVID as the password")
		case "":
			return nil, badTokenRequest("invalid_request", "grant_type is missing: want password")
		default:
			return nil, badTokenRequest("unsupported_grant_type", "grant_type %.40q is not supported: want password", gt)
		}
		if params.Get("client_id") == "" {
			return nil, badTokenRequest("invalid_request", "client_id is required (OAuth2 token request)")
		}
		if s := params.Get("scope"); s != "" {
			scopes = []string{s}
		}
	}
	if n := len(params["service"]); n > 1 {
		return nil, badTokenRequest("invalid_request", "service appears %d times: give it once", n)
	}
	tr.service = params.Get("service")
	if tr.service == "" {
		tr.service = ts.service
	}
	if !ts.services[tr.service] {
		return nil, badTokenRequest("invalid_request", "unknown service %.100q: this broker issues tokens for %s", tr.service, strings.Join(slices.Sorted(maps.Keys(ts.services)), ", "))
	}
	if h := r.Header.Get("Authorization"); !tr.oauth && h != "" {
		if raw, ok := bearerValue(h); ok {
			tr.cred = raw
		} else if user, pass, ok := basicAuth(h); ok {
			tr.username, tr.cred = user, pass
		} else {
			return tr, &tokenError{status: http.StatusUnauthorized, detail: "Authorization must be Bearer <attestation token or JWT-SVID> or Basic with the token as the password", challenge: true, errCode: "invalid_request"}
		}
	}
	var flat []string
	for _, v := range scopes {
		for f := range strings.FieldsSeq(v) {
			if len(flat) == ts.maxScopes {
				return nil, badTokenRequest("invalid_scope", "more than %d scopes in one request", ts.maxScopes)
			}
			if _, err := auth.ParseScope(f); err != nil {
				return nil, badTokenRequest("invalid_scope", "%v", err)
			}
			flat = append(flat, f)
		}
	}
	for _, f := range auth.CleanScopes(flat) {
		sc, err := auth.ParseScope(f)
		if err != nil {
			return nil, badTokenRequest("invalid_scope", "%v", err)
		}
		tr.scopes = append(tr.scopes, sc)
	}
	return tr, nil
}

// basicAuth decodes a "Basic" Authorization value. The user-pass is split
// at its last colon, not its first (RFC 7617 forbids colons in user-ids):
// the password is a JWT, which holds none, and the username may then be a
// SPIFFE ID, which does.
func basicAuth(h string) (user, pass string, ok bool) {
	if len(h) < 6 || !strings.EqualFold(h[:6], "Basic ") {
		return "", "", false
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(h[6:]))
	if err != nil {
		return "", "", false
	}
	i := bytes.LastIndexByte(b, ':')
	if i < 0 {
		return "", "", false
	}
	return string(b[:i]), string(b[i+1:]), true
}

// bearerValue returns the token of a "Bearer <token>" header value.
func bearerValue(h string) (string, bool) {
	if len(h) < 7 || !strings.EqualFold(h[:7], "Bearer ") {
		return "", false
	}
	raw := strings.TrimSpace(h[7:])
	return raw, raw != ""
}

// tokenOutcome is what one /token request came to, for the audit record.
type tokenOutcome struct {
	caller    *callerEntry
	service   string
	requested []auth.Scope
	granted   []token.Access
	verdict   string
	status    int
	revision  int64
	err       error
}

// Token request verdicts, in the audit log and the metrics.
const (
	TokenVerdictGranted = "granted" // every requested action granted
	TokenVerdictPartial = "partial" // some requested actions granted
	TokenVerdictNone    = "none"    // a token with an empty access list
)

// serveToken serves GET and POST /token.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	o := tokenOutcome{}
	defer func() { s.audit.recordToken(r, &o, time.Since(start)) }()
	ts := s.ts
	// The challenge names the service requested, once it is known.
	service := ts.service
	fail := func(te *tokenError, verdict string) {
		o.status, o.verdict = te.status, verdict
		if te.challenge {
			w.Header().Set("WWW-Authenticate", ts.challengeFor(service, "", te.errCode))
		}
		if r.Method == http.MethodPost && te.oauthCode != "" {
			writeJSON(w, te.status, map[string]string{"error": te.oauthCode, "error_description": te.detail})
			return
		}
		typ := ProblemBadRequest
		if te.status == http.StatusUnauthorized {
			typ = ProblemTokenInvalid
			if te.errCode == "" {
				typ = ProblemTokenNotFound
			}
		}
		writeProblem(w, te.status, typ, te.detail)
	}
	tr, te := ts.parseTokenRequest(w, r)
	if tr != nil {
		service = tr.service
	}
	if te != nil {
		verdict := VerdictInvalid
		if te.status == http.StatusUnauthorized {
			verdict = VerdictUnauthenticated
		}
		fail(te, verdict)
		return
	}
	o.service, o.requested = tr.service, tr.scopes
	if tr.cred == "" {
		fail(&tokenError{status: http.StatusUnauthorized, detail: "no credential: send Authorization: Bearer <attestation token or JWT-SVID>, or Basic with the token as the password", challenge: true}, VerdictUnauthenticated)
		return
	}
	ent, af := s.verifyCaller(tr.cred, credAttestation|credSVID)
	if af != nil {
		fail(&tokenError{status: http.StatusUnauthorized, oauthCode: "invalid_grant", detail: af.detail, challenge: true, errCode: "invalid_token"}, VerdictUnauthenticated)
		return
	}
	if af := s.refuseEvicted(r.Context(), ent.caller.SPIFFEID); af != nil {
		fail(&tokenError{status: af.status, oauthCode: "invalid_grant", detail: af.detail}, VerdictDenied)
		return
	}
	o.caller = ent
	if strings.HasPrefix(tr.username, "spiffe://") && tr.username != ent.caller.SPIFFEID {
		fail(&tokenError{status: http.StatusUnauthorized, oauthCode: "invalid_grant", detail: fmt.Sprintf("username %.200q is not the credential's SPIFFE ID", tr.username), challenge: true, errCode: "invalid_token"}, VerdictUnauthenticated)
		return
	}
	now := s.now()
	exp := now.Add(ts.expiresIn)
	if ent.expiry.Before(exp) {
		exp = ent.expiry
	}
	expiresIn := int64(time.Unix(exp.Unix(), 0).Sub(now) / time.Second)
	if expiresIn < 1 {
		fail(&tokenError{status: http.StatusUnauthorized, oauthCode: "invalid_grant", detail: "the credential expires in less than a second: attest again", challenge: true, errCode: "invalid_token"}, VerdictUnauthenticated)
		return
	}
	access, complete, rev, err := s.grant(r.Context(), r.Method, tr.service, tr.scopes, ent)
	o.granted, o.revision = access, rev
	if err != nil {
		o.err = err
		fail(&tokenError{status: http.StatusInternalServerError, oauthCode: "server_error", detail: "the policy failed to evaluate; see the server log"}, VerdictError)
		return
	}
	var jti [16]byte
	_, _ = rand.Read(jti[:])
	claims := token.Scoped{Issuer: s.opts.Issuer, Subject: ent.caller.SPIFFEID, Audience: tr.service,
		Expiration: exp.Unix(), NotBefore: now.Unix(), IssuedAt: now.Unix(), JWTID: hex.EncodeToString(jti[:]), Access: access}
	if tr.service == ts.service {
		c := ent.caller
		claims.SPIFFEID, claims.Selectors, claims.Aliases, claims.TEE, claims.TCB, claims.TEEPubKey = c.SPIFFEID, c.Selectors, c.Aliases, c.TEE, c.TCB, c.TEEPubKey
	}
	sign := s.opts.Tokens.Sign
	if ts.x5c[tr.service] {
		sign = s.opts.Tokens.SignWithChain
	}
	tok, err := sign(claims)
	if err != nil {
		o.err = err
		fail(&tokenError{status: http.StatusInternalServerError, oauthCode: "server_error", detail: "internal error; see the server log"}, VerdictError)
		return
	}
	switch {
	case complete:
		o.verdict = TokenVerdictGranted
	case len(access) > 0:
		o.verdict = TokenVerdictPartial
	default:
		o.verdict = TokenVerdictNone
	}
	o.status = http.StatusOK
	issued := now.UTC().Format(time.RFC3339Nano)
	w.Header().Set("Pragma", "no-cache")
	if tr.oauth {
		granted := make([]string, len(access))
		for i, a := range access {
			granted[i] = auth.Scope{Type: a.Type, Class: a.Class, Name: a.Name, Actions: a.Actions}.String()
		}
		writeJSON(w, http.StatusOK, map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": expiresIn,
			"issued_at": issued, "scope": strings.Join(granted, " ")})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"token": tok, "access_token": tok, "expires_in": expiresIn, "issued_at": issued})
}

// grant decides each requested scope with the policy and returns the
// access granted, whether that is everything requested, and the policy
// revision. A scope with no granted action is left out: a partial grant is
// not an error.
func (s *Server) grant(ctx context.Context, method, service string, scopes []auth.Scope, ent *callerEntry) ([]token.Access, bool, int64, error) {
	access := []token.Access{}
	complete := true
	var rev int64
	for _, sc := range scopes {
		var acts []string
		var err error
		if name, path, ok := pluginTarget(sc); ok && service == s.ts.service {
			acts, rev, err = s.grantPlugin(ctx, name, path, sc.Actions, ent)
		} else {
			acts, rev, err = s.grantRule(ctx, method, service, sc, ent)
		}
		if err != nil {
			return nil, false, rev, err
		}
		if len(acts) != len(sc.Actions) {
			complete = false
		}
		if len(acts) > 0 {
			access = append(access, token.Access{Type: sc.Type, Class: sc.Class, Name: sc.Name, Actions: acts})
		}
	}
	return access, complete, rev, nil
}

// grantRule decides a scope with data.policy.grant: the requested actions
// that the rule's value holds, or all of them when it holds "*".
func (s *Server) grantRule(ctx context.Context, method, service string, sc auth.Scope, ent *callerEntry) ([]string, int64, error) {
	in := &policy.Input{Method: method, Plugin: "token", Claims: ent.claims, Credential: ent.kind.String(), Service: service,
		Scope: &policy.Scope{Type: sc.Type, Class: sc.Class, Name: sc.Name, Actions: sc.Actions}}
	d, err := s.policy.Evaluate(ctx, in)
	if err != nil {
		return nil, d.Revision, err
	}
	if slices.Contains(d.Grant, "*") {
		return slices.Clone(sc.Actions), d.Revision, nil
	}
	var out []string
	for _, a := range sc.Actions {
		if slices.Contains(d.Grant, a) {
			out = append(out, a)
		}
	}
	return out, d.Revision, nil
}

// grantPlugin decides a plugin scope on the broker's own service: each
// action (a lower-cased method) is granted when the plugin lets attested
// callers make that request and data.policy.allow allows it for the
// caller, with the input the plugin endpoint would see, without a query.
// "*" is never granted on a plugin scope.
func (s *Server) grantPlugin(ctx context.Context, name string, path []string, actions []string, ent *callerEntry) ([]string, int64, error) {
	p, ok := s.plugins[name]
	if !ok {
		return nil, 0, nil
	}
	var out []string
	var rev int64
	for _, a := range actions {
		m := methodOf(a)
		if m == "" {
			continue
		}
		access, _, err := decide(ctx, p, &plugin.Request{Method: m, Path: path, Query: url.Values{}})
		if err != nil {
			return nil, rev, err
		}
		if access != plugin.Attested {
			continue
		}
		d, err := s.policy.Evaluate(ctx, &policy.Input{Method: m, Plugin: name, Path: path, Query: map[string]string{}, Claims: ent.claims, Credential: ent.kind.String()})
		rev = d.Revision
		if err != nil {
			return nil, rev, err
		}
		if d.Allow {
			out = append(out, a)
		}
	}
	return out, rev, nil
}
