package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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
