// Package storekinds opens each kind of store, for benchmarks that run the
// same work on SQLite beside PostgreSQL: SQLite in a temporary directory,
// PostgreSQL in a fresh schema of the test server (pgtest; skipped when
// pgtest.Env is unset).
package storekinds

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/postgres"
	"github.com/trustgate/trustgate/store/postgres/pgtest"
	"github.com/trustgate/trustgate/store/sqlite"
)

// Kind is one kind of store.
type Kind struct {
	// Name names the kind in sub-benchmark names: "sqlite" or "postgres".
	Name string
	// Replicas makes a fresh, empty database and returns a function that
	// opens a store on it, closed when tb ends; every call opens another
	// replica of the same database.
	Replicas func(tb testing.TB) func() store.Store
}

// Open opens one store on a fresh, empty database, closed when tb ends.
func (k Kind) Open(tb testing.TB) store.Store { return k.Replicas(tb)() }

// All are SQLite and PostgreSQL, in that order.
var All = []Kind{
	{"sqlite", func(tb testing.TB) func() store.Store {
		path := filepath.Join(tb.TempDir(), "s.db")
		return func() store.Store {
			db, err := sqlite.Open(context.Background(), path, sqlite.Options{})
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { db.Close() })
			return db
		}
	}},
	{"postgres", func(tb testing.TB) func() store.Store {
		dsn := pgtest.Schema(tb)
		return func() store.Store {
			db, err := postgres.Open(context.Background(), postgres.Options{DSN: dsn})
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { db.Close() })
			return db
		}
	}},
}

// Postgres is the PostgreSQL kind.
var Postgres = All[1]
