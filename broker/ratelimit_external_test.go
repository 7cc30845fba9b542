package broker_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/broker"
)

// post sends one request straight to the server's handler from remoteAddr
// and returns the status.
func post(h *harness, method, path, remoteAddr string) int {
	r := httptest.NewRequest(method, path, strings.NewReader(`{"version":"0.1.0","tee":"sample","extra-params":""}`))
	r.RemoteAddr = remoteAddr
	w := httptest.NewRecorder()
	h.srv.ServeHTTP(w, r)
	return w.Code
}

// TestRateLimitGroupsIPv6By64 sends from 1000 distinct addresses of one IPv6
// /64: they share one bucket, so all but the burst are refused, while a
// client in another /64 and IPv4 neighbours keep their own buckets.
func TestRateLimitGroupsIPv6By64(t *testing.T) {
	h := newHarness(t, harnessOpts{rate: broker.RateLimit{PerSecond: 1, Burst: 2, MaxClients: 100}})
	allowed := 0
	for i := range 1000 {
		if post(h, http.MethodPost, "/kbs/v0/auth", fmt.Sprintf("[2001:db8:1:2:%x:%x::1]:40000", i/256, i%256)) != http.StatusTooManyRequests {
			allowed++
		}
	}
	if allowed != 2 {
		t.Fatalf("1000 addresses in one /64 got %d requests through, want the burst of 2", allowed)
	}
	if c := post(h, http.MethodPost, "/kbs/v0/auth", "[2001:db8:1:3::1]:40000"); c == http.StatusTooManyRequests {
		t.Fatal("a client in another /64 was limited")
	}
	for _, a := range []string{"192.0.2.1:1", "192.0.2.1:2", "192.0.2.2:1"} {
		if c := post(h, http.MethodPost, "/kbs/v0/auth", a); c == http.StatusTooManyRequests {
			t.Fatalf("%s limited within its burst", a)
		}
	}
	if c := post(h, http.MethodPost, "/kbs/v0/auth", "192.0.2.1:3"); c != http.StatusTooManyRequests {
		t.Fatalf("third request from 192.0.2.1: status %d, want 429", c)
	}
}

// TestTokenEndpointIsRateLimited checks that /token, which verifies a
// signature per request, has a per-client limit too.
func TestTokenEndpointIsRateLimited(t *testing.T) {
	h := newHarness(t, harnessOpts{
		rate:         broker.RateLimit{PerSecond: 1, Burst: 3, MaxClients: 100},
		tokenService: &broker.TokenServiceOptions{Service: "trustgate", Services: []string{"registry.test"}},
	})
	for i := range 3 {
		if c := post(h, http.MethodGet, "/token?service=registry.test", "198.51.100.7:1"); c == http.StatusTooManyRequests {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	if c := post(h, http.MethodGet, "/token?service=registry.test", "198.51.100.7:1"); c != http.StatusTooManyRequests {
		t.Fatalf("request past the burst: status %d, want 429", c)
	}
}

// TestAgentSVIDEndpointIsRateLimited: POST /agent/v1/svid, where an
// attestation token (or an agent SVID) gets a signature per request, has a
// per-client limit of its own, counted before the caller is checked; the
// attestation routes keep their own buckets.
func TestAgentSVIDEndpointIsRateLimited(t *testing.T) {
	e := newAgentEnvOpts(t, harnessOpts{rate: broker.RateLimit{PerSecond: 1, Burst: 2, MaxClients: 100}})
	for i := range 2 {
		if c := post(e.h, http.MethodPost, "/agent/v1/svid", "198.51.100.9:1"); c == http.StatusTooManyRequests || c == http.StatusNotFound {
			t.Fatalf("request %d within the burst: status %d", i, c)
		}
	}
	if c := post(e.h, http.MethodPost, "/agent/v1/svid", "198.51.100.9:2"); c != http.StatusTooManyRequests {
		t.Fatalf("request past the burst: status %d, want 429", c)
	}
	if c := post(e.h, http.MethodPost, "/kbs/v0/auth", "198.51.100.9:3"); c == http.StatusTooManyRequests {
		t.Fatal("the agent limit spent the attestation bucket")
	}
}
