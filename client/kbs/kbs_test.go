package kbs_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/slackhq/nebula/cert"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/client/kbs"
	"github.com/trustgate/trustgate/internal/brokertest"
)

var ctx = context.Background()

func newClient(t testing.TB, b *brokertest.Broker, opts ...kbs.Option) *kbs.Client {
	t.Helper()
	c, err := kbs.New(b.URL, append([]kbs.Option{kbs.WithHTTPClient(b.HTTP)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tokenClaims verifies tok with the broker's published keys.
func tokenClaims(t testing.TB, b *brokertest.Broker, tok string) map[string]any {
	t.Helper()
	resp, err := b.HTTP.Get(b.URL + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := parsed.Claims(set, &claims); err != nil {
		t.Fatalf("token does not verify with the broker's JWKS: %v", err)
	}
	return claims
}

func wantProblem(t testing.TB, err error, status int, name string) {
	t.Helper()
	var e *kbs.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T): want *kbs.Error", err, err)
	}
	if e.Status != status || e.Name() != name || e.Detail == "" {
		t.Fatalf("problem %+v: want %d %s with a detail", e, status, name)
	}
}

// TestAttestEveryAttestor runs RCAR against the real broker with each
// attestor and checks the identity the verified token carries and that
// it binds the client's TEE key.
func TestAttestEveryAttestor(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	certFile, keyFile, leaf := b.X509PopLeaf(t, "node-1")
	pop, err := kbs.LoadX509Pop(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	fp := sha1.Sum(leaf.Raw)
	jt := b.JoinToken(t)
	cases := []struct {
		name string
		a    kbs.Attester
		sub  string
		opts []kbs.Option
	}{
		{"sample", kbs.Sample("1"), "spiffe://example.org/tee/sample", nil},
		{"sample sha256", kbs.Sample("2"), "spiffe://example.org/tee/sample", []kbs.Option{kbs.WithHashAlgorithms("sha256")}},
		{"sample sha512", kbs.Sample("2"), "spiffe://example.org/tee/sample", []kbs.Option{kbs.WithHashAlgorithms("sha512", "md5")}},
		{"join_token", kbs.JoinToken(jt), "spiffe://example.org/spire/agent/join_token/" + jt, nil},
		{"x509pop", pop, "spiffe://example.org/spire/agent/x509pop/" + hex.EncodeToString(fp[:]), nil},
		{"k8s_psat", kbs.K8sPSAT(brokertest.PSATCluster, b.PSATTokenFile(t, "node-uid-a")), "spiffe://example.org/spire/agent/k8s_psat/edge/node-uid-a", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, b, tc.opts...)
			tok, err := c.Attest(ctx, tc.a)
			if err != nil {
				t.Fatal(err)
			}
			if tok != c.Token() {
				t.Fatal("Token() is not the token Attest returned")
			}
			claims := tokenClaims(t, b, tok)
			if claims["sub"] != tc.sub || claims["tee"] != tc.a.TEE() {
				t.Fatalf("sub %v tee %v: want %s %s", claims["sub"], claims["tee"], tc.sub, tc.a.TEE())
			}
			got, _ := json.Marshal(claims["tee-pubkey"])
			var gotKey, wantKey jose.JSONWebKey
			if err := gotKey.UnmarshalJSON(got); err != nil {
				t.Fatal(err)
			}
			_ = wantKey.UnmarshalJSON(c.TEEKey().PublicJWK())
			if !gotKey.Key.(*ecdsa.PublicKey).Equal(wantKey.Key) {
				t.Fatal("the token binds another tee-pubkey")
			}
		})
	}
	t.Run("join_token is single use", func(t *testing.T) {
		_, err := newClient(t, b).Attest(ctx, kbs.JoinToken(jt))
		wantProblem(t, err, http.StatusUnauthorized, "AttestationError")
	})
}

// TestEvidenceBindsReportData: evidence for another TEE key (report data
// computed over a key the client does not send) is refused, so the client
// really computes what the broker checks.
func TestEvidenceBindsReportData(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	other, _ := kbs.GenerateTEEKey(kbs.KeyEC)
	var seen kbs.Challenge
	wrong := kbs.AttesterFunc("sample", func(ctx context.Context, ch kbs.Challenge) (json.RawMessage, error) {
		seen = ch
		ch.ReportData[0] ^= 1
		return kbs.Sample("1").Evidence(ctx, ch)
	})
	_, err := newClient(t, b, kbs.WithTEEKey(other)).Attest(ctx, wrong)
	wantProblem(t, err, http.StatusUnauthorized, "AttestationError")
	if seen.HashAlgorithm != "sha384" || len(seen.ReportData) != 48 || seen.Nonce == "" {
		t.Fatalf("challenge %+v", seen)
	}
	_, err = newClient(t, b).Attest(ctx, kbs.AttesterFunc("tpm", nil))
	wantProblem(t, err, http.StatusUnauthorized, "AttestationError")
}

// TestResourceJWE fetches a resource encrypted to EC and RSA TEE keys and
// checks that a client holding a different key cannot open the answer.
func TestResourceJWE(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	secret := []byte("the disk key \x00\xff")
	b.PutResource(t, "default/key/1", secret)
	for _, kt := range []kbs.KeyType{kbs.KeyEC, kbs.KeyRSA} {
		t.Run(string(kt), func(t *testing.T) {
			key, err := kbs.GenerateTEEKey(kt)
			if err != nil {
				t.Fatal(err)
			}
			c := newClient(t, b, kbs.WithTEEKey(key))
			if _, err := c.GetResource(ctx, "default", "key", "1"); err == nil {
				t.Fatal("fetched before attesting")
			}
			tok, err := c.Attest(ctx, kbs.Sample("1"))
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.GetResource(ctx, "default", "key", "1")
			if err != nil || string(got) != string(secret) {
				t.Fatalf("resource %q, %v", got, err)
			}
			raw, err := c.Do(ctx, kbs.Request{Plugin: "resource", Path: "default/key/1"})
			if err != nil {
				t.Fatal(err)
			}
			var hdr struct {
				Protected string `json:"protected"`
			}
			_ = json.Unmarshal(raw.Body, &hdr)
			want := map[kbs.KeyType]string{kbs.KeyEC: "ECDH-ES+A256KW", kbs.KeyRSA: "RSA-OAEP-256"}[kt]
			if obj, err := jose.ParseEncryptedJSON(string(raw.Body), []jose.KeyAlgorithm{jose.KeyAlgorithm(want)}, []jose.ContentEncryption{jose.A256GCM}); err != nil || obj.Header.Algorithm != want {
				t.Fatalf("answer is not %s/A256GCM: %v", want, err)
			}
			// Another key with this token: the broker encrypts to the
			// token's key, which this client does not hold.
			thief, _ := kbs.GenerateTEEKey(kt)
			tc := newClient(t, b, kbs.WithTEEKey(thief), kbs.WithToken(tok))
			if _, err := tc.GetResource(ctx, "default", "key", "1"); err == nil {
				t.Fatal("opened with another key")
			}
			_, err = c.GetResource(ctx, "default", "key", "2")
			wantProblem(t, err, http.StatusNotFound, "PluginError")
		})
	}
}

// TestPolicyDenyIsTyped: a policy denial decodes into *kbs.Error.
func TestPolicyDenyIsTyped(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	b.PutResource(t, "default/key/1", []byte("x"))
	b.SetPolicy(t, "package policy\ndefault allow := false\n")
	c := newClient(t, b)
	if _, err := c.Attest(ctx, kbs.Sample("1")); err != nil {
		t.Fatal(err)
	}
	_, err := c.GetResource(ctx, "default", "key", "1")
	wantProblem(t, err, http.StatusForbidden, "PolicyDeny")
}

// TestNebula gets credentials both ways and verifies them with nebula's
// own cert package.
func TestNebula(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	c := newClient(t, b)
	if _, err := c.Attest(ctx, kbs.Sample("1")); err != nil {
		t.Fatal(err)
	}
	cred, err := c.NebulaCredential(ctx, kbs.NebulaRequest{Name: "node-1", IPs: []string{"10.42.0.5/16"}, Duration: time.Hour})
	if err != nil {
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
	if time.Until(nc.NotAfter()) > time.Hour+time.Minute {
		t.Fatalf("duration not applied: not after %v", nc.NotAfter())
	}
	priv, _, curve, err := cert.UnmarshalPrivateKeyFromPEM(cred.NodeKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.VerifyPrivateKey(curve, priv); err != nil {
		t.Fatalf("node key does not match the certificate: %v", err)
	}
	_, err = c.NebulaCredential(ctx, kbs.NebulaRequest{Name: "node-1", IPs: []string{"192.168.0.5/24"}})
	wantProblem(t, err, http.StatusBadRequest, "PluginError")

	cas, err := c.NebulaCA(ctx)
	if err != nil || string(cas) != string(cred.CACrt) {
		t.Fatalf("ca %q: %v", cas, err)
	}
}

// TestSVID gets an X.509-SVID from a local CSR, verified by go-spiffe
// against the served bundle, and a JWT-SVID.
func TestSVID(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	c := newClient(t, b)
	if _, err := c.Attest(ctx, kbs.Sample("1")); err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/tee/sample")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}, URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := c.X509SVID(ctx, csr, id.String())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := c.SVIDBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := spiffebundle.Parse(id.TrustDomain(), raw)
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, p := range sv.Chain {
		blk, _ := pem.Decode([]byte(p))
		crt, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, crt)
	}
	got, _, err := x509svid.Verify(chain, bundle)
	if err != nil || got != id {
		t.Fatalf("x509svid.Verify: %v %v", got, err)
	}
	if !chain[0].PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Fatal("SVID certifies another key")
	}
	bare, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	_, err = c.X509SVID(ctx, bare, "spiffe://example.org/someone/else")
	wantProblem(t, err, http.StatusForbidden, "PluginError")

	jv, err := c.JWTSVID(ctx, id.String(), []string{"db"})
	if err != nil {
		t.Fatal(err)
	}
	js, err := jwtsvid.ParseAndValidate(jv.Token, bundle, []string{"db"})
	if err != nil || js.ID != id {
		t.Fatalf("jwtsvid: %v %v", js, err)
	}
}

// TestTLSTrustBundle: over HTTPS the client needs the broker's CA.
func TestTLSTrustBundle(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{TLS: true})
	c, err := kbs.New(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	var ue *tls.CertificateVerificationError
	if _, err := c.Attest(ctx, kbs.Sample("1")); !errors.As(err, &ue) {
		t.Fatalf("untrusted broker: %v", err)
	}
	pool := x509.NewCertPool()
	pemData, _ := os.ReadFile(b.CAFile)
	pool.AppendCertsFromPEM(pemData)
	conf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	for _, opt := range []kbs.Option{kbs.WithTLSConfig(conf), kbs.WithTransport(&http.Transport{TLSClientConfig: conf})} {
		c, err = kbs.New(b.URL, opt)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Attest(ctx, kbs.Sample("1")); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSession: a session written after Attest lets another client fetch
// without attesting.
func TestSession(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	b.PutResource(t, "default/key/1", []byte("s3cret"))
	key, _ := kbs.GenerateTEEKey(kbs.KeyRSA)
	c := newClient(t, b, kbs.WithTEEKey(key))
	tok, err := c.Attest(ctx, kbs.Sample("1"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "session.json")
	if err := kbs.WriteSession(path, kbs.Session{URL: b.URL, TEE: "sample", Token: tok, TEEKey: c.TEEKey()}); err != nil {
		t.Fatal(err)
	}
	s, err := kbs.ReadSession(path)
	if err != nil {
		t.Fatal(err)
	}
	c2 := newClient(t, b, kbs.WithTEEKey(s.TEEKey), kbs.WithToken(s.Token))
	got, err := c2.GetResource(ctx, "default", "key", "1")
	if err != nil || string(got) != "s3cret" {
		t.Fatalf("%q %v", got, err)
	}
}

func TestNewRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"", "ftp://x", "http://", "http://u:p@x", "http://x?q=1", "x:8080"} {
		if _, err := kbs.New(u); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
	if _, err := kbs.New("http://x", kbs.WithTimeout(0)); err == nil {
		t.Error("zero timeout accepted")
	}
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := kbs.NewTEEKey(k); err == nil {
		t.Error("P-384 TEE key accepted")
	}
}

// TestNoRedirects: a redirect is an error, and the evidence and token are
// never sent to where it points.
func TestNoRedirects(t *testing.T) {
	var leaked atomic.Int32
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Add(1)
	}))
	defer elsewhere.Close()
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redirector.Close()
	c, err := kbs.New(redirector.URL)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Attest(ctx, kbs.Sample("1"))
	var e *kbs.Error
	if !errors.As(err, &e) || e.Status != http.StatusTemporaryRedirect {
		t.Fatalf("redirect: %v", err)
	}
	c, _ = kbs.New(redirector.URL, kbs.WithToken("a.b.c"))
	if _, err := c.GetResource(ctx, "a", "b", "c"); err == nil {
		t.Fatal("redirected fetch succeeded")
	}
	if n := leaked.Load(); n != 0 {
		t.Fatalf("%d requests followed the redirect", n)
	}
}

// TestRateLimitProblem: a 429 problem decodes with its Retry-After.
func TestRateLimitProblem(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte(`{"type":"https://github.com/confidential-containers/kbs/errors/RateLimited","title":"Too Many Requests","status":429,"detail":"slow down"}`))
	}))
	defer srv.Close()
	c, _ := kbs.New(srv.URL)
	_, err := c.Attest(ctx, kbs.Sample("1"))
	var e *kbs.Error
	if !errors.As(err, &e) || e.Name() != "RateLimited" || e.RetryAfter != 7*time.Second || e.Detail != "slow down" || e.Title != "Too Many Requests" {
		t.Fatalf("%#v", err)
	}
}
