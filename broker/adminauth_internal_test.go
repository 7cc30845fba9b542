package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustgate/trustgate/pluginauth"
)

// TestAdminJWKSOnlyOverHTTPS checks that the admin verifier refuses an http
// JWKS URL, and that an https JWKS URL redirecting to http is not followed:
// the cleartext server never sees a request.
func TestAdminJWKSOnlyOverHTTPS(t *testing.T) {
	if _, err := NewAdminVerifier(AdminConfig{JWKSURL: "http://keys.example.org/jwks.json"}, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "https") {
		t.Fatalf("http jwks_url: %v", err)
	}
	var plainHits atomic.Int32
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		plainHits.Add(1)
		_, _ = w.Write([]byte(`{"keys":[]}`))
	}))
	defer plain.Close()
	tlsSrv := httptest.NewTLSServer(http.RedirectHandler(plain.URL+"/jwks.json", http.StatusFound))
	defer tlsSrv.Close()
	v, err := NewAdminVerifier(AdminConfig{JWKSURL: tlsSrv.URL + "/jwks.json"}, tlsSrv.Client(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.fetch(context.Background()); err == nil || plainHits.Load() != 0 {
		t.Fatalf("redirect to http: err=%v, cleartext server hit %d times", err, plainHits.Load())
	}
}

// An expired admin token is accepted only within AdminClockSkew, and a
// token living longer than max_token_ttl is refused.
func TestAdminTokenLeewayAndLifetime(t *testing.T) {
	dir := t.TempDir()
	cfg := AdminConfig{PublicKeyFile: filepath.Join(dir, "admin.pub"), MaxTokenTTL: Duration{Duration: 10 * time.Minute}}
	if _, err := CreateAdminKey(filepath.Join(dir, "admin.key"), cfg); err != nil {
		t.Fatal(err)
	}
	priv, err := LoadAdminSigningKey(filepath.Join(dir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := SignAdminToken(priv, "alice", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	issued := time.Now()
	var now time.Time
	v, err := NewAdminVerifier(cfg, nil, func() time.Time { return now }, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		after time.Duration
		ok    bool
	}{
		{time.Minute, true},
		{10*time.Minute + AdminClockSkew - 2*time.Second, true},
		{10*time.Minute + AdminClockSkew + 2*time.Second, false},
	} {
		now = issued.Add(tc.after)
		_, err := v.Verify(context.Background(), tok)
		if (err == nil) != tc.ok {
			t.Errorf("%v after issue: err = %v, want ok=%v", tc.after, err, tc.ok)
		}
	}
	long, err := SignAdminToken(priv, "alice", 11*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	now = issued
	if _, err := v.Verify(context.Background(), long); err == nil || !strings.Contains(err.Error(), "max_token_ttl") {
		t.Fatalf("11m token against a 10m cap: %v", err)
	}
}

// With no key file, only the admin socket admits: every token is refused
// with a message that says so.
func TestAdminSocketOnlyRefusesTokens(t *testing.T) {
	v, err := NewAdminVerifier(AdminConfig{SocketPath: "/run/x.sock"}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tok, _ := SignAdminToken(priv, "x", time.Minute)
	if _, err := v.Verify(context.Background(), tok); err == nil || !strings.Contains(err.Error(), "admin socket") {
		t.Fatalf("token with no admin key configured: %v", err)
	}
}

// The admin socket admits root and the broker's own user only, and no peer
// whose credentials are unknown.
func TestSocketPeerAllowed(t *testing.T) {
	for _, tc := range []struct {
		uid, euid uint32
		known     bool
		want      bool
	}{
		{0, 1000, true, true},
		{1000, 1000, true, true},
		{1001, 1000, true, false},
		{65534, 0, true, false},
		{0, 0, false, false},
	} {
		if got := socketPeerAllowed(pluginauth.PeerCred{UID: tc.uid}, tc.known, tc.euid); got != tc.want {
			t.Errorf("uid %d, broker uid %d, known %v: %v, want %v", tc.uid, tc.euid, tc.known, got, tc.want)
		}
	}
}

// `admin key create` adds keys to a JWKS file; tokens of each key verify
// by kid, and a key that was not added does not.
func TestAdminKeysInJWKSFile(t *testing.T) {
	dir := t.TempDir()
	cfg := AdminConfig{JWKSFile: filepath.Join(dir, "admin.jwks")}
	var keys []*ecdsa.PrivateKey
	for _, n := range []string{"a.key", "b.key"} {
		if _, err := CreateAdminKey(filepath.Join(dir, n), cfg); err != nil {
			t.Fatal(err)
		}
		k, err := LoadAdminSigningKey(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if fi, err := os.Stat(cfg.JWKSFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("jwks file: %v %v", fi, err)
	}
	if _, err := CreateAdminKey(filepath.Join(dir, "a.key"), cfg); err == nil {
		t.Fatal("an existing private key was overwritten")
	}
	v, err := NewAdminVerifier(cfg, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		tok, _ := SignAdminToken(k, "x", time.Minute)
		if _, err := v.Verify(context.Background(), tok); err != nil {
			t.Errorf("key %d: %v", i, err)
		}
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tok, _ := SignAdminToken(other, "x", time.Minute)
	if _, err := v.Verify(context.Background(), tok); err == nil {
		t.Error("a key not in the JWKS verified")
	}
	// One public key file trusts one key: a second create is refused and
	// leaves no private key behind.
	single := AdminConfig{PublicKeyFile: filepath.Join(dir, "admin.pub")}
	if _, err := CreateAdminKey(filepath.Join(dir, "c.key"), single); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateAdminKey(filepath.Join(dir, "d.key"), single); err == nil || !strings.Contains(err.Error(), "jwks_file") {
		t.Fatalf("second key into public_key_file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "d.key")); err == nil {
		t.Error("a refused create left its private key")
	}
}

// A broker with admin.audience accepts tokens minted for it and refuses
// tokens without that audience.
func TestAdminTokenAudience(t *testing.T) {
	dir := t.TempDir()
	cfg := AdminConfig{PublicKeyFile: filepath.Join(dir, "admin.pub"), Audience: "trustgate-admin"}
	if _, err := CreateAdminKey(filepath.Join(dir, "admin.key"), cfg); err != nil {
		t.Fatal(err)
	}
	priv, err := LoadAdminSigningKey(filepath.Join(dir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewAdminVerifier(cfg, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	with, _ := SignAdminTokenFor(priv, "a", "trustgate-admin", time.Minute)
	if _, err := v.Verify(context.Background(), with); err != nil {
		t.Fatalf("token for the audience: %v", err)
	}
	without, _ := SignAdminToken(priv, "a", time.Minute)
	if _, err := v.Verify(context.Background(), without); err == nil {
		t.Fatal("token without the audience accepted")
	}
}
