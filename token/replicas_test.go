package token

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/postgres"
	"github.com/trustgate/trustgate/store/postgres/pgtest"
)

// gate holds each List until n callers list at once (or a short while has
// passed), so that replicas that could race for the first key do.
type gate struct {
	mu      sync.Mutex
	waiting int
	n       int
	open    chan struct{}
}

// TestReplicasNeverSplit opens three Authorities at once on one empty
// PostgreSQL schema, each with its own connection pool, as three replicas
// starting together. They must create one token CA and one signing key,
// publish the same JWKS and roots, and each must sign only with a key the
// others publish. Without Options.Locks each creates its own.
func TestReplicasNeverSplit(t *testing.T) {
	dsn := pgtest.Schema(t)
	ctx := context.Background()
	const n = 3
	g := &gate{n: n, open: make(chan struct{})}
	auths := make([]*Authority, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		db, err := postgres.Open(ctx, postgres.Options{DSN: dsn})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		wg.Go(func() {
			// Every replica's List passes the shared gate together.
			shared := &sharedGate{Keys: db.Keys(), g: g}
			auths[i], errs[i] = Open(ctx, Options{Keys: shared, Sealer: newSealer(t, 7), Locks: db.Locks(), Changes: db.Changes(),
				Propagation: 300 * time.Millisecond, KeyLifetime: time.Hour})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	db, err := postgres.Open(ctx, postgres.Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, kind := range []string{KindCA, KindSigning} {
		keys, err := db.Keys().List(ctx, kind)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 {
			t.Fatalf("%d %s keys stored by %d replicas starting together, want 1", len(keys), kind, n)
		}
		if kind == KindSigning {
			if d := keys[0].NotBefore.Sub(keys[0].CreatedAt); d < 300*time.Millisecond {
				t.Fatalf("the first key signs %v after it was stored, want at least the propagation delay", d)
			}
		}
	}
	for i, a := range auths {
		if string(a.JWKS()) != string(auths[0].JWKS()) || string(a.RootCertificates()) != string(auths[0].RootCertificates()) {
			t.Fatalf("replica %d publishes another JWKS or token CA than replica 0", i)
		}
		tok, err := a.Sign(map[string]any{"iss": "tg", "sub": "x", "exp": time.Now().Add(time.Minute).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		for j, b := range auths {
			if _, err := b.Verify(tok, "tg"); err != nil {
				t.Fatalf("replica %d's token does not verify on replica %d: %v", i, j, err)
			}
		}
	}
}

// sharedGate routes List through one gate shared by every replica.
type sharedGate struct {
	store.Keys
	g *gate
}

func (s *sharedGate) List(ctx context.Context, kind string) ([]store.Key, error) {
	s.g.mu.Lock()
	s.g.waiting++
	if s.g.waiting == s.g.n {
		close(s.g.open)
	}
	open := s.g.open
	s.g.mu.Unlock()
	select {
	case <-open:
	case <-time.After(150 * time.Millisecond):
	}
	return s.Keys.List(ctx, kind)
}

// TestReplicasRotateTogether runs two Authorities on one PostgreSQL schema
// through several rotations on a shared clock. Only replica 0 rotates on
// its own; replica 1 learns of new keys only through change notifications
// (Run). Within a second of every new key, both publish the same JWKS, and
// at every step a token either signs verifies on the other.
func TestReplicasRotateTogether(t *testing.T) {
	dsn := pgtest.Schema(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := &clock{t: time.Now()}
	var auths [2]*Authority
	for i := range auths {
		db, err := postgres.Open(ctx, postgres.Options{DSN: dsn})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		auths[i], err = Open(ctx, Options{Keys: db.Keys(), Sealer: newSealer(t, 7), Locks: db.Locks(), Changes: db.Changes(),
			KeyLifetime: time.Hour, Prepublish: 15 * time.Minute, MaxTokenTTL: 10 * time.Minute, Now: c.Now})
		if err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() { defer close(done); auths[1].Run(ctx) }()
	defer func() { cancel(); <-done }()
	// Let replica 1 listen before the first change.
	time.Sleep(300 * time.Millisecond)
	crossVerify := func(step int) {
		t.Helper()
		for i, a := range auths {
			tok, err := a.Sign(map[string]any{"iss": "tg", "exp": c.Now().Add(time.Minute).Unix()})
			if err != nil {
				t.Fatalf("step %d: replica %d: %v", step, i, err)
			}
			if _, err := auths[1-i].Verify(tok, "tg"); err != nil {
				t.Fatalf("step %d: replica %d's token fails on replica %d: %v", step, i, 1-i, err)
			}
		}
	}
	rotations := 0
	for step := range 16 {
		c.Advance(10 * time.Minute)
		before := string(auths[0].JWKS())
		if err := auths[0].Rotate(ctx); err != nil {
			t.Fatal(err)
		}
		if string(auths[0].JWKS()) != before {
			rotations++
			deadline := time.Now().Add(time.Second)
			for string(auths[1].JWKS()) != string(auths[0].JWKS()) {
				if time.Now().After(deadline) {
					t.Fatalf("step %d: replica 1 does not publish replica 0's keys a second after they changed", step)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		crossVerify(step)
	}
	if rotations < 4 {
		t.Fatalf("%d key set changes in 160 minutes of 1-hour keys", rotations)
	}
}
