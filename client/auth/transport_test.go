package auth_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/trustgate/trustgate/client/auth"
	"github.com/trustgate/trustgate/client/auth/internal/registrytest"
)

// fakeClock is a settable clock for expiry tests.
type fakeClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

func resolve(t *testing.T, tgt *registrytest.Target, rt http.RoundTripper, repo, tag string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := newRepo(t, tgt, repo, rt).Resolve(ctx, tag); err != nil {
		t.Fatalf("resolve %s:%s on %s: %v", repo, tag, tgt.Name, err)
	}
}

func seedSmall(t *testing.T, tgt *registrytest.Target, repos ...string) {
	t.Helper()
	tr := auth.New(auth.WithCredentials(creds(tgt)))
	im, err := registrytest.NewImage(tgt.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range repos {
		if err := im.Push(context.Background(), newRepo(t, tgt, r, tr), "v1"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTokenNeverToAnotherHostOrRepository interleaves two registries and
// several repositories on each kind of server through one transport; the
// wire checks every token's audience and access claim.
func TestTokenNeverToAnotherHostOrRepository(t *testing.T) {
	targets := []*registrytest.Target{
		registrytest.StartCompliant(t, "one", registrytest.Options{}),
		registrytest.StartCompliant(t, "two", registrytest.Options{}),
		registrytest.StartArtifactory(t, "art", registrytest.Options{}),
		registrytest.StartNVCR(t, "nv", registrytest.Options{}),
	}
	for _, tgt := range targets {
		seedSmall(t, tgt, "a", "b", "c/d")
	}
	wire := registrytest.NewWire(http.DefaultTransport, targets...)
	tr := auth.New(auth.WithBase(wire), auth.WithCredentials(creds(targets...)))
	for range 2 {
		for _, repo := range []string{"a", "b", "c/d"} {
			for _, tgt := range targets {
				resolve(t, tgt, tr, repo, "v1")
			}
		}
	}
	if c := wire.Counts(); c.OutOfScope != 0 {
		t.Fatalf("%d out-of-scope tokens: %v", c.OutOfScope, wire.Problems())
	}
}

// TestWireCheckerCatchesLeaks proves the wire checker the other tests rely
// on flags a token for another repository and for another host.
func TestWireCheckerCatchesLeaks(t *testing.T) {
	one := registrytest.StartCompliant(t, "one", registrytest.Options{})
	two := registrytest.StartCompliant(t, "two", registrytest.Options{})
	seedSmall(t, one, "a", "b")
	seedSmall(t, two, "a")
	grab := &grabber{base: http.DefaultTransport}
	resolve(t, one, auth.New(auth.WithBase(grab), auth.WithCredentials(creds(one))), "a", "v1")
	tok := grab.last()
	wire := registrytest.NewWire(http.DefaultTransport, one, two)
	for _, u := range []string{one.URL.String() + "/v2/b/manifests/v1", two.URL.String() + "/v2/a/manifests/v1"} {
		req, _ := http.NewRequest(http.MethodHead, u, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := wire.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if c := wire.Counts(); c.OutOfScope != 2 {
		t.Fatalf("wire flagged %d of 2 leaks: %v", c.OutOfScope, wire.Problems())
	}
}

type grabber struct {
	base http.RoundTripper
	mu   sync.Mutex
	tok  string
}

func (g *grabber) RoundTrip(r *http.Request) (*http.Response, error) {
	if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		g.mu.Lock()
		g.tok = v
		g.mu.Unlock()
	}
	return g.base.RoundTrip(r)
}

func (g *grabber) last() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tok
}

// TestCrossOriginRedirectDropsAuthorization redirects a blob GET to another
// port on the same IP (a hop net/http would keep the header on) and checks
// that no Authorization arrives there, whether the transport or the caller
// set it.
func TestCrossOriginRedirectDropsAuthorization(t *testing.T) {
	var leaked atomic.Value
	leaked.Store("")
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a := r.Header.Get("Authorization"); a != "" {
			leaked.Store(a)
		}
		_, _ = w.Write([]byte("blob"))
	}))
	defer storage.Close()
	var reg *httptest.Server
	reg = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			fmt.Fprint(w, `{"token":"tok-a"}`)
			return
		}
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="s",scope="repository:a:pull"`, reg.URL+"/token"))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		http.Redirect(w, r, storage.URL+"/blob", http.StatusTemporaryRedirect)
	}))
	defer reg.Close()
	client := &http.Client{Transport: auth.New()}
	for _, callerSets := range []bool{false, true} {
		req, _ := http.NewRequest(http.MethodGet, reg.URL+"/v2/a/blobs/sha256:00", nil)
		if callerSets {
			req.Header.Set("Authorization", "Bearer caller-token")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if l := leaked.Load().(string); l != "" {
			t.Fatalf("callerSets=%v: storage host received Authorization %q", callerSets, l)
		}
	}
}

// routeTo is a base transport that sends every request, whatever its URL
// says, to one local test server: it lets tests use public host names and
// https URLs without a network.
type routeTo struct {
	target *url.URL
	seen   []string
	mu     sync.Mutex
}

func (r *routeTo) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.seen = append(r.seen, req.URL.String())
	r.mu.Unlock()
	out := req.Clone(req.Context())
	out.URL.Scheme, out.URL.Host = r.target.Scheme, r.target.Host
	return http.DefaultTransport.RoundTrip(out)
}

func TestRealmValidation(t *testing.T) {
	for _, c := range []struct {
		registry, realm string
		refused         bool
	}{
		{"https://registry.example.com", "http://registry.example.com/token", true},
		{"https://registry.example.com", "https://10.1.2.3/token", true},
		{"https://registry.example.com", "https://127.0.0.1/token", true},
		{"https://registry.example.com", "https://169.254.169.254/latest", true},
		{"https://registry.example.com", "https://[::ffff:192.168.0.1]/token", true},
		{"https://registry.example.com", "https://metadata.google.internal/token", true},
		{"https://registry.example.com", "ftp://auth.example.com/token", true},
		{"https://registry.example.com", "https://auth.example.com/token", false},
		{"http://127.0.0.1:5000", "http://127.0.0.1:5000/token", false},
		{"http://10.0.0.5:5000", "http://10.0.0.6/token", false},
		// Names: with a custom base the realm's addresses are checked
		// before the request (TestRealmNameResolvingToPrivateIsRefusedBeforeConnecting
		// covers the check at dial time); a name this host cannot resolve is
		// left to the base transport.
		{"https://registry.example.com", "https://internal.example.com/token", true},
		{"https://registry.example.com", "https://unresolvable.example.com/token", false},
	} {
		var fetched atomic.Bool
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" || r.URL.Path == "/latest" {
				fetched.Store(true)
				fmt.Fprint(w, `{"token":"t"}`)
				return
			}
			if r.Header.Get("Authorization") == "" {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="s"`, c.realm))
				w.WriteHeader(http.StatusUnauthorized)
			}
		}))
		u, _ := url.Parse(srv.URL)
		dns := &fakeDNS{hosts: map[string][]string{
			"registry.example.com": {"203.0.113.5"}, "auth.example.com": {"203.0.113.9"}, "internal.example.com": {"10.20.30.40"},
		}}
		tr := auth.New(auth.WithBase(&routeTo{target: u}), auth.WithResolver(dns), auth.WithCredentials(auth.StaticCredential(
			strings.TrimPrefix(strings.TrimPrefix(c.registry, "https://"), "http://"), auth.Credential{Username: "u", Password: "p"})))
		req, _ := http.NewRequest(http.MethodGet, c.registry+"/v2/a/manifests/v1", nil)
		resp, err := tr.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		srv.Close()
		if c.refused {
			if !errors.Is(err, auth.ErrRealmRefused) || fetched.Load() {
				t.Errorf("%s -> %s: want refusal before any token request, got err=%v fetched=%v", c.registry, c.realm, err, fetched.Load())
			}
		} else if err != nil || !fetched.Load() {
			t.Errorf("%s -> %s: want token fetched, got err=%v", c.registry, c.realm, err)
		}
	}
}

// scopeServer is a registry stand-in that needs pull,push on repository a
// for a manifest GET (so a first challenge for pull is insufficient), or
// never accepts anything when stubborn is set.
type scopeServer struct {
	stubborn  bool
	mu        sync.Mutex
	requests  int
	tokenReqs []string
}

func (s *scopeServer) handler(realm func() string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if r.URL.Path == "/token" {
			scope := strings.Join(r.URL.Query()["scope"], " ")
			s.tokenReqs = append(s.tokenReqs, scope)
			fmt.Fprintf(w, `{"token":%q}`, base64.RawURLEncoding.EncodeToString([]byte(scope)))
			return
		}
		s.requests++
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="s",scope="repository:a:pull"`, realm()))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		scope, _ := base64.RawURLEncoding.DecodeString(tok)
		if s.stubborn || string(scope) != "repository:a:pull,push" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="s",scope="repository:a:push",error="insufficient_scope"`, realm()))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, "ok")
	})
}

func TestInsufficientScopeReauthenticatesOnceWithMergedScope(t *testing.T) {
	for _, stubborn := range []bool{false, true} {
		s := &scopeServer{stubborn: stubborn}
		var srv *httptest.Server
		srv = httptest.NewServer(s.handler(func() string { return srv.URL + "/token" }))
		tr := auth.New()
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/a/manifests/v1", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		srv.Close()
		want := http.StatusOK
		if stubborn {
			want = http.StatusUnauthorized
		}
		if resp.StatusCode != want {
			t.Errorf("stubborn=%v: status %d, want %d", stubborn, resp.StatusCode, want)
		}
		// First request, answer to the challenge, one re-authentication.
		if s.requests != 3 || len(s.tokenReqs) != 2 {
			t.Errorf("stubborn=%v: %d registry requests and %d token fetches, want 3 and 2", stubborn, s.requests, len(s.tokenReqs))
		}
		if len(s.tokenReqs) == 2 && s.tokenReqs[1] != "repository:a:pull,push" {
			t.Errorf("re-authentication asked for %q, want the merged scope", s.tokenReqs[1])
		}
	}
}

// TestSingleflightAndExpiry: concurrent requests needing one token cause one
// fetch, cold and on refresh; a token nearing expiry is refreshed before it
// is used, not after a 401.
func TestSingleflightAndExpiry(t *testing.T) {
	tgt := registrytest.StartCompliant(t, "sf", registrytest.Options{})
	seedSmall(t, tgt, "a")
	clock := &fakeClock{}
	wire := registrytest.NewWire(http.DefaultTransport, tgt)
	tr := auth.New(auth.WithBase(wire), auth.WithCredentials(creds(tgt)), auth.WithClock(clock.now))
	burst := func() {
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() { resolve(t, tgt, tr, "a", "v1") })
		}
		wg.Wait()
	}
	f0 := tgt.Tokens.Fetches()
	burst()
	if n := tgt.Tokens.Fetches() - f0; n != 1 {
		t.Fatalf("cold burst of 20 made %d token fetches, want 1", n)
	}
	before := wire.Counts()
	resolve(t, tgt, tr, "a", "v1")
	if d := wire.Counts().Requests - before.Requests; d != 1 {
		t.Fatalf("warm request took %d HTTP requests, want 1", d)
	}
	clock.advance(55 * time.Second) // inside the refresh margin of a 60 s token
	before = wire.Counts()
	burst()
	after := wire.Counts()
	if n := after.TokenFetches - before.TokenFetches; n != 1 {
		t.Fatalf("refresh burst made %d token fetches, want 1", n)
	}
	if after.Unauthorized != before.Unauthorized {
		t.Fatalf("refresh cost %d 401s, want none", after.Unauthorized-before.Unauthorized)
	}
}

func TestOAuth2PostAndFallback(t *testing.T) {
	for _, post := range []bool{true, false} {
		tgt := registrytest.StartCompliant(t, fmt.Sprintf("oauth%v", post), registrytest.Options{POST: post})
		seedSmall(t, tgt, "a", "b")
		rec := &methodRecorder{base: http.DefaultTransport}
		tr := auth.New(auth.WithBase(rec), auth.WithCredentials(creds(tgt)), auth.WithOAuth2("trustgate-test"))
		resolve(t, tgt, tr, "a", "v1")
		resolve(t, tgt, tr, "b", "v1")
		got := strings.Join(rec.tokenMethods(), ",")
		want := "POST,POST"
		if !post {
			want = "POST,GET,GET" // one 404, then straight to GET
		}
		if got != want {
			t.Errorf("post=%v: token requests %s, want %s", post, got, want)
		}
	}
	tgt := registrytest.StartCompliant(t, "refresh", registrytest.Options{POST: true})
	tgt.Tokens.RefreshToken = "identity-token-123"
	seedSmall(t, tgt, "a")
	rec := &methodRecorder{base: http.DefaultTransport}
	tr := auth.New(auth.WithBase(rec), auth.WithCredentials(auth.StaticCredential(tgt.Host(), auth.Credential{RefreshToken: "identity-token-123"})))
	resolve(t, tgt, tr, "a", "v1")
	if got := strings.Join(rec.tokenMethods(), ","); got != "POST" {
		t.Errorf("refresh-token grant: token requests %s, want POST", got)
	}
}

type methodRecorder struct {
	base    http.RoundTripper
	mu      sync.Mutex
	methods []string
}

func (m *methodRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/token" {
		m.mu.Lock()
		m.methods = append(m.methods, r.Method)
		m.mu.Unlock()
	}
	return m.base.RoundTrip(r)
}

func (m *methodRecorder) tokenMethods() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.methods
}

func TestTokenFetchHasDeadline(t *testing.T) {
	release := make(chan struct{})
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			<-release // a realm that never answers
			return
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="s",scope="repository:a:pull"`, srv.URL+"/token"))
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer srv.Close()
	defer close(release)
	tr := auth.New(auth.WithTokenTimeout(200 * time.Millisecond))
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/a/manifests/v1", nil) // no caller deadline
	_, err := tr.RoundTrip(req)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want a deadline error, got %v", err)
	}
}

// TestDockerConfigCredentials reads credentials from a Docker config.json
// through oras-go's credentials package.
func TestDockerConfigCredentials(t *testing.T) {
	tgt := registrytest.StartCompliant(t, "docker", registrytest.Options{})
	seedSmall(t, tgt, "a")
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, tgt.Host(),
		base64.StdEncoding.EncodeToString([]byte(registrytest.User+":"+registrytest.Password)))
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cf, err := auth.FromDockerConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	resolve(t, tgt, auth.New(auth.WithCredentials(cf)), "a", "v1")
	// Without credentials the token server refuses: the config was used.
	ctx := context.Background()
	if _, err := newRepo(t, tgt, "a", auth.New()).Resolve(ctx, "v1"); err == nil {
		t.Fatal("anonymous resolve succeeded; the test proves nothing")
	}
}

// TestUnderGoContainerRegistry uses the transport as go-containerregistry's
// remote transport against the Artifactory-like proxy.
func TestUnderGoContainerRegistry(t *testing.T) {
	tgt := registrytest.StartArtifactory(t, "ggcr", registrytest.Options{})
	seedSmall(t, tgt, "a")
	wire := registrytest.NewWire(http.DefaultTransport, tgt)
	tr := auth.New(auth.WithBase(wire), auth.WithCredentials(creds(tgt)))
	ref, err := name.ParseReference(tgt.Host()+"/"+tgt.Repo("a")+":v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ggcr.NewPuller(ggcr.WithTransport(tr), ggcr.WithAuth(authn.Anonymous))
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := p.Get(context.Background(), ref); err != nil {
			t.Fatal(err)
		}
	}
	if c := wire.Counts(); c.OutOfScope != 0 {
		t.Fatalf("out-of-scope: %v", wire.Problems())
	}
}

// pushRefusingServer is a registry that grants only pull on repository b:
// its token endpoint drops push from every grant, and the registry answers
// a push without push access with insufficient_scope, as distribution does.
type pushRefusingServer struct {
	mu         sync.Mutex
	posts      int
	tokenFetch int
}

func (s *pushRefusingServer) handler(realm func() string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if r.URL.Path == "/token" {
			s.tokenFetch++
			granted := "repository:b:pull"
			fmt.Fprintf(w, `{"token":%q}`, base64.RawURLEncoding.EncodeToString([]byte(granted)))
			return
		}
		need := "repository:b:pull"
		if r.Method == http.MethodPost {
			s.posts++
			need = "repository:b:pull,push"
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="s",scope=%q`, realm(), need))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if granted, _ := base64.RawURLEncoding.DecodeString(tok); string(granted) != need && need != "repository:b:pull" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="s",scope=%q,error="insufficient_scope"`, realm(), need))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, "ok")
	})
}

// TestRefusedPushReauthenticatesOnce: a push the token service will not
// grant costs, after its first refusal with insufficient_scope, one more
// token fetch and one more POST, whether the transport guessed the push
// token up front (after a pull taught it the realm) or met a challenge.
func TestRefusedPushReauthenticatesOnce(t *testing.T) {
	for _, warm := range []bool{true, false} {
		s := &pushRefusingServer{}
		var srv *httptest.Server
		srv = httptest.NewServer(s.handler(func() string { return srv.URL + "/token" }))
		tr := auth.New()
		do := func(method, path string) int {
			req, _ := http.NewRequest(method, srv.URL+path, nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		if warm {
			if st := do(http.MethodGet, "/v2/b/manifests/v1"); st != http.StatusOK {
				t.Fatalf("pull: %d", st)
			}
		}
		s.mu.Lock()
		s.tokenFetch = 0
		s.mu.Unlock()
		if st := do(http.MethodPost, "/v2/b/blobs/uploads/"); st != http.StatusUnauthorized {
			t.Fatalf("warm=%v: refused push answered %d", warm, st)
		}
		srv.Close()
		// Warm: the guessed token is refused, one re-authentication.
		// Cold: the challenge, its token refused, one re-authentication.
		wantPosts := 2
		if !warm {
			wantPosts = 3
		}
		if s.tokenFetch != 2 || s.posts != wantPosts {
			t.Errorf("warm=%v: refused push cost %d token fetches and %d POSTs, want 2 and %d", warm, s.tokenFetch, s.posts, wantPosts)
		}
	}
}
