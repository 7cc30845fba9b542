package token

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	dtoken "github.com/distribution/distribution/v3/registry/auth/token"
	"github.com/go-jose/go-jose/v4"

	"github.com/trustgate/trustgate/internal/dockerregistry"
)

// TestKeyIDSpecVector checks KeyID against the example key of
// distribution's docs/spec/auth/jwt.md, whose "kid" is its libtrust
// fingerprint.
func TestKeyIDSpecVector(t *testing.T) {
	b := func(s string) []byte {
		v, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	point := append(append([]byte{4}, b("m7zUpx3b-zmVE5cymSs64POG9QcyEpJaYCD82-549_Q")...), b("dU3biz8sZ_8GPB-odm8Wxz3lNDr1xcAQQPQaOcr1fmc")...)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		t.Fatal(err)
	}
	got, err := KeyID(pub)
	if want := "PYYO:TEWU:V7JH:26JV:AQTZ:LJC3:SXVJ:XGHA:34F2:2LAQ:ZRMK:Z7Q6"; err != nil || got != want {
		t.Fatalf("KeyID = %q, %v; want %q", got, err, want)
	}
}

// registryClaims is a scoped token's claim set as distribution reads it.
func registryClaims(iss, aud string) map[string]any {
	now := time.Now()
	return map[string]any{"iss": iss, "sub": "spiffe://example.org/x", "aud": aud, "exp": now.Add(5 * time.Minute).Unix(),
		"nbf": now.Unix(), "iat": now.Unix(), "jti": "j",
		"access": []map[string]any{{"type": "registry", "name": "catalog", "actions": []string{"*"}}}}
}

func roots(t *testing.T, a *Authority) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(a.RootCertificates()) {
		t.Fatalf("RootCertificates is no PEM: %q", a.RootCertificates())
	}
	return p
}

// distributionV3 verifies raw as distribution v3 does, configured with the
// given rootcertbundle pool and JWKS.
func distributionV3(raw string, pool *x509.CertPool, set []byte) error {
	keys := map[string]crypto.PublicKey{}
	if set != nil {
		var s jose.JSONWebKeySet
		if err := json.Unmarshal(set, &s); err != nil {
			return err
		}
		for _, k := range s.Keys {
			keys[k.KeyID] = k.Public().Key
		}
	}
	if pool == nil {
		pool = x509.NewCertPool()
	}
	tok, err := dtoken.NewToken(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return err
	}
	_, err = tok.Verify(dtoken.VerifyOptions{TrustedIssuers: []string{"iss"}, AcceptedAudiences: []string{"reg"}, Roots: pool, TrustedKeys: keys})
	return err
}

// TestChainAndKidWithDistributionV3: a chained token is trusted through
// the root certificates alone, across a key rotation; a kid-only token
// through the JWKS. A JWKS-only registry refuses the chained token (it
// checks x5c first), which is why chaining is per service.
func TestChainAndKidWithDistributionV3(t *testing.T) {
	// The authority's clock picks the key; the claims and distribution
	// follow the real one.
	c := &clock{t: time.Now().Add(-life + 10*time.Minute)}
	a := open(t, newStore(t), newSealer(t, 1), c)
	pool := roots(t, a)
	chained, err := a.SignWithChain(registryClaims("iss", "reg"))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := a.Sign(registryClaims("iss", "reg"))
	if err != nil {
		t.Fatal(err)
	}
	if err := distributionV3(chained, pool, nil); err != nil {
		t.Fatalf("chained token, rootcertbundle: %v", err)
	}
	if err := distributionV3(plain, nil, a.JWKS()); err != nil {
		t.Fatalf("kid-only token, jwks: %v", err)
	}
	if err := distributionV3(plain, pool, nil); err == nil {
		t.Fatal("kid-only token accepted with only the CA as root")
	}
	if err := distributionV3(chained, nil, a.JWKS()); err == nil {
		t.Fatal("a JWKS-only distribution v3 accepted a chained token; chaining need not be per service")
	}
	// Rotation: the successor key's tokens chain to the same roots.
	first := headerKid(t, chained)
	c.Advance(life - pre)
	if err := a.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.Advance(pre)
	if err := a.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	next, err := a.SignWithChain(registryClaims("iss", "reg"))
	if err != nil {
		t.Fatal(err)
	}
	if headerKid(t, next) == first {
		t.Fatal("no rotation happened")
	}
	if err := distributionV3(next, pool, nil); err != nil {
		t.Fatalf("rotated key, old root bundle: %v", err)
	}
}

// TestCARestoredAndStable: replicas and restarts share the CA, and the
// bundle does not change when keys rotate.
func TestCARestoredAndStable(t *testing.T) {
	st, s := newStore(t), newSealer(t, 1)
	c := &clock{t: time.Now()}
	a := open(t, st, s, c)
	b := open(t, st, s, c)
	if string(a.RootCertificates()) != string(b.RootCertificates()) || len(a.RootCertificates()) == 0 {
		t.Fatal("two authorities on one store publish different CAs")
	}
	before := string(a.RootCertificates())
	for range 3 {
		c.Advance(life)
		if err := a.Rotate(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if string(a.RootCertificates()) != before {
		t.Fatal("the CA bundle changed with key rotation")
	}
	blk, _ := pem.Decode(a.RootCertificates())
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || !ca.IsCA || ca.NotAfter.Sub(ca.NotBefore) < 9*365*24*time.Hour {
		t.Fatalf("CA %v: IsCA %v, lifetime %v", err, ca != nil && ca.IsCA, ca.NotAfter.Sub(ca.NotBefore))
	}
	// Near its end a successor is published beside it, and certifies keys
	// only once the old CA cannot cover them.
	c.Advance(ca.NotAfter.Sub(c.Now()) - 365*24*time.Hour)
	if err := a.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(a.RootCertificates()), "BEGIN CERTIFICATE"); n != 2 {
		t.Fatalf("%d CAs published near the end of the first, want 2", n)
	}
}

// TestDistributionV28TrustsByRootCertBundle runs Debian's docker-registry
// (distribution 2.8) with auth.token.rootcertbundle holding the token CA
// and the first key's certificate. It accepts a chained token, a kid-only
// token by the key's libtrust fingerprint, and, without a restart, a
// chained token from the rotated key; a kid-only token from the rotated
// key, which the bundle does not hold, is refused.
func TestDistributionV28TrustsByRootCertBundle(t *testing.T) {
	// The authority's clock picks the key; the claims follow the real one.
	c := &clock{t: time.Now().Add(-life + 10*time.Minute)}
	a := open(t, newStore(t), newSealer(t, 1), c)
	bundle := append([]byte{}, a.RootCertificates()...)
	for _, leaf := range a.leaves {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})...)
	}
	reg := dockerregistry.Start(t, dockerregistry.Config{Realm: "http://127.0.0.1:1/token", Service: "reg", Issuer: "iss", RootCertBundle: bundle})
	get := func(tok string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, reg.URL+"/v2/_catalog", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	signed := func(chain bool) string {
		t.Helper()
		f := a.Sign
		if chain {
			f = a.SignWithChain
		}
		tok, err := f(registryClaims("iss", "reg"))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if st := get(signed(true)); st != http.StatusOK {
		t.Fatalf("chained token: %d", st)
	}
	bundleKid := signed(false)
	if st := get(bundleKid); st != http.StatusOK {
		t.Fatalf("kid-only token of a key in the bundle: %d", st)
	}
	wrongAud, _ := a.SignWithChain(registryClaims("iss", "other"))
	if st := get(wrongAud); st != http.StatusUnauthorized {
		t.Fatalf("token for another service: %d", st)
	}
	// Rotate: the successor is published 6h before it signs.
	c.Advance(life - pre)
	if err := a.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.Advance(pre)
	if err := a.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := headerKid(t, bundleKid)
	rotated := signed(true)
	if headerKid(t, rotated) == first {
		t.Fatal("no rotation happened")
	}
	if st := get(rotated); st != http.StatusOK {
		t.Fatalf("chained token of the rotated key: %d", st)
	}
	if st := get(signed(false)); st != http.StatusUnauthorized {
		t.Fatalf("kid-only token of a key not in the bundle: %d", st)
	}
}
