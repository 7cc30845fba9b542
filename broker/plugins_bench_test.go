package broker_test

import (
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchGET runs b.N GETs of path from 64 concurrent clients over loopback
// HTTP, client i sending tokens[i] (none when tokens is nil), and reports
// requests/s and latency percentiles.
func benchGET(b *testing.B, h *harness, path string, tokens []string) {
	tr := &http.Transport{MaxIdleConns: benchClients, MaxIdleConnsPerHost: benchClients}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var failed atomic.Bool
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for c := range benchClients {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", h.http.URL+path, nil)
			if tokens != nil {
				req.Header.Set("Authorization", "Bearer "+tokens[c])
			}
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N || failed.Load() {
					return
				}
				t0 := time.Now()
				resp, err := hc.Do(req)
				if err != nil {
					failed.Store(true)
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if tokens != nil && resp.StatusCode != 200 {
					failed.Store(true)
					b.Errorf("status %d", resp.StatusCode)
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if failed.Load() {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// benchTokens attests 64 callers, each with its own P-256 tee key.
func benchTokens(b *testing.B, h *harness) []string {
	toks := make([]string, benchClients)
	for i := range toks {
		_, pub := ecTEEKey(b)
		toks[i] = attestSample(b, h, pub)
	}
	return toks
}

// BenchmarkPluginResourceJWE is GET /kbs/v0/resource/... with token
// verification (cached), rego policy, the sealed value's decryption and a
// JWE (ECDH-ES+A256KW, P-256) to each caller's key.
func BenchmarkPluginResourceJWE(b *testing.B) {
	h := newHarness(b, harnessOpts{plugins: withResourceAndEcho, policy: allowEchoGet})
	if resp, body := call(b, h, "POST", "/kbs/v0/resource/default/key/1", h.adminToken(b), []byte("a secret of some 32 bytes length")); resp.StatusCode != 200 {
		b.Fatalf("%d %s", resp.StatusCode, body)
	}
	benchGET(b, h, "/kbs/v0/resource/default/key/1", benchTokens(b, h))
}

// BenchmarkPluginPlain is a plugin answer without encryption: token,
// policy, and the echo plugin.
func BenchmarkPluginPlain(b *testing.B) {
	h := newHarness(b, harnessOpts{plugins: withResourceAndEcho, policy: allowEchoGet})
	benchGET(b, h, "/kbs/v0/echo/a/b?x=1", benchTokens(b, h))
}

// BenchmarkPluginHTTPBaseline is the ceiling for the same traffic: one
// loopback GET per operation, from 64 clients, to a path the broker answers
// at once (a 404 problem document) with no authentication.
func BenchmarkPluginHTTPBaseline(b *testing.B) {
	h := newHarness(b, harnessOpts{})
	benchGET(b, h, "/nothing", nil)
}

// BenchmarkTokenIssue is GET /token for one registry scope, fully granted:
// caller token verification (cached), one rego grant decision, and an
// ES256 signature.
func BenchmarkTokenIssue(b *testing.B) {
	h := tokenHarness(b)
	benchGET(b, h, "/token?service="+registryService+"&scope=repository:team/app:pull", benchTokens(b, h))
}

// BenchmarkTokenIssuePartial is GET /token for three scopes of which the
// policy grants some actions: three rego decisions, one signature.
func BenchmarkTokenIssuePartial(b *testing.B) {
	h := tokenHarness(b)
	benchGET(b, h, "/token?service="+registryService+"&scope=repository:team/app:pull,push&scope=repository:team/rw:pull,push&scope=repository:other/x:pull", benchTokens(b, h))
}
