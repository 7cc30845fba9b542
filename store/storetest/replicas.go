package storetest

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustgate/trustgate/store"
)

// OpenPair returns two stores on the same data, as two replicas see it (or
// the same store twice, for a store that serves one process). The suite
// closes neither.
type OpenPair func(t *testing.T) (a, b store.Store)

// RunReplicas checks what servers sharing a store agree on: changes
// announced on one reach the other within a second, Locks.Do excludes
// across them, and a lease is held by one and moves when its holder stops.
func RunReplicas(t *testing.T, open OpenPair) {
	t.Run("Changes", func(t *testing.T) { a, b := open(t); testChanges(t, a, b) })
	t.Run("LockExcludes", func(t *testing.T) { a, b := open(t); testLockExcludes(t, a, b) })
	t.Run("LeaseMoves", func(t *testing.T) { a, b := open(t); testLeaseMoves(t, a, b) })
	t.Run("Ping", func(t *testing.T) {
		a, _ := open(t)
		if err := a.Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

// waitChange subscribes to topic on s and returns a channel of what arrives.
func waitChange(t *testing.T, s store.Store, topic string) <-chan store.Change {
	ch := make(chan store.Change, 64)
	cancel := s.Changes().Subscribe(topic, func(c store.Change) {
		select {
		case ch <- c:
		default:
		}
	})
	t.Cleanup(cancel)
	return ch
}

func expectChange(t *testing.T, ch <-chan store.Change, topic, payload string) {
	t.Helper()
	deadline := time.After(time.Second)
	for {
		select {
		case c := <-ch:
			if c.Reset {
				continue
			}
			if c.Topic != topic || c.Payload != payload {
				t.Fatalf("change %+v, want topic %q payload %q", c, topic, payload)
			}
			return
		case <-deadline:
			t.Fatalf("no %s change within 1s", topic)
		}
	}
}

func testChanges(t *testing.T, a, b store.Store) {
	ctx := context.Background()
	entries, keys, policies, agents := waitChange(t, b, store.TopicEntries), waitChange(t, b, store.TopicKeys),
		waitChange(t, b, store.TopicPolicies), waitChange(t, b, "agents")
	// Let a listener that connects in the background start listening.
	time.Sleep(200 * time.Millisecond)
	e, err := a.Entries().Create(ctx, store.Entry{SPIFFEID: "spiffe://td/w", ParentID: "spiffe://td/n"})
	if err != nil {
		t.Fatal(err)
	}
	expectChange(t, entries, store.TopicEntries, "")
	if err := a.Entries().Delete(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	expectChange(t, entries, store.TopicEntries, "")
	if err := a.Keys().Create(ctx, store.Key{Kind: "k", ID: "1", Sealed: []byte{1}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, keys, store.TopicKeys, "")
	if _, err := a.Policies().Put(ctx, "p", "text"); err != nil {
		t.Fatal(err)
	}
	expectChange(t, policies, store.TopicPolicies, "")
	if err := a.Changes().Notify(ctx, "agents", "spiffe://td/agent/1"); err != nil {
		t.Fatal(err)
	}
	expectChange(t, agents, "agents", "spiffe://td/agent/1")
	// A subscriber of another topic hears nothing of these.
	select {
	case c := <-keys:
		if !c.Reset {
			t.Fatalf("keys subscriber got %+v", c)
		}
	default:
	}
}

func testLockExcludes(t *testing.T, a, b store.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var inside, maxInside, runs atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			for range 5 {
				err := s.Locks().Do(ctx, "rotation", func(context.Context) error {
					n := inside.Add(1)
					for {
						m := maxInside.Load()
						if n <= m || maxInside.CompareAndSwap(m, n) {
							break
						}
					}
					time.Sleep(2 * time.Millisecond)
					inside.Add(-1)
					runs.Add(1)
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if maxInside.Load() != 1 || runs.Load() != 40 {
		t.Fatalf("%d runs, up to %d at once under one lock; want 40, 1", runs.Load(), maxInside.Load())
	}
	// Another name is not excluded by the first.
	err := a.Locks().Do(ctx, "one", func(ctx context.Context) error {
		return b.Locks().Do(ctx, "two", func(context.Context) error { return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testLeaseMoves(t *testing.T, a, b store.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if a == b {
		// One process: it always leads.
		ran := false
		a.Locks().Lead(ctx, "sweep", func(context.Context) { ran = true })
		if !ran {
			t.Fatal("Lead did not run fn")
		}
		return
	}
	var holders atomic.Int32
	var maxHolders atomic.Int32
	led := make(chan string, 4)
	lead := func(ctx context.Context, s store.Store, who string) {
		s.Locks().Lead(ctx, "sweep", func(ctx context.Context) {
			n := holders.Add(1)
			if n > maxHolders.Load() {
				maxHolders.Store(n)
			}
			led <- who
			<-ctx.Done()
			holders.Add(-1)
		})
	}
	actx, stopA := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { lead(actx, a, "a") })
	if who := <-led; who != "a" {
		t.Fatalf("%s led first", who)
	}
	wg.Go(func() { lead(ctx, b, "b") })
	select {
	case who := <-led:
		t.Fatalf("%s leads while a holds the lease", who)
	case <-time.After(2500 * time.Millisecond):
	}
	stopA()
	select {
	case who := <-led:
		if who != "b" {
			t.Fatalf("%s took over", who)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nobody took the lease over within 5s of its holder stopping")
	}
	cancel()
	wg.Wait()
	if maxHolders.Load() != 1 {
		t.Fatalf("%d holders at once", maxHolders.Load())
	}
}
