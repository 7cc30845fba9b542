package syncbuf

import (
	"fmt"
	"sync"
	"testing"
)

// TestConcurrentWritesAndRecords writes JSON lines and other lines from
// several goroutines while reading (run with -race): every line arrives
// whole, and Records keeps exactly the JSON objects.
func TestConcurrentWritesAndRecords(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				fmt.Fprintf(&b, "{\"g\":%d,\"i\":%d}\nnot json %d\n", g, i, i)
				_ = b.String()
			}
		})
	}
	wg.Wait()
	recs := b.Records()
	if len(recs) != 8*50 {
		t.Fatalf("%d records, want %d", len(recs), 8*50)
	}
	seen := map[string]bool{}
	for _, r := range recs {
		seen[fmt.Sprint(r["g"], "/", r["i"])] = true
	}
	if len(seen) != 8*50 {
		t.Fatalf("%d distinct records, want %d", len(seen), 8*50)
	}
}
