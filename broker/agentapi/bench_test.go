package agentapi

import (
	"context"
	"fmt"
	"testing"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/storekinds"
	"github.com/trustgate/trustgate/store/storetest"
)

// BenchmarkAuthorizedEntries measures the authorized-entries computation of
// one agent (10 entries of its own, 2 through a node alias) as one store
// grows to 1k, 10k and 100k entries, the rest under 1,000 other agents:
// with indexed lookups its rate does not fall with the store's size
// (issues 13 and 15).
func BenchmarkAuthorizedEntries(b *testing.B) {
	const server = "spiffe://td/spire/server"
	ag := store.Agent{SPIFFEID: "spiffe://td/spire/agent/me", Selectors: []store.Selector{{Type: "k8s_psat", Value: "cluster:c1"}}}
	uid := store.Selector{Type: "unix", Value: "uid:1000"}
	mk := func(i int) store.Entry {
		switch {
		case i == 0:
			return store.Entry{SPIFFEID: "spiffe://td/cluster/c1", ParentID: server, Selectors: []store.Selector{{Type: "k8s_psat", Value: "cluster:c1"}}}
		case i == 1:
			return store.Entry{SPIFFEID: "spiffe://td/cluster/c2", ParentID: server, Selectors: []store.Selector{{Type: "k8s_psat", Value: "cluster:c2"}}}
		case i < 12:
			return store.Entry{SPIFFEID: fmt.Sprint("spiffe://td/mine/", i), ParentID: ag.SPIFFEID, Selectors: []store.Selector{uid}}
		case i < 14:
			return store.Entry{SPIFFEID: fmt.Sprint("spiffe://td/alias/", i), ParentID: "spiffe://td/cluster/c1", Selectors: []store.Selector{uid}}
		}
		return store.Entry{SPIFFEID: fmt.Sprint("spiffe://td/other/", i), ParentID: fmt.Sprint("spiffe://td/spire/agent/n", i%1000), Selectors: []store.Selector{uid}}
	}
	for _, s := range storekinds.All {
		b.Run(s.Name, func(b *testing.B) {
			st := s.Open(b)
			a := &API{store: st, serverID: server}
			ctx := context.Background()
			have := 0
			for _, n := range []int{1_000, 10_000, 100_000} {
				b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) {
					storetest.Fill(b, st, have, n, mk)
					have = n
					b.ResetTimer()
					for b.Loop() {
						list, err := a.authorized(ctx, ag)
						if err != nil || len(list) != 12 {
							b.Fatalf("%d entries, %v", len(list), err)
						}
					}
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fetches/s")
				})
			}
		})
	}
}
