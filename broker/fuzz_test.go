package broker_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// fuzzPost sends body to path through the handler and fails on any answer
// other than 200 or a problem document with 401.
func fuzzPost(t *testing.T, h *harness, path, cookie string, body []byte) {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(string(body)))
	if cookie != "" {
		req.Header.Set("Cookie", "kbs-session-id="+cookie)
	}
	rec := httptest.NewRecorder()
	h.srv.ServeHTTP(rec, req)
	switch rec.Code {
	case 200:
	case 401:
		if rec.Header().Get("Content-Type") != "application/problem+json" {
			t.Fatalf("401 without problem JSON: %s", rec.Body)
		}
	default:
		t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
	}
}

func FuzzAuth(f *testing.F) {
	f.Add([]byte(`{"version":"0.4.0","tee":"sample","extra-params":""}`))
	f.Add([]byte(`{"version":"0.4.0","tee":"sample","extra-params":{"supported-hash-algorithms":["sha512"],"tee-metadata":{"primary_tee":{"tee":"sample"}}}}`))
	f.Add([]byte(`{"version":"0.4.0","tee":"join_token","extra-params":{"tee-metadata":null}}`))
	f.Add([]byte(`{"version":1}`))
	h := newHarness(f, harnessOpts{})
	f.Fuzz(func(t *testing.T, body []byte) { fuzzPost(t, h, "/kbs/v0/auth", "", body) })
}

func FuzzAttest(f *testing.F) {
	f.Add([]byte(`{"runtime-data":{"nonce":"x","tee-pubkey":{"kty":"EC","crv":"P-256","x":"ugcU8YfvD3aaGjsFicf9xRSLK5I2wXsyXtNLByBj1QE","y":"WWRAoimiqnt7mapLHDYG8twJp3Sp51TmyuzqNsSfr9Q"}},"tee-evidence":{"primary_evidence":{"svn":"1","report_data":""},"additional_evidence":""}}`))
	f.Add([]byte(`{"runtime-data":null,"tee-evidence":{"primary_evidence":null}}`))
	f.Add([]byte(`{"init-data":{"format":"toml","body":""},"runtime-data":{"nonce":"","tee-pubkey":{"kty":"RSA","n":"AQAB","e":"AQAB"}}}`))
	h := newHarness(f, harnessOpts{})
	c := h.client()
	if _, _, err := c.Auth("sample", ""); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) { fuzzPost(t, h, "/kbs/v0/attest", c.Cookie, body) })
}
