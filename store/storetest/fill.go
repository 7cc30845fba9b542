package storetest

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/trustgate/trustgate/store"
)

// Fill creates the entries mk(from) to mk(n-1) in st from 16 concurrent
// writers, for benchmarks that grow one store through several sizes.
func Fill(tb testing.TB, st store.Store, from, n int, mk func(i int) store.Entry) {
	tb.Helper()
	ctx := context.Background()
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				if _, err := st.Entries().Create(ctx, mk(int(i))); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if tb.Failed() {
		tb.FailNow()
	}
}
