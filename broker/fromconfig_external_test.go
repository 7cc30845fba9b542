package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/slackhq/nebula/cert"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/plugin/nebulaca"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store/sqlite"
)

// TestFromConfigServesEveryPlugin builds the broker the way `trustgate
// server` does, with every attestor and plugin a node needs enabled, and
// walks a sample-attested caller through a Nebula credential and an
// X.509-SVID, each decrypted with the caller's TEE key and verified by the
// upstream library.
func TestFromConfigServesEveryPlugin(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	cfg := broker.DefaultConfig()
	cfg.Store.Path = filepath.Join(dir, "trustgate.db")
	cfg.Keys.SealKeyFile = filepath.Join(dir, "seal.key")
	if err := seal.GenerateKeyFile(cfg.Keys.SealKeyFile); err != nil {
		t.Fatal(err)
	}
	adminKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&adminKey.PublicKey)
	cfg.Admin = broker.AdminConfig{PublicKeyFile: filepath.Join(dir, "admin.pub")}
	if err := os.WriteFile(cfg.Admin.PublicKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Attestors.Sample.Enabled = true
	cfg.Plugins.NebulaCA.Enabled = true
	cfg.Plugins.NebulaCA.CANetworks = []string{"10.42.0.0/16"}
	cfg.Plugins.SVID.Enabled = true
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(ctx, cfg.Store.Path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err := broker.FromConfig(ctx, cfg, st, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Run(ctx)
	hs := httptest.NewServer(srv)
	defer hs.Close()
	h := &harness{http: hs, adminKey: adminKey}

	// The policy sees a repeated audience as an array: it allows a
	// JWT-SVID for exactly the audiences A and B.
	rego := `package policy
default allow := false
allow if {
	input.claims.tee == "sample"
	input.path != ["jwt"]
}
allow if {
	input.claims.tee == "sample"
	input.plugin == "svid"
	input.path == ["jwt"]
	input.query.audience == ["A", "B"]
}
`
	body, _ := json.Marshal(map[string]string{"policy": base64.RawURLEncoding.EncodeToString([]byte(rego))})
	if resp, b := call(t, h, "POST", "/kbs/v0/resource-policy", h.adminToken(t), body); resp.StatusCode != 200 {
		t.Fatalf("set policy: %d %s", resp.StatusCode, b)
	}
	teePriv, teePub := ecTEEKey(t)
	tok := attestSample(t, h, teePub)
	decrypt := func(b []byte) []byte {
		t.Helper()
		obj, err := jose.ParseEncryptedJSON(string(b), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, []jose.ContentEncryption{jose.A256GCM})
		if err != nil {
			t.Fatalf("not a JWE: %v: %s", err, b)
		}
		plain, err := obj.Decrypt(teePriv)
		if err != nil {
			t.Fatal(err)
		}
		return plain
	}

	// Nebula: the credential verifies against the CA it came with.
	q := url.Values{"name": {"node-1"}, "ip": {"10.42.0.5"}}
	resp, b := call(t, h, "GET", "/kbs/v0/nebula-ca/credential?"+q.Encode(), tok, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("nebula credential: %d %s", resp.StatusCode, b)
	}
	var cred nebulaca.Credential
	if err := json.Unmarshal(decrypt(b), &cred); err != nil {
		t.Fatal(err)
	}
	pool, err := cert.NewCAPoolFromPEM(cred.CACrt)
	if err != nil {
		t.Fatal(err)
	}
	nc, _, err := cert.UnmarshalCertificateFromPEM(cred.NodeCrt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.VerifyCertificate(time.Now(), nc); err != nil || nc.Name() != "node-1" {
		t.Fatalf("nebula certificate %q: %v", nc.Name(), err)
	}
	// GET ca answers, as docs/plugin-nebula-ca.md says, {"ca_crt": [...]}
	// in the clear: public material that nodes poll.
	resp, b = call(t, h, "GET", "/kbs/v0/nebula-ca/ca", tok, nil)
	var caOnly nebulaca.Credential
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(b, &caOnly) != nil ||
		string(caOnly.CACrt) != string(cred.CACrt) || caOnly.NodeCrt != nil {
		t.Errorf("GET nebula-ca/ca: %d %s %.80s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}

	// SVID: a CSR for the caller's own ID gives an SVID that go-spiffe
	// verifies against the served bundle.
	id := spiffeid.RequireFromString("spiffe://example.org/tee/sample")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}, URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	resp, b = call(t, h, "POST", "/kbs/v0/svid/x509", tok, csr)
	if resp.StatusCode != 200 {
		t.Fatalf("x509 svid: %d %s", resp.StatusCode, b)
	}
	var xr svid.X509Response
	if err := json.Unmarshal(decrypt(b), &xr); err != nil {
		t.Fatal(err)
	}
	resp, b = call(t, h, "GET", "/kbs/v0/svid/bundle", tok, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("bundle: %d %s", resp.StatusCode, b)
	}
	authBundle := b
	bundle, err := spiffebundle.Parse(id.TrustDomain(), b)
	if err != nil {
		t.Fatal(err)
	}
	var chain [][]byte
	for _, p := range xr.SVID {
		blk, _ := pem.Decode([]byte(p))
		chain = append(chain, blk.Bytes)
	}
	got, _, err := x509svid.ParseAndVerify(chain, bundle)
	if err != nil || got != id {
		t.Fatalf("SVID %v: %v", got, err)
	}
	if !strings.HasPrefix(xr.SPIFFEID, "spiffe://example.org/") {
		t.Fatalf("answer %+v", xr)
	}

	// JWT-SVID with the documented query form, two audiences.
	jq := url.Values{"spiffe_id": {id.String()}, "audience": {"A", "B"}}
	resp, b = call(t, h, "POST", "/kbs/v0/svid/jwt?"+jq.Encode(), tok, nil)
	if resp.StatusCode != 200 {
		t.Errorf("jwt svid with audience=A&audience=B: %d %s", resp.StatusCode, b)
	} else {
		var jr svid.JWTResponse
		if err := json.Unmarshal(decrypt(b), &jr); err != nil {
			t.Fatal(err)
		}
		for _, aud := range []string{"A", "B"} {
			if sv, err := jwtsvid.ParseAndValidate(jr.Token, bundle, []string{aud}); err != nil || sv.ID != id || !slices.Equal(sv.Audience, []string{"A", "B"}) {
				t.Fatalf("JWT-SVID for %s: %v %v", aud, sv, err)
			}
		}
	}
	jq["audience"] = []string{"A", "C"}
	resp, b = call(t, h, "POST", "/kbs/v0/svid/jwt?"+jq.Encode(), tok, nil)
	wantProblem(t, resp, b, 403, "PolicyDeny", "denies POST")
	jq["audience"] = []string{"A"}
	jq["spiffe_id"] = []string{id.String(), id.String()}
	resp, b = call(t, h, "POST", "/kbs/v0/svid/jwt?"+jq.Encode(), tok, nil)
	wantProblem(t, resp, b, 400, "BadRequest", "appears 2 times")

	// The bundle is also served without authentication, in SPIFFE
	// federation format, the same document.
	resp, pub := call(t, h, "GET", broker.SPIFFEBundlePath, "", nil)
	if resp.StatusCode != 200 || string(pub) != string(authBundle) {
		t.Fatalf("public bundle: %d %s", resp.StatusCode, pub)
	}
	fed, err := spiffebundle.Parse(id.TrustDomain(), pub)
	if err != nil {
		t.Fatal(err)
	}
	fetched, err := federation.FetchBundle(ctx, id.TrustDomain(), hs.URL+broker.SPIFFEBundlePath)
	if err != nil || !fetched.Equal(fed) {
		t.Fatalf("go-spiffe federation.FetchBundle: %v", err)
	}
	seq, hasSeq := fed.SequenceNumber()
	hint, hasHint := fed.RefreshHint()
	if !hasSeq || !hasHint || hint <= 0 || len(fed.X509Authorities()) == 0 || len(fed.JWTAuthorities()) == 0 {
		t.Fatalf("federation bundle: sequence %d (%v), refresh hint %v (%v), %d x509 and %d jwt authorities",
			seq, hasSeq, hint, hasHint, len(fed.X509Authorities()), len(fed.JWTAuthorities()))
	}
	var doc struct {
		Keys []struct {
			Use string   `json:"use"`
			Kid string   `json:"kid"`
			X5c []string `json:"x5c"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(pub, &doc); err != nil {
		t.Fatal(err)
	}
	uses := map[string]bool{}
	for _, k := range doc.Keys {
		uses[k.Use] = true
		if (k.Use == "x509-svid") != (len(k.X5c) == 1) || (k.Use == "jwt-svid") != (k.Kid != "") {
			t.Fatalf("bundle key %+v", k)
		}
	}
	if !uses["x509-svid"] || !uses["jwt-svid"] || len(uses) != 2 {
		t.Fatalf("bundle key uses %v", uses)
	}
}
