package postgres

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/trustgate/trustgate/store"
)

// countingConn counts the client's writes to the server: pgx sends each
// request (all of one statement's messages) in one write and then waits for
// the answer, so writes are round trips.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// TestRoundTripsPerOperation counts the network round trips each store
// method on the attestation (RCAR, join token, SVID) and resource GET paths
// makes once its statement is prepared on the connection: one each.
func TestRoundTripsPerOperation(t *testing.T) {
	opts := freshSchema(t)
	db := openT(t, opts)
	defer db.Close()
	cfg, err := opts.poolConfig()
	if err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int64
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{c, &writes}, nil
	}
	cfg.MinConns, cfg.MaxConns = 1, 1
	// An idle connection is pinged before use after a second; under load
	// none is idle, so leave the ping out of the count.
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	c := &DB{pool: pool}
	ctx := context.Background()
	now := time.Now()
	if _, err := c.Entries().Create(ctx, store.Entry{ID: "e", SPIFFEID: "spiffe://td/w", ParentID: "spiffe://td/server",
		Selectors: []store.Selector{{Type: "t", Value: "v"}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Resources().Put(ctx, store.Resource{Path: "default/key/1", Sealed: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Policies().Put(ctx, "resource", "package policy"); err != nil {
		t.Fatal(err)
	}
	ops := []struct {
		name string
		fn   func(id string) error
	}{
		{"Sessions.Create", func(id string) error {
			return c.Sessions().Create(ctx, store.Session{ID: id, TEE: "sample", Nonce: "n", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
		}},
		{"Sessions.ConsumeNonce", func(id string) error { _, err := c.Sessions().ConsumeNonce(ctx, id, "n", now); return err }},
		{"Sessions.SetClaims", func(id string) error { return c.Sessions().SetClaims(ctx, id, []byte("{}")) }},
		{"Sessions.Get", func(id string) error { _, err := c.Sessions().Get(ctx, id); return err }},
		{"JoinTokens.Create", func(id string) error {
			return c.JoinTokens().Create(ctx, store.JoinToken{ID: id, ExpiresAt: now.Add(time.Hour), CreatedAt: now})
		}},
		{"JoinTokens.Consume", func(id string) error { _, err := c.JoinTokens().Consume(ctx, id); return err }},
		{"Entries.List(parent)", func(string) error {
			_, err := c.Entries().List(ctx, store.EntryFilter{ParentID: "spiffe://td/server"})
			return err
		}},
		{"Entries.List(spiffe_id)", func(string) error {
			_, err := c.Entries().List(ctx, store.EntryFilter{SPIFFEID: "spiffe://td/w"})
			return err
		}},
		{"Entries.Create", func(id string) error {
			_, err := c.Entries().Create(ctx, store.Entry{ID: id, SPIFFEID: "spiffe://td/" + id, ParentID: "p", Selectors: []store.Selector{{Type: "a", Value: "b"}, {Type: "c", Value: "d"}}})
			return err
		}},
		{"Resources.Get", func(string) error { _, err := c.Resources().Get(ctx, "default/key/1"); return err }},
		{"Policies.Get", func(string) error { _, err := c.Policies().Get(ctx, "resource"); return err }},
		{"Keys.List", func(string) error { _, err := c.Keys().List(ctx, "token-signing"); return err }},
	}
	// Prepare every statement on the connection (the first use of each
	// costs one more round trip), then count.
	ids := []string{"x1", "x2", "x3"}
	for round, id := range ids {
		for _, op := range ops {
			before := writes.Load()
			if err := op.fn(id); err != nil {
				t.Fatalf("%s: %v", op.name, err)
			}
			n := writes.Load() - before
			if round == len(ids)-1 {
				t.Logf("%-24s %d round trip(s)", op.name, n)
				if n != 1 {
					t.Errorf("%s: %d round trips, want 1", op.name, n)
				}
			}
		}
	}
}
