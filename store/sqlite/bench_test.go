package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustgate/trustgate/store"
)

// BenchmarkSessionCycle is one RCAR attestation's store traffic: create a
// session, then consume its nonce, from parallel callers.
func BenchmarkSessionCycle(b *testing.B) {
	db, err := Open(context.Background(), filepath.Join(b.TempDir(), "b.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	now := time.Now()
	var n atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprint("s", n.Add(1))
			if err := db.Sessions().Create(ctx, store.Session{ID: id, TEE: "sample", Nonce: "n", CreatedAt: now, ExpiresAt: now.Add(time.Minute)}); err != nil {
				b.Fatal(err)
			}
			if _, err := db.Sessions().ConsumeNonce(ctx, id, "n", now); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cycles/s")
}
