package svid_test

import (
	"context"
	"testing"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/postgres"
	"github.com/trustgate/trustgate/store/postgres/pgtest"
)

// benchStores opens an empty store of each kind; PostgreSQL is skipped
// when pgtest.Env is unset.
var benchStores = []struct {
	name string
	open func(b *testing.B) store.Store
}{
	{"sqlite", func(b *testing.B) store.Store { return openStore(b) }},
	{"postgres", func(b *testing.B) store.Store {
		st, err := postgres.Open(context.Background(), postgres.Options{DSN: pgtest.Schema(b)})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		return st
	}},
}
