package broker_test

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustgate/trustgate/attest/jointoken"
	"github.com/trustgate/trustgate/broker/rcartest"
)

const benchClients = 64

// benchRCAR runs b.N complete RCARs (auth, then attest) from 64 concurrent
// clients over loopback HTTP and reports attestations/s and latency
// percentiles. evidence builds the primary evidence for attestation i.
func benchRCAR(b *testing.B, setup func(*harness), tee string, evidence func(i int, ch rcartest.Challenge, pub map[string]string) any) {
	h := newHarness(b, harnessOpts{})
	if setup != nil {
		setup(h)
	}
	runRCAR(b, h, tee, evidence)
}

// runRCAR is benchRCAR over an existing harness.
func runRCAR(b *testing.B, h *harness, tee string, evidence func(i int, ch rcartest.Challenge, pub map[string]string) any) {
	tr := &http.Transport{MaxIdleConns: benchClients, MaxIdleConnsPerHost: benchClients}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	pub := teeKey(b)
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range benchClients {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				t0 := time.Now()
				c := &rcartest.Client{Base: h.http.URL, HTTP: hc}
				ch, _, err := c.Auth(tee, "")
				if err == nil {
					_, err = c.Attest(rcartest.Attestation{
						RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: pub},
						TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: evidence(i, ch, pub)},
					})
				}
				if err != nil {
					failed.Add(1)
					b.Error(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if failed.Load() > 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "attestations/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

func BenchmarkRCARSample(b *testing.B) {
	benchRCAR(b, nil, "sample", func(_ int, ch rcartest.Challenge, pub map[string]string) any {
		rd, err := rcartest.ReportData("sha384", pub, ch.Nonce, "")
		if err != nil {
			b.Fatal(err)
		}
		return rcartest.SampleEvidence("1", rd)
	})
}

func BenchmarkRCARJoinToken(b *testing.B) {
	var tokens []string
	benchRCAR(b, func(h *harness) {
		tokens = make([]string, b.N)
		for i := range tokens {
			tok, _, err := jointoken.Create(context.Background(), h.st.JoinTokens(), td, time.Hour, "", h.clock.Now())
			if err != nil {
				b.Fatal(err)
			}
			tokens[i] = tok
		}
	}, "join_token", func(i int, _ rcartest.Challenge, _ map[string]string) any {
		return map[string]string{"token": tokens[i]}
	})
}

// BenchmarkHTTPBaseline is the ceiling on this machine for the same shape
// of traffic: two loopback POSTs per operation from 64 clients to a handler
// that does nothing, so RCAR figures can be read as a ratio of it.
func BenchmarkHTTPBaseline(b *testing.B) {
	h := newHarness(b, harnessOpts{})
	tr := &http.Transport{MaxIdleConns: benchClients, MaxIdleConnsPerHost: benchClients}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range benchClients {
		wg.Go(func() {
			for int(next.Add(1)) <= b.N {
				for range 2 {
					resp, err := hc.Post(h.http.URL+"/nothing", "application/json", nil)
					if err != nil {
						b.Error(err)
						return
					}
					resp.Body.Close()
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}
