package agentapi

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/sqlite"
)

// benchAuthorized measures the authorized-entries computation of one agent
// (10 entries of its own, 2 through a node alias) in a SQLite store holding
// total entries, the rest under other agents: with indexed lookups its cost
// does not grow with total.
func benchAuthorized(b *testing.B, total int) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "b.db"), sqlite.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	const server = "spiffe://td/spire/server"
	agent := store.Agent{SPIFFEID: "spiffe://td/spire/agent/me", Selectors: []store.Selector{{Type: "k8s_psat", Value: "cluster:c1"}}}
	mk := func(id, parent string, sel store.Selector) {
		if _, err := st.Entries().Create(ctx, store.Entry{SPIFFEID: id, ParentID: parent, Selectors: []store.Selector{sel}}); err != nil {
			b.Fatal(err)
		}
	}
	uid := store.Selector{Type: "unix", Value: "uid:1000"}
	mk("spiffe://td/cluster/c1", server, store.Selector{Type: "k8s_psat", Value: "cluster:c1"})
	mk("spiffe://td/cluster/c2", server, store.Selector{Type: "k8s_psat", Value: "cluster:c2"})
	for i := range 10 {
		mk(fmt.Sprint("spiffe://td/mine/", i), agent.SPIFFEID, uid)
	}
	for i := range 2 {
		mk(fmt.Sprint("spiffe://td/alias/", i), "spiffe://td/cluster/c1", uid)
	}
	for i := range total - 14 {
		mk(fmt.Sprint("spiffe://td/other/", i), fmt.Sprint("spiffe://td/spire/agent/n", i%1000), uid)
	}
	a := &API{store: st, serverID: server}
	b.ResetTimer()
	for b.Loop() {
		list, err := a.authorized(ctx, agent)
		if err != nil || len(list) != 12 {
			b.Fatalf("%d entries, %v", len(list), err)
		}
	}
}

// BenchmarkAuthorizedEntries1k and 100k give the ratio that shows the
// agent's entry fetch is indexed (issue 13).
func BenchmarkAuthorizedEntries1k(b *testing.B)   { benchAuthorized(b, 1_000) }
func BenchmarkAuthorizedEntries100k(b *testing.B) { benchAuthorized(b, 100_000) }
