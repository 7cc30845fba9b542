package auth_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/trustgate/trustgate/client/auth"
)

// authLog records the Authorization header of every request by path.
type authLog struct {
	mu   sync.Mutex
	seen map[string][]string
}

func (l *authLog) record(r *http.Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = map[string][]string{}
	}
	l.seen[r.URL.Path] = append(l.seen[r.URL.Path], r.Header.Get("Authorization"))
}

func (l *authLog) get(path string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[path]
}

// TestCallerAuthorizationNeverFollowsTheChainAway redirects a request that
// carries the caller's own Authorization from the registry to another port
// on the same IP (net/http copies the header to the same host name on every
// hop), then again within that other origin, and then back to the
// registry. No hop after the chain first left the registry's origin may
// carry the header: not the second hop on the other origin, not the return,
// and not a plain-http hop after an https registry.
func TestCallerAuthorizationNeverFollowsTheChainAway(t *testing.T) {
	for _, tlsRegistry := range []bool{false, true} {
		var log authLog
		other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			log.record(r)
			switch r.URL.Path {
			case "/x":
				http.Redirect(w, r, "/y", http.StatusTemporaryRedirect)
			case "/back":
				http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusTemporaryRedirect)
			default:
				_, _ = w.Write([]byte("ok"))
			}
		}))
		defer other.Close()
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			log.record(r)
			switch {
			case strings.HasSuffix(r.URL.Path, "/manifests/away"):
				http.Redirect(w, r, other.URL+"/x", http.StatusTemporaryRedirect)
			case strings.HasSuffix(r.URL.Path, "/manifests/roundtrip"):
				http.Redirect(w, r, other.URL+"/back?to="+"http"+map[bool]string{true: "s"}[tlsRegistry]+"://"+r.Host+"/final", http.StatusTemporaryRedirect)
			default:
				_, _ = w.Write([]byte("ok"))
			}
		})
		var reg *httptest.Server
		if tlsRegistry {
			reg = httptest.NewTLSServer(h)
		} else {
			reg = httptest.NewServer(h)
		}
		defer reg.Close()
		client := &http.Client{Transport: auth.New(auth.WithBase(reg.Client().Transport))}
		for _, tag := range []string{"away", "roundtrip"} {
			req, _ := http.NewRequest(http.MethodGet, reg.URL+"/v2/a/manifests/"+tag, nil)
			req.Header.Set("Authorization", "Bearer caller-secret")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: status %d", tag, resp.StatusCode)
			}
			if got := log.get("/v2/a/manifests/" + tag); len(got) != 1 || got[0] != "Bearer caller-secret" {
				t.Fatalf("tls=%v %s: the registry itself got %q", tlsRegistry, tag, got)
			}
		}
		for _, p := range []string{"/x", "/y", "/back", "/final"} {
			for _, a := range log.get(p) {
				if a != "" {
					t.Errorf("tls=%v: %s received Authorization %q after the chain left the registry's origin", tlsRegistry, p, a)
				}
			}
			if len(log.get(p)) == 0 {
				t.Errorf("tls=%v: %s never reached; the test proves nothing", tlsRegistry, p)
			}
		}
	}
}

// TestTokenRequestCredentialsNeverFollowTheChainAway redirects a token
// request (with Basic credentials) to another origin and from there back to
// the realm's origin: the return hop must not carry the credentials.
func TestTokenRequestCredentialsNeverFollowTheChainAway(t *testing.T) {
	var log authLog
	var realm *httptest.Server
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.record(r)
		http.Redirect(w, r, realm.URL+"/token2", http.StatusTemporaryRedirect)
	}))
	defer other.Close()
	realm = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.record(r)
		switch r.URL.Path {
		case "/token":
			http.Redirect(w, r, other.URL+"/hop", http.StatusTemporaryRedirect)
		case "/token2":
			fmt.Fprint(w, `{"token":"t"}`)
		default:
			if r.Header.Get("Authorization") != "Bearer t" {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="s"`, realm.URL+"/token"))
				w.WriteHeader(http.StatusUnauthorized)
			}
		}
	}))
	defer realm.Close()
	tr := auth.New(auth.WithCredentials(auth.StaticCredential(strings.TrimPrefix(realm.URL, "http://"), auth.Credential{Username: "u", Password: "secret"})))
	req, _ := http.NewRequest(http.MethodGet, realm.URL+"/v2/a/manifests/v1", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := log.get("/token"); len(got) != 1 || !strings.HasPrefix(got[0], "Basic ") {
		t.Fatalf("the realm got %q, want Basic credentials", got)
	}
	for _, p := range []string{"/hop", "/token2"} {
		if got := log.get(p); len(got) != 1 || got[0] != "" {
			t.Errorf("%s got Authorization %q after the chain left the realm's origin", p, got)
		}
	}
}
