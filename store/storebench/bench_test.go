package storebench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/storekinds"
)

// BenchmarkSessionCycle is one RCAR attestation's store traffic, create a
// session and consume its nonce, from 32 callers per core.
func BenchmarkSessionCycle(b *testing.B) {
	for _, o := range storekinds.All {
		b.Run(o.Name, func(b *testing.B) {
			st := o.Open(b)
			ctx := context.Background()
			now := time.Now()
			var n atomic.Int64
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := fmt.Sprint("s", n.Add(1))
					if err := st.Sessions().Create(ctx, store.Session{ID: id, TEE: "sample", Nonce: "n", CreatedAt: now, ExpiresAt: now.Add(time.Minute)}); err != nil {
						b.Fatal(err)
					}
					if _, err := st.Sessions().ConsumeNonce(ctx, id, "n", now); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cycles/s")
		})
	}
}

// createTokens stores n join tokens named prefix0 ... from parallel callers.
func createTokens(b *testing.B, st store.Store, prefix string, n int) {
	b.Helper()
	ctx := context.Background()
	now := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				if err := st.JoinTokens().Create(ctx, store.JoinToken{ID: fmt.Sprint(prefix, i), ExpiresAt: now.Add(time.Hour), CreatedAt: now}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkJoinTokenConsume consumes distinct join tokens from 32 callers
// per core; creating them is not timed.
func BenchmarkJoinTokenConsume(b *testing.B) {
	for _, o := range storekinds.All {
		b.Run(o.Name, func(b *testing.B) {
			st := o.Open(b)
			prefix := fmt.Sprint("t", b.N, "-")
			createTokens(b, st, prefix, b.N)
			ctx := context.Background()
			var n atomic.Int64
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := st.JoinTokens().Consume(ctx, fmt.Sprint(prefix, n.Add(1)-1)); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkJoinTokenContention has three replicas (three pools on one
// PostgreSQL database) race for every token: each replica's callers walk
// all the tokens in the same order, so each token is tried three times at
// about the same moment. It fails unless every token was consumed exactly
// once, and reports consumed tokens per second.
func BenchmarkJoinTokenContention(b *testing.B) {
	const replicas, callers = 3, 8
	open := storekinds.Postgres.Replicas(b)
	pools := make([]store.Store, replicas)
	for i := range pools {
		pools[i] = open()
	}
	createTokens(b, pools[0], "c", b.N)
	ctx := context.Background()
	uses := make([]atomic.Int32, b.N)
	var refused atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for _, st := range pools {
		var next atomic.Int64
		for range callers {
			wg.Go(func() {
				for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
					_, err := st.JoinTokens().Consume(ctx, fmt.Sprint("c", i))
					switch {
					case err == nil:
						uses[i].Add(1)
					case errors.Is(err, store.ErrNotFound):
						refused.Add(1)
					default:
						b.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	b.StopTimer()
	double := 0
	for i := range uses {
		if n := uses[i].Load(); n != 1 {
			double++
			b.Errorf("token %d consumed %d times", i, n)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
	b.ReportMetric(float64(double), "double-uses")
	b.ReportMetric(float64(refused.Load())/float64(b.N), "refusals/token")
}

// Entry shapes for BenchmarkEntries: every agent has entriesPerAgent
// entries, and the server has nodeAliases entries, whatever the size.
const (
	entriesPerAgent = 10
	nodeAliases     = 10
	serverID        = "spiffe://td/spire/server"
)

// grow adds entries to st until it holds n (node aliases first).
func grow(b *testing.B, st store.Store, from, n int) {
	b.Helper()
	ctx := context.Background()
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				parent := fmt.Sprint("spiffe://td/agent/", i/entriesPerAgent)
				if i < nodeAliases {
					parent = serverID
				}
				if _, err := st.Entries().Create(ctx, store.Entry{
					ID: fmt.Sprintf("e%07d", i), SPIFFEID: fmt.Sprint("spiffe://td/w/", i), ParentID: parent,
					Selectors: []store.Selector{{Type: "k8s", Value: fmt.Sprint("ns:", i%100)}, {Type: "k8s", Value: fmt.Sprint("sa:", i)}},
				}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkEntries measures the entry lookups of the issuance paths as the
// store grows from 1,000 to 100,000 entries: an SVID for one SPIFFE ID
// (List by SPIFFE ID), an agent's authorized entries (List by parent, 10
// entries) and node aliases (List by the server's ID, 10 entries). Each
// result is the same size at every store size, so the rates should not
// fall as the store grows.
func BenchmarkEntries(b *testing.B) {
	for _, o := range storekinds.All {
		b.Run(o.Name, func(b *testing.B) {
			st := o.Open(b)
			have := 0
			for _, n := range []int{1_000, 10_000, 100_000} {
				b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) {
					grow(b, st, have, n)
					have = n
					lookups := []struct {
						name   string
						filter func(r *rand.Rand) store.EntryFilter
						want   int
					}{
						{"svid", func(r *rand.Rand) store.EntryFilter {
							return store.EntryFilter{SPIFFEID: fmt.Sprint("spiffe://td/w/", r.IntN(n))}
						}, 1},
						{"agent", func(r *rand.Rand) store.EntryFilter {
							return store.EntryFilter{ParentID: fmt.Sprint("spiffe://td/agent/", 1+r.IntN(n/entriesPerAgent-1))}
						}, entriesPerAgent},
						{"node-alias", func(*rand.Rand) store.EntryFilter { return store.EntryFilter{ParentID: serverID} }, nodeAliases},
					}
					for _, l := range lookups {
						b.Run(l.name, func(b *testing.B) {
							ctx := context.Background()
							b.RunParallel(func(pb *testing.PB) {
								r := rand.New(rand.NewPCG(rand.Uint64(), 0))
								for pb.Next() {
									list, err := st.Entries().List(ctx, l.filter(r))
									if err != nil || len(list) != l.want || len(list[0].Selectors) != 2 {
										b.Fatalf("%d entries, %v", len(list), err)
									}
								}
							})
							b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
						})
					}
				})
			}
		})
	}
}
