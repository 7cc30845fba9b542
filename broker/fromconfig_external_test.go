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
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/slackhq/nebula/cert"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
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

	rego := "package policy\ndefault allow := false\nallow if input.claims.tee == \"sample\"\n"
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
}
