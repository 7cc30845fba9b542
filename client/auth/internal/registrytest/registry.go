package registrytest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/sirupsen/logrus"

	// The token access controller and the in-memory storage driver register
	// themselves by name.
	_ "github.com/distribution/distribution/v3/registry/auth/token"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// User and Password are the credentials every token server here accepts.
const (
	User     = "tester"
	Password = "s3cret-password"
)

var quietOnce sync.Once

// NewRegistry returns a distribution v3 registry app with in-memory storage
// and token auth trusting the given token server's key.
func NewRegistry(tb testing.TB, realm string, ts *TokenServer) http.Handler {
	tb.Helper()
	jwks, err := ts.JWKS()
	if err != nil {
		tb.Fatal(err)
	}
	return NewRegistryTrusting(tb, Trust{Realm: realm, Service: ts.Service, Issuer: ts.Issuer, JWKS: jwks})
}

// Trust is what a registry's token auth trusts: the auth.token
// configuration block of distribution.
type Trust struct {
	// Realm is the token endpoint named in challenges.
	Realm string
	// Service is the registry's service name, the accepted audience.
	Service string
	// Issuer is the accepted "iss".
	Issuer string
	// JWKS is the key set tokens must be signed with.
	JWKS []byte
}

// NewRegistryTrusting returns a distribution v3 registry app with in-memory
// storage and token auth configured by tr, as an operator would configure
// a registry to trust an outside token service.
func NewRegistryTrusting(tb testing.TB, tr Trust) http.Handler {
	tb.Helper()
	quietOnce.Do(func() { logrus.SetOutput(io.Discard) })
	realm, jwks := tr.Realm, tr.JWKS
	path := filepath.Join(tb.TempDir(), "jwks.json")
	if err := os.WriteFile(path, jwks, 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg := &configuration.Configuration{
		Storage: configuration.Storage{
			"inmemory":    configuration.Parameters{},
			"delete":      configuration.Parameters{"enabled": true},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		},
		Auth: configuration.Auth{"token": configuration.Parameters{
			"realm": realm, "service": tr.Service, "issuer": tr.Issuer, "jwks": path,
		}},
	}
	cfg.HTTP.Secret = "registrytest-secret"
	cfg.HTTP.RelativeURLs = true
	cfg.Log.AccessLog.Disabled = true
	cfg.Log.Level = "error"
	app := handlers.NewApp(context.Background(), cfg)
	tb.Cleanup(func() { _ = app.Shutdown() })
	return app
}

// ExpiryGate rejects, as a strict registry would, bearer tokens from ts whose
// exact lifetime has passed (distribution itself allows 60 s of leeway).
func ExpiryGate(next http.Handler, ts *TokenServer, realm string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && ts.Expired(tok, time.Now()) {
			ch := fmt.Sprintf("Bearer realm=%q,service=%q,error=\"invalid_token\"", realm, ts.Service)
			if repo := RepoOf(r.URL.Path); repo != "" {
				ch += fmt.Sprintf(",scope=%q", "repository:"+repo+":"+actionsFor(r.Method))
			}
			w.Header().Set("WWW-Authenticate", ch)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}`, http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

var repoRE = regexp.MustCompile(`^/v2/(.+?)/(manifests/[^/]+|blobs/uploads/[^/]*|blobs/[^/]+|tags/list|referrers/[^/]+)$`)

// RepoOf returns the repository named by a /v2/ API path, or "".
func RepoOf(path string) string {
	if m := repoRE.FindStringSubmatch(path); m != nil {
		return m[1]
	}
	return ""
}

func actionsFor(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead:
		return "pull"
	case http.MethodDelete:
		return "delete"
	}
	return "pull,push"
}

// Artifactory serves upstream under a path prefix, as JFrog Artifactory
// serves a "virtual repository": /v2/<prefix>/<repo>/... reaches
// /v2/<repo>/... upstream, and the upstream challenge, whose scope names
// <repo>, passes through unchanged, so the challenge scope never matches the
// request path.
func Artifactory(prefix string, upstream http.Handler) http.Handler {
	prefix = strings.Trim(prefix, "/")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if p != "/v2/" && p != "/v2" {
			rest, ok := strings.CutPrefix(p, "/v2/"+prefix+"/")
			if !ok {
				http.NotFound(w, r)
				return
			}
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/v2/" + rest
			r2.URL.RawPath = ""
			r2.RequestURI = r2.URL.RequestURI()
			r = r2
		}
		upstream.ServeHTTP(&rewriteWriter{ResponseWriter: w, onHeader: func(h http.Header, _ int) {
			if loc := h.Get("Location"); strings.HasPrefix(loc, "/v2/") {
				h.Set("Location", "/v2/"+prefix+"/"+strings.TrimPrefix(loc, "/v2/"))
			}
		}}, r)
	})
}

// NVCR mimics nvcr.io's proxy: an unauthenticated request is challenged with
// realm proxyRealm, no service, and "pull,push" whatever the request; a
// request whose token upstream refuses is answered insufficient_scope with a
// different realm (otherRealm) and service "registry".
func NVCR(upstream http.Handler, proxyRealm, otherRealm string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authed := r.Header.Get("Authorization") != ""
		repo := RepoOf(r.URL.Path)
		upstream.ServeHTTP(&rewriteWriter{ResponseWriter: w, onHeader: func(h http.Header, code int) {
			if code != http.StatusUnauthorized {
				return
			}
			var ch string
			switch {
			case !authed && repo != "":
				ch = fmt.Sprintf("Bearer realm=%q,scope=%q", proxyRealm, "repository:"+repo+":pull,push")
			case !authed:
				ch = fmt.Sprintf("Bearer realm=%q", proxyRealm)
			default:
				ch = fmt.Sprintf("Bearer realm=%q,service=\"registry\",scope=%q,error=\"insufficient_scope\"", otherRealm, "repository:"+repo+":pull")
			}
			h.Set("WWW-Authenticate", ch)
		}}, r)
	})
}

// rewriteWriter lets a proxy edit response headers before they are sent.
type rewriteWriter struct {
	http.ResponseWriter
	onHeader func(http.Header, int)
	wrote    bool
}

func (w *rewriteWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		w.onHeader(w.Header(), code)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *rewriteWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Target is one registry front door.
type Target struct {
	// Name identifies the target in reports ("compliant", "artifactory", ...).
	Name string
	// URL is the registry's base URL (http://127.0.0.1:port).
	URL *url.URL
	// Prefix is prepended to repository names by clients of this target.
	Prefix string
	// Service is the audience of tokens valid here.
	Service string
	// Tokens is the token server whose tokens the registry trusts.
	Tokens *TokenServer
	// TokenPaths are the paths on this host that are token endpoints.
	TokenPaths []string
	// Needs, when set, says what access a request to this host needs,
	// for hosts that are not registries (a broker's plugin endpoints);
	// otherwise distribution's router and access rules decide.
	Needs func(*http.Request) []Access
}

// StartTrusting starts a registry whose tokens come from an outside token
// service (tr.Realm, on another host).
func StartTrusting(tb testing.TB, name string, tr Trust) *Target {
	tb.Helper()
	sw, u := serve(tb)
	sw.h = NewRegistryTrusting(tb, tr)
	return &Target{Name: name, URL: u, Service: tr.Service}
}

// Host returns host:port.
func (t *Target) Host() string { return t.URL.Host }

// Repo returns the client-side name of backend repository repo.
func (t *Target) Repo(repo string) string {
	if t.Prefix == "" {
		return repo
	}
	return t.Prefix + "/" + repo
}

// Backend maps a client-side repository name to the backend one.
func (t *Target) Backend(repo string) string {
	if t.Prefix == "" {
		return repo
	}
	return strings.TrimPrefix(repo, t.Prefix+"/")
}

// Options tune a started target.
type Options struct {
	// ExpiresIn is the token lifetime (default 60 s).
	ExpiresIn time.Duration
	// StrictExpiry puts an ExpiryGate in front of the registry.
	StrictExpiry bool
	// POST enables the token server's OAuth2 endpoint.
	POST bool
}

func newTokenServer(tb testing.TB, name string, o Options) *TokenServer {
	ts, err := NewTokenServer("registrytest-"+name, "registry."+name+".test", User, Password)
	if err != nil {
		tb.Fatal(err)
	}
	ts.ExpiresIn, ts.POST = o.ExpiresIn, o.POST
	return ts
}

// handlerSwitch lets a server start before the handler, which needs the
// server's URL for its realm, exists.
type handlerSwitch struct{ h http.Handler }

func (s *handlerSwitch) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.h.ServeHTTP(w, r) }

func serve(tb testing.TB) (*handlerSwitch, *url.URL) {
	sw := &handlerSwitch{h: http.NotFoundHandler()}
	srv := httptest.NewServer(sw)
	tb.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		tb.Fatal(err)
	}
	return sw, u
}

// StartCompliant starts a registry that follows the token spec, with its
// token endpoint at /token on the same host.
func StartCompliant(tb testing.TB, name string, o Options) *Target {
	tb.Helper()
	sw, u := serve(tb)
	ts := newTokenServer(tb, name, o)
	realm := u.String() + "/token"
	var reg http.Handler = NewRegistry(tb, realm, ts)
	if o.StrictExpiry {
		reg = ExpiryGate(reg, ts, realm)
	}
	mux := http.NewServeMux()
	mux.Handle("/token", ts)
	mux.Handle("/", reg)
	sw.h = mux
	return &Target{Name: name, URL: u, Service: ts.Service, Tokens: ts, TokenPaths: []string{"/token"}}
}

// StartArtifactory starts an Artifactory-like proxy (prefix "docker-virtual")
// with its token endpoint at /v2/token on the same host.
func StartArtifactory(tb testing.TB, name string, o Options) *Target {
	tb.Helper()
	sw, u := serve(tb)
	ts := newTokenServer(tb, name, o)
	realm := u.String() + "/v2/token"
	const prefix = "docker-virtual"
	mux := http.NewServeMux()
	mux.Handle("/v2/token", ts)
	mux.Handle("/", Artifactory(prefix, NewRegistry(tb, realm, ts)))
	sw.h = mux
	return &Target{Name: name, URL: u, Prefix: prefix, Service: ts.Service, Tokens: ts, TokenPaths: []string{"/v2/token"}}
}

// StartNVCR starts an nvcr-like proxy with its token endpoint at
// /proxy_auth, plus a second host whose realm refuses every credential.
func StartNVCR(tb testing.TB, name string, o Options) *Target {
	tb.Helper()
	sw, u := serve(tb)
	other, ou := serve(tb)
	ts := newTokenServer(tb, name, o)
	reject := &TokenServer{RejectAll: true}
	other.h = reject
	realm := u.String() + "/proxy_auth"
	mux := http.NewServeMux()
	mux.Handle("/proxy_auth", ts)
	mux.Handle("/", NVCR(NewRegistry(tb, realm, ts), realm, ou.String()+"/token"))
	sw.h = mux
	return &Target{Name: name, URL: u, Service: ts.Service, Tokens: ts, TokenPaths: []string{"/proxy_auth"}}
}
