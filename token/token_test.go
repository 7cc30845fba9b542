package token

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/sqlite"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newStore(t testing.TB) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "t.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newSealer(t testing.TB, b byte) *seal.Sealer {
	s, err := seal.New(bytes.Repeat([]byte{b}, seal.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const (
	life = 24 * time.Hour
	pre  = 6 * time.Hour
	ttl  = time.Hour
)

func open(t testing.TB, st store.Store, s *seal.Sealer, c *clock) *Authority {
	t.Helper()
	a, err := Open(context.Background(), Options{Keys: st.Keys(), Sealer: s, KeyLifetime: life, Prepublish: pre, MaxTokenTTL: ttl, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func sign(t *testing.T, a *Authority, c *clock, sub string) string {
	t.Helper()
	now := c.Now()
	tok, err := a.Sign(Attestation{Claims: jwt.Claims{Issuer: "iss", Subject: sub, IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(ttl))}, SPIFFEID: sub, TEE: "sample"})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

type jwks struct {
	Keys []struct{ Kid, Kty, Crv, X, Y, Alg, Use string }
}

func kids(t *testing.T, a *Authority) []string {
	var set jwks
	if err := json.Unmarshal(a.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.Kid)
	}
	return out
}

func headerKid(t *testing.T, tok string) string {
	h, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	var v struct{ Kid, Alg, Typ string }
	if err := json.Unmarshal(h, &v); err != nil {
		t.Fatal(err)
	}
	if v.Alg != "ES256" || v.Typ != "JWT" {
		t.Fatalf("header %s", h)
	}
	return v.Kid
}

// TestSignatureCheckedWithStdlib verifies a token with crypto/ecdsa and the
// JWKS served over HTTP, without go-jose, so the wire format is checked by
// code that did not produce it.
func TestSignatureCheckedWithStdlib(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	a := open(t, newStore(t), newSealer(t, 1), c)
	srv := httptest.NewServer(a)
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/jwk-set+json" {
		t.Fatalf("content type %q", ct)
	}
	var set jwks
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 || set.Keys[0].Kty != "EC" || set.Keys[0].Crv != "P-256" || set.Keys[0].Use != "sig" {
		t.Fatalf("jwks %+v", set)
	}
	tok := sign(t, a, c, "spiffe://td/x")
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not compact JWS: %s", tok)
	}
	k := set.Keys[0]
	if headerKid(t, tok) != k.Kid {
		t.Fatal("kid mismatch")
	}
	x, _ := base64.RawURLEncoding.DecodeString(k.X)
	y, _ := base64.RawURLEncoding.DecodeString(k.Y)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		t.Fatalf("JWKS key is not a P-256 point: %v", err)
	}
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	if len(sig) != 64 {
		t.Fatalf("signature %d bytes", len(sig))
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		t.Fatal("stdlib ECDSA rejects the signature")
	}
	body, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims map[string]any
	if err := json.Unmarshal(body, &claims); err != nil {
		t.Fatal(err)
	}
	if claims["sub"] != "spiffe://td/x" || claims["spiffe_id"] != "spiffe://td/x" || claims["tee"] != "sample" || claims["exp"] == nil {
		t.Fatalf("claims %v", claims)
	}
}

func TestVerifyRejects(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	a := open(t, newStore(t), newSealer(t, 1), c)
	tok := sign(t, a, c, "spiffe://td/x")
	var got Attestation
	if _, err := a.Verify(tok, "iss", &got); err != nil || got.SPIFFEID != "spiffe://td/x" {
		t.Fatalf("valid token: %v %+v", err, got)
	}
	if _, err := a.Verify(tok, "other", &got); err == nil {
		t.Fatal("wrong issuer accepted")
	}
	p := strings.Split(tok, ".")
	body, _ := base64.RawURLEncoding.DecodeString(p[1])
	forged := p[0] + "." + base64.RawURLEncoding.EncodeToString(bytes.Replace(body, []byte("td/x"), []byte("td/y"), 1)) + "." + p[2]
	if _, err := a.Verify(forged, "iss"); err == nil {
		t.Fatal("altered claims accepted")
	}
	other := open(t, newStore(t), newSealer(t, 2), c)
	if _, err := a.Verify(sign(t, other, c, "spiffe://td/x"), "iss"); err == nil || !strings.Contains(err.Error(), "unknown key id") {
		t.Fatalf("foreign key: %v", err)
	}
	noExp, err := a.Sign(jwt.Claims{Issuer: "iss"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Verify(noExp, "iss"); err == nil {
		t.Fatal("token without exp accepted")
	}
	c.Advance(ttl + time.Second)
	if _, err := a.Verify(tok, "iss"); err == nil {
		t.Fatal("expired token accepted")
	}
	for _, junk := range []string{"", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", tok + "x"} {
		if _, err := a.Verify(junk, "iss"); err == nil {
			t.Errorf("%q accepted", junk)
		}
	}
}

// TestRotationOverlap walks a key through its life: published before it
// signs, signing, retired but published while its tokens live, deleted.
func TestRotationOverlap(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	st := newStore(t)
	a := open(t, st, newSealer(t, 1), c)
	first := kids(t, a)
	if len(first) != 1 {
		t.Fatalf("first start: %d keys", len(first))
	}
	c.Advance(life - pre - time.Second)
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(kids(t, a)); n != 1 {
		t.Fatalf("successor published too early: %d keys", n)
	}
	c.Advance(time.Second)
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	both := kids(t, a)
	if len(both) != 2 {
		t.Fatalf("successor not published at prepublish: %v", both)
	}
	second := both[1]
	c.Advance(pre - time.Minute)
	old := sign(t, a, c, "old")
	if headerKid(t, old) != first[0] {
		t.Fatal("successor signs before its NotBefore")
	}
	c.Advance(time.Minute)
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	fresh := sign(t, a, c, "new")
	if headerKid(t, fresh) != second {
		t.Fatal("successor does not sign after the old key's NotAfter")
	}
	if _, err := a.Verify(old, "iss"); err != nil {
		t.Fatalf("token of the retired key no longer verifies: %v", err)
	}
	if n := len(kids(t, a)); n != 2 {
		t.Fatalf("retired key unpublished while its tokens live: %d keys", n)
	}
	c.Advance(ttl)
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if got := kids(t, a); len(got) != 1 || got[0] != second {
		t.Fatalf("retired key kept after its last token expired: %v", got)
	}
	if ks, _ := st.Keys().List(ctx, KindSigning); len(ks) != 1 {
		t.Fatalf("store holds %d keys", len(ks))
	}
}

// TestReplicasShareKeys: a second server on the same database signs with
// the same key, and each verifies the other's tokens.
func TestReplicasShareKeys(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	st := newStore(t)
	s := newSealer(t, 1)
	a, b := open(t, st, s, c), open(t, st, s, c)
	if ka, kb := kids(t, a), kids(t, b); len(ka) != 1 || len(kb) != 1 || ka[0] != kb[0] {
		t.Fatalf("replicas disagree: %v %v", ka, kb)
	}
	if _, err := b.Verify(sign(t, a, c, "x"), "iss"); err != nil {
		t.Fatal(err)
	}
}

// TestPrivateKeysSealedAtRest: the store holds no private key in the clear,
// and without the seal key the stored keys are useless.
func TestPrivateKeysSealedAtRest(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	st := newStore(t)
	open(t, st, newSealer(t, 1), c)
	ks, err := st.Keys().List(ctx, KindSigning)
	if err != nil || len(ks) != 1 {
		t.Fatal(ks, err)
	}
	for _, k := range ks {
		if _, err := x509.ParsePKCS8PrivateKey(k.Sealed); err == nil {
			t.Fatal("private key stored in the clear")
		}
		if bytes.Contains(k.Sealed, []byte("PRIVATE")) || bytes.Contains(k.Public, []byte(`"d"`)) {
			t.Fatal("private material visible in the store")
		}
	}
	_, err = Open(ctx, Options{Keys: st.Keys(), Sealer: newSealer(t, 9), Now: c.Now, KeyLifetime: life, Prepublish: pre, MaxTokenTTL: ttl})
	if !errors.Is(err, seal.ErrOpen) {
		t.Fatalf("keys opened under another seal key: %v", err)
	}
}

func BenchmarkSign(b *testing.B) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	a := open(b, newStore(b), newSealer(b, 1), c)
	claims := Attestation{Claims: jwt.Claims{Issuer: "iss", Subject: "spiffe://td/x", Expiry: jwt.NewNumericDate(c.Now().Add(ttl))}, SPIFFEID: "spiffe://td/x", TEE: "sample"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Sign(claims); err != nil {
			b.Fatal(err)
		}
	}
}
