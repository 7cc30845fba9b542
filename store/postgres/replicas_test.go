package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/storetest"
)

// TestReplicas runs the replica suite on two DBs sharing one schema, as two
// servers would.
func TestReplicas(t *testing.T) {
	storetest.RunReplicas(t, func(t *testing.T) (store.Store, store.Store) {
		opts := freshSchema(t)
		a, b := openT(t, opts), openT(t, opts)
		t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
		return a, b
	})
}

// TestChangesResetOnReconnect kills the listening session from the server
// side: subscribers get a Reset, and notifications flow again afterwards
// without anyone reopening the store.
func TestChangesResetOnReconnect(t *testing.T) {
	opts := freshSchema(t)
	a, b := openT(t, opts), openT(t, opts)
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	got := make(chan store.Change, 64)
	b.Changes().Subscribe(store.TopicEntries, func(c store.Change) { got <- c })
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Second)
	for !b.notify.listening.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := a.pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND datname = current_database() AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	sawReset := false
	for !sawReset {
		select {
		case c := <-got:
			sawReset = c.Reset
		case <-time.After(5 * time.Second):
			t.Fatal("no Reset after the listening session was killed")
		}
	}
	// Wait for it to listen again, then a write must arrive.
	deadline = time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := a.Entries().Create(ctx, store.Entry{SPIFFEID: "spiffe://td/x", ParentID: "spiffe://td/p"}); err != nil {
			t.Fatal(err)
		}
		select {
		case c := <-got:
			if !c.Reset && c.Topic == store.TopicEntries {
				return
			}
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Fatal("no notification after reconnecting")
}

// TestLocksOnAOneConnectionPool holds two locks at once, each around work
// on the pool, with a pool of one connection: the locks' sessions are not
// the pool's, so neither starves.
func TestLocksOnAOneConnectionPool(t *testing.T) {
	opts := freshSchema(t)
	opts.MaxConns, opts.MinConns = 1, 1
	db := openT(t, opts)
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	both := make(chan struct{})
	errs := make(chan error, 2)
	for _, name := range []string{"a", "b"} {
		go func() {
			errs <- db.Locks().Do(ctx, name, func(ctx context.Context) error {
				both <- struct{}{}
				_, err := db.Policies().Put(ctx, name, "x")
				return err
			})
		}()
	}
	<-both
	<-both
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
