package workloadapi_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	swl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/trustgate/trustgate/agent/attestor/unix"
	"github.com/trustgate/trustgate/agent/cache"
)

// benchFetch measures warm fetches by n concurrent go-spiffe clients, each
// on its own connection, and reports p50, p99 and throughput.
func benchFetch(b *testing.B, o options, entry cache.Entry, fetch func(context.Context, *swl.Client) error) {
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			e := newEnv(b, o, entry)
			ctx := ctxT(b)
			clients := make([]*swl.Client, n)
			for i := range clients {
				c, err := swl.New(ctx, swl.WithAddr(e.addr))
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				// Warm: the SVID is issued and the connection is up.
				deadline := time.Now().Add(10 * time.Second)
				for err = fetch(ctx, c); err != nil && time.Now().Before(deadline); err = fetch(ctx, c) {
					time.Sleep(10 * time.Millisecond)
				}
				if err != nil {
					b.Fatal(err)
				}
				clients[i] = c
			}
			lat := make([][]time.Duration, n)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for i, c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						t0 := time.Now()
						if err := fetch(ctx, c); err != nil {
							b.Error(err)
							return
						}
						lat[i] = append(lat[i], time.Since(t0))
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			all := slices.Concat(lat...)
			slices.Sort(all)
			if len(all) == 0 {
				return
			}
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
			b.ReportMetric(ms(all[len(all)/2]), "p50-ms")
			b.ReportMetric(ms(all[min(len(all)-1, len(all)*99/100)]), "p99-ms")
			b.ReportMetric(float64(len(all))/elapsed.Seconds(), "fetches/s")
		})
	}
}

// BenchmarkFetchX509SVID: go-spiffe's Client.FetchX509SVID (a stream
// opened, the first response read, the stream closed) against a warm
// cache, each call attested by the unix attestor.
func BenchmarkFetchX509SVID(b *testing.B) {
	benchFetch(b, options{}, uidEntry("e1", "spiffe://example.org/me", os.Getuid()), func(ctx context.Context, c *swl.Client) error {
		_, err := c.FetchX509SVID(ctx)
		return err
	})
}

// BenchmarkFetchJWTSVID: go-spiffe's Client.FetchJWTSVID served from the
// JWT-SVID cache.
func BenchmarkFetchJWTSVID(b *testing.B) {
	benchFetch(b, options{}, uidEntry("e1", "spiffe://example.org/me", os.Getuid()), func(ctx context.Context, c *swl.Client) error {
		_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "bench"})
		return err
	})
}

// BenchmarkFetchX509SVIDByAttestor compares, in one run, the same fetch
// attested by the unix attestor (entry unix:uid) and by the nri attestor
// (entry k8s:ns and k8s:pod-label, the caller a container it knows).
func BenchmarkFetchX509SVIDByAttestor(b *testing.B) {
	fetch := func(ctx context.Context, c *swl.Client) error {
		_, err := c.FetchX509SVID(ctx)
		return err
	}
	b.Run("attestor=unix", func(b *testing.B) {
		benchFetch(b, options{attestor: unix.New(unix.Config{})}, uidEntry("e1", "spiffe://example.org/me", os.Getuid()), fetch)
	})
	b.Run("attestor=nri", func(b *testing.B) {
		a, _ := nriSelf(b)
		benchFetch(b, options{attestor: a}, webEntry(), fetch)
	})
}
