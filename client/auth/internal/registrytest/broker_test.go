package registrytest_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/attest/sample"
	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/client/auth"
	"github.com/trustgate/trustgate/client/auth/internal/registrytest"
	"github.com/trustgate/trustgate/internal/dockerregistry"
	"github.com/trustgate/trustgate/policy"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store/sqlite"
	"github.com/trustgate/trustgate/token"
)

const (
	issuer      = "https://trustgate.test"
	brokerSvc   = "trustgate"
	registrySvc = "registry.test"
	// registryV2Svc is the Debian docker-registry's (distribution 2.8),
	// which trusts the broker through rootcertbundle.
	registryV2Svc = "registry-v2.test"
	callerID      = "spiffe://example.org/tee/sample"
)

// brokerPolicy: sample-TEE callers may pull team/ repositories and push
// team/rw only, and GET the hello plugin.
const brokerPolicy = `package policy

default allow := false

allow if {
	input.plugin == "hello"
	input.method == "GET"
	input.claims.tee == "sample"
}

grant contains "pull" if {
	input.service in {"registry.test", "registry-v2.test"}
	input.scope.type == "repository"
	startswith(input.scope.name, "team/")
	input.claims.tee == "sample"
}

grant contains "push" if {
	input.service in {"registry.test", "registry-v2.test"}
	input.scope.name == "team/rw"
	input.credential == "attestation"
}
`

// hello answers its path, in the clear.
type hello struct{}

func (hello) Name() string { return "hello" }
func (hello) Access(m string) plugin.Access {
	if m == http.MethodGet {
		return plugin.Attested
	}
	return plugin.Denied
}
func (hello) Encrypt(string) bool { return false }
func (hello) Handle(_ context.Context, r *plugin.Request) (*plugin.Response, error) {
	return &plugin.Response{ContentType: "text/plain", Body: []byte("hello " + strings.Join(r.Path, "/") + " " + r.Caller.SPIFFEID)}, nil
}

type brokerEnv struct {
	url    string
	tokens *token.Authority
	att    string // a sample-TEE attestation token
}

// startBroker runs a real broker (SQLite store, sealed keys, sample TEE)
// with the token service on, and attests to it with the RCAR test client.
func startBroker(t testing.TB) *brokerEnv {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := seal.GenerateKeyFile(filepath.Join(dir, "seal.key")); err != nil {
		t.Fatal(err)
	}
	sealer, err := seal.LoadKeyFile(filepath.Join(dir, "seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := token.Open(ctx, token.Options{Keys: st.Keys(), Sealer: sealer, MaxTokenTTL: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	adminKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&adminKey.PublicKey)
	pub := filepath.Join(dir, "admin.pub")
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	admin, err := broker.NewAdminVerifier(broker.AdminConfig{PublicKeyFile: pub}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	smp, err := sample.New(td)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Policies().Put(ctx, policy.Name, brokerPolicy); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(nil)
	base := "http://" + hs.Listener.Addr().String()
	srv, err := broker.New(broker.Options{Store: st, TrustDomain: td, Issuer: issuer, Attestors: []attest.Attestor{smp},
		Tokens: tokens, Admin: admin, Plugins: []plugin.Plugin{hello{}},
		TokenService: &broker.TokenServiceOptions{Realm: base + "/token", Service: brokerSvc, Services: []string{registrySvc, registryV2Svc}, X5CServices: []string{registryV2Svc}}})
	if err != nil {
		t.Fatal(err)
	}
	hs.Config.Handler = srv
	hs.Start()
	t.Cleanup(hs.Close)

	c := &rcartest.Client{Base: base, HTTP: hs.Client()}
	ch, _, err := c.Auth("sample", "")
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b, _ := k.PublicKey.Bytes()
	enc := base64.RawURLEncoding.EncodeToString
	jwk := map[string]string{"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": enc(b[1:33]), "y": enc(b[33:65])}
	alg, _ := ch.ExtraParams["selected-hash-algorithm"].(string)
	rd, err := rcartest.ReportData(alg, jwk, ch.Nonce, "")
	if err != nil {
		t.Fatal(err)
	}
	att, err := c.Attest(rcartest.Attestation{RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: jwk},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: rcartest.SampleEvidence("1", rd)}})
	if err != nil {
		t.Fatal(err)
	}
	return &brokerEnv{url: base, tokens: tokens, att: att}
}

func repoOn(t testing.TB, tgt *registrytest.Target, name string, rt http.RoundTripper) *remote.Repository {
	t.Helper()
	r, err := remote.NewRepository(tgt.Host() + "/" + name)
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true
	r.Client = &http.Client{Transport: rt}
	return r
}

// TestBrokerTokensThroughDistribution: client/auth's transport, holding
// only the attestation token, gets its tokens from the broker's /token and
// pushes and pulls through a distribution v3 registry configured (realm,
// service, issuer, JWKS) to trust the broker. The policy lets it push
// team/rw but only pull the rest of team/, and nothing else; the wire
// checker confirms that no token left its scope.
func TestBrokerTokensThroughDistribution(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBroker(t)
	reg := registrytest.StartTrusting(t, "broker", registrytest.Trust{Realm: b.url + "/token", Service: registrySvc, Issuer: issuer, JWKS: b.tokens.JWKS()})
	wire := registrytest.NewWire(http.DefaultTransport, reg)
	cred := auth.StaticCredential(reg.Host(), auth.Credential{Username: callerID, Password: b.att})
	tr := auth.New(auth.WithBase(wire), auth.WithCredentials(cred))

	im, err := registrytest.NewImage("broker")
	if err != nil {
		t.Fatal(err)
	}
	rw := repoOn(t, reg, "team/rw", tr)
	if err := im.Push(ctx, rw, "v1"); err != nil {
		t.Fatalf("push to team/rw (push granted): %v", err)
	}
	desc, rc, err := rw.FetchReference(ctx, "v1")
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	got, err := content.ReadAll(rc, desc)
	rc.Close()
	if err != nil || !bytes.Equal(got, im.Manifest) {
		t.Fatalf("manifest round trip: err=%v equal=%v", err, bytes.Equal(got, im.Manifest))
	}
	// Repeats cost one request each.
	before := wire.Counts()
	for range 10 {
		if _, err := rw.Resolve(ctx, "v1"); err != nil {
			t.Fatal(err)
		}
	}
	after := wire.Counts()
	if n := after.Requests - before.Requests; n != 10 {
		t.Errorf("10 repeat resolves took %d requests, want 10", n)
	}
	if after.OutOfScope != 0 {
		t.Errorf("out-of-scope tokens: %v", wire.Problems())
	}
	t.Logf("wire: %+v", after)

	// Push is not granted on team/app: the broker grants pull only (a
	// partial grant), and the registry refuses the upload.
	app := repoOn(t, reg, "team/app", tr)
	if _, err := oras.Copy(ctx, rw, "v1", app, "v1", oras.DefaultCopyOptions); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("copy to team/app (pull only): %v, want a 401", err)
	}
	// Nothing at all is granted outside team/: an empty grant.
	other := repoOn(t, reg, "other/x", tr)
	if _, err := other.Resolve(ctx, "v1"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("resolve other/x (nothing granted): %v, want a 401", err)
	}
	// The refused requests carried the token issued for their own scope,
	// which the broker granted only in part: too little, never too much,
	// and never another service's.
	for _, p := range wire.Problems() {
		if !strings.Contains(p, " lacks repository:team/app:push") && !strings.Contains(p, "token with access [] lacks repository:other/x:pull") {
			t.Errorf("token out of scope: %s", p)
		}
	}
}

// TestBrokerTokensThroughDistributionV28: as above, through Debian's
// docker-registry (distribution 2.8) run as a process, whose only trust in
// the broker is auth.token.rootcertbundle: the PEM the broker serves at
// /.well-known/token-ca.pem.
func TestBrokerTokensThroughDistributionV28(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBroker(t)
	resp, err := http.Get(b.url + "/.well-known/token-ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("token-ca.pem: %d %v", resp.StatusCode, err)
	}
	reg := dockerregistry.Start(t, dockerregistry.Config{Realm: b.url + "/token", Service: registryV2Svc, Issuer: issuer, RootCertBundle: bundle})
	tr := auth.New(auth.WithCredentials(auth.StaticCredential(reg.Host, auth.Credential{Username: callerID, Password: b.att})))
	repo := func(name string) *remote.Repository {
		r, err := remote.NewRepository(reg.Host + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		r.PlainHTTP = true
		r.Client = &http.Client{Transport: tr}
		return r
	}
	im, err := registrytest.NewImage("broker-v2")
	if err != nil {
		t.Fatal(err)
	}
	rw := repo("team/rw")
	if err := im.Push(ctx, rw, "v1"); err != nil {
		t.Fatalf("push to team/rw (push granted): %v", err)
	}
	desc, rc, err := rw.FetchReference(ctx, "v1")
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	got, err := content.ReadAll(rc, desc)
	rc.Close()
	if err != nil || !bytes.Equal(got, im.Manifest) {
		t.Fatalf("manifest round trip: err=%v equal=%v", err, bytes.Equal(got, im.Manifest))
	}
	if _, err := oras.Copy(ctx, rw, "v1", repo("team/app"), "v1", oras.DefaultCopyOptions); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("copy to team/app (pull only): %v, want a 401", err)
	}
}

// pluginNeeds is the access a broker plugin request needs, written here
// from docs/token-service.md rather than taken from the broker.
func pluginNeeds(r *http.Request) []registrytest.Access {
	rest, ok := strings.CutPrefix(r.URL.Path, "/kbs/v0/")
	if !ok {
		return nil
	}
	return []registrytest.Access{{Type: "plugin", Name: rest, Actions: []string{strings.ToLower(r.Method)}}}
}

// TestBrokerPluginChallengeRoundTrip: client/auth's transport talking to a
// broker plugin endpoint learns the scope from the 401 challenge, gets a
// token for exactly that scope from /token, and then spends one request per
// repeat; a second path gets its own token, never the first one's.
func TestBrokerPluginChallengeRoundTrip(t *testing.T) {
	b := startBroker(t)
	u, _ := http.NewRequest("GET", b.url, nil)
	tgt := &registrytest.Target{Name: "broker", URL: u.URL, Service: brokerSvc, TokenPaths: []string{"/token"}, Needs: pluginNeeds}
	wire := registrytest.NewWire(http.DefaultTransport, tgt)
	tr := auth.New(auth.WithBase(wire), auth.WithCredentials(auth.StaticCredential(tgt.Host(), auth.Credential{Username: callerID, Password: b.att})))
	client := &http.Client{Transport: tr}
	get := func(path string) string {
		t.Helper()
		resp, err := client.Get(b.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
		}
		return string(body)
	}
	if got := get("/kbs/v0/hello/a"); got != "hello a "+callerID {
		t.Fatalf("answer %q", got)
	}
	first := wire.Counts()
	if first.Requests != 3 || first.TokenFetches != 1 || first.Unauthorized != 1 {
		t.Fatalf("first request: %+v, want challenge, token, retry", first)
	}
	for range 10 {
		get("/kbs/v0/hello/a")
	}
	if n := wire.Counts().Requests - first.Requests; n != 10 {
		t.Errorf("10 repeats took %d requests, want 10", n)
	}
	if got := get("/kbs/v0/hello/b/c"); got != "hello b/c "+callerID {
		t.Fatalf("answer %q", got)
	}
	c := wire.Counts()
	if c.TokenFetches != 2 || c.OutOfScope != 0 {
		t.Errorf("wire %+v, problems %v", c, wire.Problems())
	}
	// The broker itself refuses a token for one path on another, whatever
	// the client does: send the hello/a token to hello/b by hand.
	resp, err := tr.RoundTrip(mustReq(t, b.url+"/token?service=trustgate&scope=plugin:hello/a:get", callerID, b.att))
	if err != nil {
		t.Fatal(err)
	}
	var tok struct{ Token string }
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil || tok.Token == "" {
		t.Fatalf("token: %v", err)
	}
	req, _ := http.NewRequest("GET", b.url+"/kbs/v0/hello/b", nil)
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	chs, err := auth.ParseChallenges(resp.Header.Values("WWW-Authenticate")...)
	if err != nil || resp.StatusCode != 403 || len(chs) != 1 || chs[0].Params["error"] != "insufficient_scope" || chs[0].Params["scope"] != "plugin:hello/b:get" {
		t.Fatalf("hello/a token on hello/b: %d %v %v", resp.StatusCode, chs, err)
	}
}

func mustReq(t testing.TB, url, user, pass string) *http.Request {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, pass)
	return req
}
