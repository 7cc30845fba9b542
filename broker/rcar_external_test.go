package broker_test

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gowebpki/jcs"

	"github.com/trustgate/trustgate/attest/jointoken"
	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/store"
)

// sampleAttestation builds a correct attestation for ch with the test
// client's own report-data computation.
func sampleAttestation(t testing.TB, ch rcartest.Challenge, pub map[string]string) rcartest.Attestation {
	t.Helper()
	alg, _ := ch.ExtraParams["selected-hash-algorithm"].(string)
	rd, err := rcartest.ReportData(alg, pub, ch.Nonce, "")
	if err != nil {
		t.Fatal(err)
	}
	return rcartest.Attestation{
		RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: pub},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: rcartest.SampleEvidence("1", rd)},
	}
}

func wantStatus(t *testing.T, err error, status int, detail string) {
	t.Helper()
	var se *rcartest.StatusError
	if !errors.As(err, &se) {
		t.Fatalf("want status %d, got %v", status, err)
	}
	if se.Status != status || !strings.Contains(se.Info.Detail, detail) || !strings.HasPrefix(se.Info.Type, "https://github.com/confidential-containers/kbs/errors/") || se.CT != "application/problem+json" {
		t.Fatalf("want %d %q, got %d %+v (%s)", status, detail, se.Status, se.Info, se.CT)
	}
}

func TestRCARSample(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.client()
	ch, cookie, err := c.Auth("sample", "")
	if err != nil {
		t.Fatal(err)
	}
	if !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Secure {
		t.Fatalf("cookie %+v: want HttpOnly, SameSite=Strict, not Secure over plain HTTP", cookie)
	}
	if ch.ExtraParams["selected-hash-algorithm"] != "sha384" {
		t.Fatalf("extra-params %v", ch.ExtraParams)
	}
	if n, err := decodeStd(ch.Nonce); err != nil || n != 32 {
		t.Fatalf("nonce %q: %d bytes, %v", ch.Nonce, n, err)
	}
	pub := teeKey(t)
	tok, err := c.Attest(sampleAttestation(t, ch, pub))
	if err != nil {
		t.Fatal(err)
	}
	claims, err := rcartest.Claims(tok)
	if err != nil {
		t.Fatal(err)
	}
	if claims["sub"] != "spiffe://example.org/tee/sample" || claims["tee"] != "sample" || claims["iss"] != "https://trustgate.test" {
		t.Fatalf("claims %v", claims)
	}
	if exp, iat := claims["exp"].(float64), claims["iat"].(float64); exp-iat != 300 {
		t.Fatalf("exp - iat = %v, want 300", exp-iat)
	}
	tp, _ := claims["tee-pubkey"].(map[string]any)
	if tp["x"] != pub["x"] {
		t.Fatal("token does not carry the tee-pubkey")
	}
	// The token verifies against the served JWKS.
	resp, err := c.HTTP.Get(h.http.URL + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct{ Keys []json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("jwks: %v %d", err, len(set.Keys))
	}
}

// TestRCARHashNegotiation: a client that supports only sha512 gets it, and
// its report data must use it.
func TestRCARHashNegotiation(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.client()
	ch, _, err := c.Auth("sample", map[string]any{"supported-hash-algorithms": []string{"sha512"}})
	if err != nil {
		t.Fatal(err)
	}
	if ch.ExtraParams["selected-hash-algorithm"] != "sha512" {
		t.Fatalf("extra-params %v", ch.ExtraParams)
	}
	if _, err := c.Attest(sampleAttestation(t, ch, teeKey(t))); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Auth("sample", map[string]any{"supported-hash-algorithms": []string{"md5"}})
	wantStatus(t, err, 401, "supported")
}

func TestRCARAuthErrors(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := h.client()
	_, _, err := c.Auth("tdx", "")
	wantStatus(t, err, 401, "not enabled")
	var ch rcartest.Challenge
	_, err = postRaw(c, "/kbs/v0/auth", `{"version":"0.1.1","tee":"sample","extra-params":""}`, &ch)
	wantStatus(t, err, 401, "Version Mismatch")
	_, err = postRaw(c, "/kbs/v0/auth", `{"tee":"sample"}`, &ch)
	wantStatus(t, err, 401, "version")
	_, err = postRaw(c, "/kbs/v0/auth", `not json`, &ch)
	wantStatus(t, err, 401, "JSON")
	_, err = postRaw(c, "/kbs/v0/auth", `{"version":"0.4.0","tee":"sample","extra-params":{"tee-metadata":{"primary_tee":{"tee":"snp"}}}}`, &ch)
	wantStatus(t, err, 401, "primary_tee")
	_, err = postRaw(c, "/kbs/v0/nothing", `{}`, &ch)
	wantStatus(t, err, 404, "invalid")
}

func postRaw(c *rcartest.Client, path, body string, out any) (*http.Response, error) {
	return c.PostRaw(path, []byte(body), out)
}

func mustReq(c *rcartest.Client, path, body string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, c.Base+path, strings.NewReader(body))
	return req
}

// TestRCARTampering: the independent client fails on every tampering.
func TestRCARTampering(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	pub := teeKey(t)
	fresh := func() (*rcartest.Client, rcartest.Challenge) {
		c := h.client()
		ch, _, err := c.Auth("sample", "")
		if err != nil {
			t.Fatal(err)
		}
		return c, ch
	}

	t.Run("wrong nonce", func(t *testing.T) {
		c, ch := fresh()
		a := sampleAttestation(t, ch, pub)
		_, other := fresh()
		a.RuntimeData.Nonce = other.Nonce
		_, err := c.Attest(a)
		wantStatus(t, err, 401, "nonce")
		// The failed try did not spend the session: the right nonce works.
		if _, err := c.Attest(sampleAttestation(t, ch, pub)); err != nil {
			t.Fatalf("right nonce after a wrong one: %v", err)
		}
	})
	t.Run("nonce from another session", func(t *testing.T) {
		c, _ := fresh()
		_, other := fresh()
		_, err := c.Attest(sampleAttestation(t, other, pub))
		wantStatus(t, err, 401, "nonce")
	})
	t.Run("replayed attest", func(t *testing.T) {
		c, ch := fresh()
		a := sampleAttestation(t, ch, pub)
		tok, err := c.Attest(a)
		if err != nil {
			t.Fatal(err)
		}
		// On the attested session, Trustee answers the session's token.
		if again, err := c.Attest(a); err != nil || strings.Split(again, ".")[1] != strings.Split(tok, ".")[1] {
			t.Fatalf("attest on the attested session: %v, %q, want the claims of %q", err, again, tok)
		}
		// In another session the evidence is worthless.
		other, _ := fresh()
		_, err = other.Attest(a)
		wantStatus(t, err, 401, "nonce")
	})
	t.Run("expired session", func(t *testing.T) {
		c, ch := fresh()
		h.clock.Advance(time.Minute)
		defer h.clock.Advance(-time.Minute)
		_, err := c.Attest(sampleAttestation(t, ch, pub))
		wantStatus(t, err, 401, "expired")
	})
	t.Run("wrong report_data", func(t *testing.T) {
		c, ch := fresh()
		a := sampleAttestation(t, ch, pub)
		other := teeKey(t) // evidence bound to a different key
		rd, _ := rcartest.ReportData("sha384", other, ch.Nonce, "")
		a.TEEEvidence.PrimaryEvidence = rcartest.SampleEvidence("1", rd)
		_, err := c.Attest(a)
		wantStatus(t, err, 401, "report_data")
		// The nonce was consumed by the failed attempt.
		_, err = c.Attest(sampleAttestation(t, ch, pub))
		wantStatus(t, err, 401, "already used")
	})
	t.Run("swapped tee-pubkey", func(t *testing.T) {
		c, ch := fresh()
		a := sampleAttestation(t, ch, pub)
		a.RuntimeData.TEEPubKey = teeKey(t)
		_, err := c.Attest(a)
		wantStatus(t, err, 401, "report_data")
	})
	t.Run("no cookie", func(t *testing.T) {
		c, ch := fresh()
		a := sampleAttestation(t, ch, pub)
		c.Cookie = ""
		_, err := c.Attest(a)
		wantStatus(t, err, 401, "cookie")
	})
	t.Run("malformed", func(t *testing.T) {
		for _, body := range []string{`{}`, `null`, `{"runtime-data":{"nonce":"x"}}`,
			`{"runtime-data":{"nonce":"x","tee-pubkey":{"kty":"EC"}},"tee-evidence":{"primary_evidence":{},"additional_evidence":""}}`,
			`{"runtime-data":{"nonce":"x","tee-pubkey":{"kty":"oct","k":"AAAA"}},"tee-evidence":{"primary_evidence":{},"additional_evidence":""}}`} {
			c, _ := fresh()
			req := mustReq(c, "/kbs/v0/attest", body)
			req.Header.Set("Cookie", "kbs-session-id="+c.Cookie)
			resp, err := c.HTTP.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 401 {
				t.Errorf("%s: status %d", body, resp.StatusCode)
			}
		}
	})
}

func decodeStd(s string) (int, error) {
	b, err := jsonBase64(s)
	return len(b), err
}

func jsonBase64(s string) ([]byte, error) {
	var b []byte
	err := json.Unmarshal([]byte(`"`+s+`"`), &b)
	return b, err
}

// TestReportDataMatchesTrustee checks the server's report data three ways:
// against the test client's own JCS, against Trustee's published test
// vector for its canonical-JSON hashing, and against gowebpki/jcs.
func TestReportDataMatchesTrustee(t *testing.T) {
	// attestation-service/src/lib.rs, test case of parse_runtime_data:
	// sha384 of the canonical {"b": 1, "a": "test", "c": {"d": "e"}}.
	const trustee = "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3"
	canon := rcartest.JCS(map[string]any{"b": 1, "a": "test", "c": map[string]any{"d": "e"}})
	lib, err := jcs.Transform([]byte(`{"b": 1, "a": "test", "c": {"d": "e"}}`))
	if err != nil || string(lib) != string(canon) {
		t.Fatalf("JCS disagree: %s vs %s (%v)", canon, lib, err)
	}
	if got := sha384hex(canon); got != trustee {
		t.Fatalf("Trustee vector: %s", got)
	}
	pub := teeKey(t)
	want, _ := rcartest.ReportData("sha384", pub, "bm9uY2U=", "")
	raw, _ := json.Marshal(pub)
	got, err := broker.ReportData("sha384", raw, "bm9uY2U=", "")
	if err != nil || string(got) != string(want) {
		t.Fatalf("server and independent client disagree on report data")
	}
}

// TestJoinTokenOverRCAR: a join token from the admin API attests once.
func TestJoinTokenOverRCAR(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ac := &broker.AdminClient{Server: h.http.URL, Token: h.adminToken(t), HTTP: h.http.Client()}
	jt, err := ac.CreateJoinToken(context.Background(), broker.JoinTokenRequest{TTL: 60})
	if err != nil {
		t.Fatal(err)
	}
	attestJT := func() (string, error) {
		c := h.client()
		ch, _, err := c.Auth("join_token", "")
		if err != nil {
			return "", err
		}
		return c.Attest(rcartest.Attestation{
			RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: teeKey(t)},
			TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: map[string]string{"token": jt.Token}},
		})
	}
	tok, err := attestJT()
	if err != nil {
		t.Fatal(err)
	}
	claims, _ := rcartest.Claims(tok)
	if claims["sub"] != "spiffe://example.org/spire/agent/join_token/"+jt.Token || claims["tee"] != "join_token" {
		t.Fatalf("claims %v", claims)
	}
	_, err = attestJT()
	wantStatus(t, err, 401, "unknown or already used")
}

// TestJoinTokensAtMostOnceUnderConcurrency races 8 RCAR clients for each of
// 25 join tokens over HTTP: each token yields exactly one token.
func TestJoinTokensAtMostOnceUnderConcurrency(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	const tokens, racers = 25, 8
	var wins, losses atomic.Int64
	var wg sync.WaitGroup
	for range tokens {
		tok, _, err := jointoken.Create(context.Background(), h.st.JoinTokens(), td, time.Minute, "", h.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		for range racers {
			wg.Go(func() {
				c := h.client()
				ch, _, err := c.Auth("join_token", "")
				if err != nil {
					t.Error(err)
					return
				}
				_, err = c.Attest(rcartest.Attestation{
					RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: map[string]string{"kty": "EC", "crv": "P-256", "x": "ugcU8YfvD3aaGjsFicf9xRSLK5I2wXsyXtNLByBj1QE", "y": "WWRAoimiqnt7mapLHDYG8twJp3Sp51TmyuzqNsSfr9Q"}},
					TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: map[string]string{"token": tok}},
				})
				var se *rcartest.StatusError
				switch {
				case err == nil:
					wins.Add(1)
				case errors.As(err, &se) && se.Status == 401:
					losses.Add(1)
				default:
					t.Error(err)
				}
			})
		}
	}
	wg.Wait()
	if wins.Load() != tokens || losses.Load() != tokens*(racers-1) {
		t.Fatalf("%d wins, %d losses for %d tokens x %d racers", wins.Load(), losses.Load(), tokens, racers)
	}
}

func TestRateLimit(t *testing.T) {
	h := newHarness(t, harnessOpts{rate: broker.RateLimit{PerSecond: 1, Burst: 3, MaxClients: 10}})
	c := h.client()
	for i := range 3 {
		if _, _, err := c.Auth("sample", ""); err != nil {
			t.Fatalf("request %d within burst: %v", i, err)
		}
	}
	_, _, err := c.Auth("sample", "")
	wantStatus(t, err, 429, "too many")
	h.clock.Advance(time.Second)
	if _, _, err := c.Auth("sample", ""); err != nil {
		t.Fatalf("after refill: %v", err)
	}
}

// TestSweeperDeletesExpiredSessions runs the background loop and waits for
// it to delete an expired session.
func TestSweeperDeletesExpiredSessions(t *testing.T) {
	h := newHarness(t, harnessOpts{sweep: 10 * time.Millisecond})
	c := h.client()
	if _, _, err := c.Auth("sample", ""); err != nil {
		t.Fatal(err)
	}
	live := h.client()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.srv.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	h.clock.Advance(2 * time.Minute)
	if _, _, err := live.Auth("sample", ""); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := h.st.Sessions().Get(context.Background(), c.Cookie)
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("expired session not swept: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := h.st.Sessions().Get(context.Background(), live.Cookie); err != nil {
		t.Fatalf("live session swept: %v", err)
	}
}

func sha384hex(b []byte) string {
	s := sha512.Sum384(b)
	return hex.EncodeToString(s[:])
}
