package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/postgres/pgtest"
	"github.com/trustgate/trustgate/store/storetest"
)

// freshSchema returns Options on an empty schema of the test's own.
func freshSchema(tb testing.TB) Options {
	tb.Helper()
	return Options{DSN: pgtest.Schema(tb)}
}

func openT(tb testing.TB, opts Options) *DB {
	tb.Helper()
	db, err := Open(context.Background(), opts)
	if err != nil {
		tb.Fatal(err)
	}
	return db
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openT(t, freshSchema(t))
	})
}

// TestConcurrentOpenOnEmptySchema starts several replicas at once on an
// empty schema, several times: every one must come up, and the schema must
// be migrated once, to the newest version.
func TestConcurrentOpenOnEmptySchema(t *testing.T) {
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		opts := freshSchema(t)
		const replicas = 4
		dbs := make([]*DB, replicas)
		errs := make([]error, replicas)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range replicas {
			wg.Go(func() {
				<-start
				dbs[i], errs[i] = Open(context.Background(), opts)
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: replica %d did not come up: %v", round, i, err)
			}
			defer dbs[i].Close()
		}
		var versions []int
		rows, err := dbs[0].pool.Query(context.Background(), `SELECT version FROM schema_version`)
		if err != nil {
			t.Fatal(err)
		}
		versions, err = pgx.CollectRows(rows, pgx.RowTo[int])
		if err != nil || len(versions) != 1 || versions[0] != len(ms) {
			t.Fatalf("round %d: schema_version rows %v (%v), want exactly [%d]", round, versions, err, len(ms))
		}
		// Every replica works on the one schema.
		for i, db := range dbs {
			if err := db.Resources().Put(context.Background(), store.Resource{Path: fmt.Sprint("r", i), Sealed: []byte("x")}); err != nil {
				t.Fatalf("replica %d: %v", i, err)
			}
		}
		if list, _ := dbs[0].Resources().List(context.Background(), "r"); len(list) != replicas {
			t.Fatalf("round %d: replicas do not share the schema: %v", round, list)
		}
	}
}

// TestSingleUseAcrossReplicas races goroutines on two pools (two replicas)
// for the same join tokens and nonces: each must be used exactly once.
func TestSingleUseAcrossReplicas(t *testing.T) {
	opts := freshSchema(t)
	a, b := openT(t, opts), openT(t, opts)
	defer a.Close()
	defer b.Close()
	replicas := []*DB{a, b}
	ctx := context.Background()
	now := time.Now()
	const values, racers = 100, 8
	for i := range values {
		if err := a.JoinTokens().Create(ctx, store.JoinToken{ID: fmt.Sprint("t", i), ExpiresAt: now.Add(time.Hour), CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
		if err := b.Sessions().Create(ctx, store.Session{ID: fmt.Sprint("s", i), TEE: "sample", Nonce: "n", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	tokenUses := make([]atomic.Int32, values)
	nonceUses := make([]atomic.Int32, values)
	var wg sync.WaitGroup
	for i := range values {
		for r := range racers {
			db := replicas[r%2]
			wg.Go(func() {
				_, err := db.JoinTokens().Consume(ctx, fmt.Sprint("t", i))
				switch {
				case err == nil:
					tokenUses[i].Add(1)
				case !errors.Is(err, store.ErrNotFound):
					t.Errorf("consume token: %v", err)
				}
			})
			wg.Go(func() {
				v, err := db.Sessions().ConsumeNonce(ctx, fmt.Sprint("s", i), "n", now)
				switch {
				case err == nil && v.NonceUsed:
					nonceUses[i].Add(1)
				case !errors.Is(err, store.ErrConsumed):
					t.Errorf("consume nonce: %+v %v", v, err)
				}
			})
		}
	}
	wg.Wait()
	for i := range values {
		if n := tokenUses[i].Load(); n != 1 {
			t.Errorf("join token %d used %d times", i, n)
		}
		if n := nonceUses[i].Load(); n != 1 {
			t.Errorf("nonce %d used %d times", i, n)
		}
	}
}

// TestMigrateFromOldSchema builds a schema at version 1 with data in it,
// then opens it with the current binary: the data must survive and the
// newer tables must work.
func TestMigrateFromOldSchema(t *testing.T) {
	ctx := context.Background()
	opts := freshSchema(t)
	old, err := open(ctx, opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Entries().Create(ctx, store.Entry{ID: "e", SPIFFEID: "spiffe://td/a", ParentID: "spiffe://td/p",
		Selectors: []store.Selector{{Type: "t", Value: "v"}}}); err != nil {
		t.Fatal(err)
	}
	if err := old.Resources().Put(ctx, store.Resource{Path: "a/b/c", Sealed: []byte("x")}); err == nil {
		t.Fatal("version-1 schema already has resources: the test no longer tests a migration")
	}
	old.Close()

	db := openT(t, opts)
	defer db.Close()
	e, err := db.Entries().Get(ctx, "e")
	if err != nil || e.SPIFFEID != "spiffe://td/a" || len(e.Selectors) != 1 {
		t.Fatalf("entry lost in migration: %+v %v", e, err)
	}
	if err := db.Resources().Put(ctx, store.Resource{Path: "a/b/c", Sealed: []byte("x")}); err != nil {
		t.Fatalf("new table after migration: %v", err)
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	opts := freshSchema(t)
	db := openT(t, opts)
	if _, err := db.pool.Exec(ctx, `UPDATE schema_version SET version = 999`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(ctx, opts); err == nil || !strings.Contains(err.Error(), "upgrade trustgate") {
		t.Fatalf("a schema from a newer binary was opened: %v", err)
	}
}

// TestMigrationIgnoresStatementTimeout opens a fresh schema with a
// statement timeout far shorter than the wait for another replica's
// migration (held here for 400 ms): Open must still succeed, and the
// timeout must then hold again for the store's statements.
func TestMigrationIgnoresStatementTimeout(t *testing.T) {
	ctx := context.Background()
	opts := freshSchema(t)
	opts.StatementTimeout = 50 * time.Millisecond
	other, err := pgx.Connect(ctx, opts.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	if _, err := other.Exec(ctx, migrateLock); err != nil {
		t.Fatal(err)
	}
	const hold = 400 * time.Millisecond
	start := time.Now()
	unlocked := make(chan error, 1)
	go func() {
		time.Sleep(hold)
		_, err := other.Exec(ctx, migrateUnlock)
		unlocked <- err
	}()
	db := openT(t, opts)
	defer db.Close()
	if err := <-unlocked; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < hold {
		t.Fatalf("Open returned after %s, before the other replica's migration lock was released", d)
	}
	for range 3 { // every connection of the pool
		var timeout string
		if err := db.pool.QueryRow(ctx, `SHOW statement_timeout`).Scan(&timeout); err != nil || timeout != "50ms" {
			t.Fatalf("statement_timeout after migrating = %q (%v), want 50ms", timeout, err)
		}
	}
}

// TestSessionSettings checks that the store's connections run with JIT
// off: with stale statistics, a lookup's estimated cost can cross
// jit_above_cost, and compiling it took 100 ms per lookup at 100k entries.
func TestSessionSettings(t *testing.T) {
	db := openT(t, freshSchema(t))
	defer db.Close()
	var jit string
	if err := db.pool.QueryRow(context.Background(), `SHOW jit`).Scan(&jit); err != nil || jit != "off" {
		t.Fatalf("jit = %q (%v), want off", jit, err)
	}
}

// TestStatementTimeout checks that the configured timeout reaches the
// server and stops a statement that runs too long.
func TestStatementTimeout(t *testing.T) {
	opts := freshSchema(t)
	opts.StatementTimeout = 50 * time.Millisecond
	db := openT(t, opts)
	defer db.Close()
	_, err := db.pool.Exec(context.Background(), `SELECT pg_sleep(2)`)
	if err == nil || !strings.Contains(err.Error(), "statement timeout") {
		t.Fatalf("a 2 s statement under a 50 ms timeout: %v", err)
	}
}
