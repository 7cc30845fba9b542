package broker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
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
