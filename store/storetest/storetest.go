// Package storetest is the conformance suite for store.Store
// implementations. An implementation's tests call Run with a function that
// opens a fresh, empty store.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustgate/trustgate/store"
)

// Open returns a fresh, empty store; the suite closes it.
type Open func(t *testing.T) store.Store

// Run runs every conformance test against stores made by open.
func Run(t *testing.T, open Open) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"Sessions", testSessions},
		{"NonceSingleUseUnderConcurrency", testNonceConcurrency},
		{"JoinTokens", testJoinTokens},
		{"JoinTokenSingleUseUnderConcurrency", testJoinTokenConcurrency},
		{"Entries", testEntries},
		{"EntriesRevision", testEntriesRevision},
		{"Agents", testAgents},
		{"AgentRenewUnderConcurrency", testAgentRenewConcurrency},
		{"SpentTokens", testSpentTokens},
		{"Resources", testResources},
		{"Keys", testKeys},
		{"Policies", testPolicies},
		{"MixedConcurrencyFinishes", testMixedConcurrency},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)

func testSessions(t *testing.T, s store.Store) {
	ctx := context.Background()
	ss := s.Sessions()
	in := store.Session{ID: "s1", TEE: "sample", Nonce: "n1", ExtraParams: []byte(`{"a":1}`), CreatedAt: t0, ExpiresAt: t0.Add(time.Minute)}
	if err := ss.Create(ctx, in); err != nil {
		t.Fatal(err)
	}
	if err := ss.Create(ctx, in); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("duplicate create: want ErrConflict, got %v", err)
	}
	got, err := ss.Get(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if got.TEE != "sample" || got.Nonce != "n1" || string(got.ExtraParams) != `{"a":1}` || !got.CreatedAt.Equal(t0) || !got.ExpiresAt.Equal(in.ExpiresAt) || got.NonceUsed {
		t.Fatalf("round trip: %+v", got)
	}
	if _, err := ss.Get(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if err := ss.SetClaims(ctx, "s1", []byte("c")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("claims before attestation: want ErrNotFound, got %v", err)
	}
	if _, err := ss.ConsumeNonce(ctx, "s1", "wrong", t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("wrong nonce: %v", err)
	}
	if _, err := ss.ConsumeNonce(ctx, "s1", "n1", t0.Add(time.Minute)); !errors.Is(err, store.ErrExpired) {
		t.Fatalf("expired nonce: %v", err)
	}
	v, err := ss.ConsumeNonce(ctx, "s1", "n1", t0.Add(time.Second))
	if err != nil || !v.NonceUsed || v.ID != "s1" {
		t.Fatalf("consume: %+v %v", v, err)
	}
	if _, err := ss.ConsumeNonce(ctx, "s1", "n1", t0.Add(time.Second)); !errors.Is(err, store.ErrConsumed) {
		t.Fatalf("second consume: %v", err)
	}
	if err := ss.SetClaims(ctx, "s1", []byte(`{"sub":"x"}`)); err != nil {
		t.Fatal(err)
	}
	if got, _ := ss.Get(ctx, "s1"); string(got.Claims) != `{"sub":"x"}` {
		t.Fatalf("claims: %q", got.Claims)
	}
	if err := ss.Create(ctx, store.Session{ID: "s2", TEE: "sample", Nonce: "n2", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	n, err := ss.DeleteExpired(ctx, t0.Add(2*time.Minute))
	if err != nil || n != 1 {
		t.Fatalf("delete expired: %d %v", n, err)
	}
	if _, err := ss.Get(ctx, "s1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("expired session survived")
	}
	if _, err := ss.Get(ctx, "s2"); err != nil {
		t.Fatal("live session deleted")
	}
}

func testNonceConcurrency(t *testing.T, s store.Store) {
	ctx := context.Background()
	const sessions, racers = 20, 8
	for i := range sessions {
		if err := s.Sessions().Create(ctx, store.Session{ID: fmt.Sprint("c", i), TEE: "sample", Nonce: "n", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	var wins atomic.Int64
	var wg sync.WaitGroup
	for i := range sessions {
		for range racers {
			wg.Go(func() {
				_, err := s.Sessions().ConsumeNonce(ctx, fmt.Sprint("c", i), "n", t0)
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, store.ErrConsumed):
					t.Errorf("consume: %v", err)
				}
			})
		}
	}
	wg.Wait()
	if wins.Load() != sessions {
		t.Fatalf("%d nonces consumed successfully, want exactly %d", wins.Load(), sessions)
	}
}

func testJoinTokens(t *testing.T, s store.Store) {
	ctx := context.Background()
	jt := s.JoinTokens()
	a := store.JoinToken{ID: "a", ExpiresAt: t0.Add(time.Hour), SPIFFEID: "spiffe://td/node", CreatedAt: t0}
	if err := jt.Create(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := jt.Create(ctx, a); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("duplicate: %v", err)
	}
	if err := jt.Create(ctx, store.JoinToken{ID: "b", ExpiresAt: t0, CreatedAt: t0.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	list, err := jt.List(ctx)
	if err != nil || len(list) != 2 || list[0].ID != "a" {
		t.Fatalf("list: %+v %v", list, err)
	}
	got, err := jt.Consume(ctx, "a")
	if err != nil || got.SPIFFEID != a.SPIFFEID || !got.ExpiresAt.Equal(a.ExpiresAt) {
		t.Fatalf("consume: %+v %v", got, err)
	}
	if _, err := jt.Consume(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("reuse: want ErrNotFound, got %v", err)
	}
	// An expired token is still consumed (deleted) and returned: the
	// caller rejects it on expiry, after it is gone.
	if got, err := jt.Consume(ctx, "b"); err != nil || !got.ExpiresAt.Equal(t0) {
		t.Fatalf("expired consume: %+v %v", got, err)
	}
	if list, _ := jt.List(ctx); len(list) != 0 {
		t.Fatalf("tokens left: %+v", list)
	}
}

func testJoinTokenConcurrency(t *testing.T, s store.Store) {
	ctx := context.Background()
	const tokens, racers = 20, 8
	for i := range tokens {
		if err := s.JoinTokens().Create(ctx, store.JoinToken{ID: fmt.Sprint("t", i), ExpiresAt: t0.Add(time.Hour), CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
	}
	var wins atomic.Int64
	var wg sync.WaitGroup
	for i := range tokens {
		for range racers {
			wg.Go(func() {
				_, err := s.JoinTokens().Consume(ctx, fmt.Sprint("t", i))
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, store.ErrNotFound):
					t.Errorf("consume: %v", err)
				}
			})
		}
	}
	wg.Wait()
	if wins.Load() != tokens {
		t.Fatalf("%d consumptions succeeded, want exactly %d", wins.Load(), tokens)
	}
}

func testEntries(t *testing.T, s store.Store) {
	ctx := context.Background()
	es := s.Entries()
	e1, err := es.Create(ctx, store.Entry{
		SPIFFEID: "spiffe://td/web", ParentID: "spiffe://td/node1",
		Selectors:   []store.Selector{{Type: "k8s", Value: "ns:web"}, {Type: "k8s", Value: "sa:web"}},
		X509SVIDTTL: time.Hour, JWTSVIDTTL: 5 * time.Minute, DNSNames: []string{"web.local"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if e1.ID == "" || e1.CreatedAt.IsZero() {
		t.Fatalf("create did not assign ID/time: %+v", e1)
	}
	if _, err := es.Create(ctx, store.Entry{ID: e1.ID, SPIFFEID: "spiffe://td/x", ParentID: "p"}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("duplicate ID: %v", err)
	}
	if _, err := es.Create(ctx, store.Entry{ID: "e2", SPIFFEID: "spiffe://td/db", ParentID: "spiffe://td/node2"}); err != nil {
		t.Fatal(err)
	}
	got, err := es.Get(ctx, e1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.SPIFFEID != e1.SPIFFEID || !slices.Equal(got.Selectors, e1.Selectors) || got.X509SVIDTTL != time.Hour ||
		got.JWTSVIDTTL != 5*time.Minute || !slices.Equal(got.DNSNames, []string{"web.local"}) {
		t.Fatalf("round trip: %+v", got)
	}
	all, err := es.List(ctx, store.EntryFilter{})
	if err != nil || len(all) != 2 {
		t.Fatalf("list all: %d %v", len(all), err)
	}
	byParent, err := es.List(ctx, store.EntryFilter{ParentID: "spiffe://td/node2"})
	if err != nil || len(byParent) != 1 || byParent[0].ID != "e2" || len(byParent[0].Selectors) != 0 {
		t.Fatalf("by parent: %+v %v", byParent, err)
	}
	byID, err := es.List(ctx, store.EntryFilter{SPIFFEID: "spiffe://td/web"})
	if err != nil || len(byID) != 1 || len(byID[0].Selectors) != 2 {
		t.Fatalf("by SPIFFE ID: %+v %v", byID, err)
	}
	if err := es.Delete(ctx, e1.ID); err != nil {
		t.Fatal(err)
	}
	if err := es.Delete(ctx, e1.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := es.Get(ctx, e1.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
}

func testResources(t *testing.T, s store.Store) {
	ctx := context.Background()
	rs := s.Resources()
	for _, p := range []string{"default/key/a", "default/key/b", "other/key/a", "100%_x/k/t"} {
		if err := rs.Put(ctx, store.Resource{Path: p, Sealed: []byte("v1:" + p)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := rs.Put(ctx, store.Resource{Path: "default/key/a", Sealed: []byte("v2")}); err != nil {
		t.Fatal(err)
	}
	got, err := rs.Get(ctx, "default/key/a")
	if err != nil || string(got.Sealed) != "v2" || got.UpdatedAt.IsZero() {
		t.Fatalf("get: %+v %v", got, err)
	}
	list, err := rs.List(ctx, "default/")
	if err != nil || !slices.Equal(list, []string{"default/key/a", "default/key/b"}) {
		t.Fatalf("list: %v %v", list, err)
	}
	if list, _ := rs.List(ctx, "100%_"); !slices.Equal(list, []string{"100%_x/k/t"}) {
		t.Fatalf("prefix with wildcards: %v", list)
	}
	if list, _ := rs.List(ctx, "1%"); len(list) != 0 {
		t.Fatalf("'%%' must be literal: %v", list)
	}
	if err := rs.Delete(ctx, "default/key/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Get(ctx, "default/key/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if err := rs.Delete(ctx, "default/key/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
}

func testKeys(t *testing.T, s store.Store) {
	ctx := context.Background()
	ks := s.Keys()
	k2 := store.Key{Kind: "ca", ID: "2", Sealed: []byte("s2"), Public: []byte("p2"), NotBefore: t0.Add(time.Hour), NotAfter: t0.Add(3 * time.Hour)}
	k1 := store.Key{Kind: "ca", ID: "1", Sealed: []byte("s1"), NotBefore: t0, NotAfter: t0.Add(2 * time.Hour)}
	for _, k := range []store.Key{k2, k1, {Kind: "jwt", ID: "1", Sealed: []byte("j"), NotBefore: t0, NotAfter: t0}} {
		if err := ks.Create(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if err := ks.Create(ctx, k1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("duplicate: %v", err)
	}
	list, err := ks.List(ctx, "ca")
	if err != nil || len(list) != 2 || list[0].ID != "1" || list[1].ID != "2" {
		t.Fatalf("list: %+v %v", list, err)
	}
	if string(list[1].Public) != "p2" || string(list[1].Sealed) != "s2" || !list[1].NotAfter.Equal(k2.NotAfter) {
		t.Fatalf("round trip: %+v", list[1])
	}
	if err := ks.Delete(ctx, "ca", "1"); err != nil {
		t.Fatal(err)
	}
	if err := ks.Delete(ctx, "ca", "1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	if list, _ := ks.List(ctx, "ca"); len(list) != 1 {
		t.Fatalf("after delete: %+v", list)
	}
}

func testPolicies(t *testing.T, s store.Store) {
	ctx := context.Background()
	ps := s.Policies()
	if _, err := ps.Get(ctx, "resource"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	p1, err := ps.Put(ctx, "resource", "package policy\ndefault allow := false")
	if err != nil || p1.Revision != 1 {
		t.Fatalf("put: %+v %v", p1, err)
	}
	p2, err := ps.Put(ctx, "resource", "package policy\ndefault allow := true")
	if err != nil || p2.Revision != 2 {
		t.Fatalf("put again: %+v %v", p2, err)
	}
	got, err := ps.Get(ctx, "resource")
	if err != nil || got.Text != p2.Text || got.Revision != 2 {
		t.Fatalf("get: %+v %v", got, err)
	}
}

// testMixedConcurrency runs transactions beside plain writes and reads of
// every kind on a fresh store, where each statement is used for the first
// time concurrently with the others: it must finish, not deadlock.
func testMixedConcurrency(t *testing.T, s store.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			id := fmt.Sprint("m", i)
			ops := []func() error{
				func() error {
					_, err := s.Entries().Create(ctx, store.Entry{SPIFFEID: "spiffe://td/" + id, ParentID: "p", Selectors: []store.Selector{{Type: "t", Value: id}}})
					return err
				},
				func() error {
					return s.Sessions().Create(ctx, store.Session{ID: id, TEE: "t", Nonce: "n", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
				},
				func() error { _, err := s.Sessions().ConsumeNonce(ctx, id, "n", t0); return err },
				func() error { return s.Resources().Put(ctx, store.Resource{Path: id, Sealed: []byte("x")}) },
				func() error { _, err := s.Resources().Get(ctx, id); return err },
				func() error {
					return s.Keys().Create(ctx, store.Key{Kind: "k", ID: id, Sealed: []byte("x"), NotBefore: t0, NotAfter: t0})
				},
				func() error { _, err := s.Keys().List(ctx, "k"); return err },
				func() error { return s.JoinTokens().Create(ctx, store.JoinToken{ID: id, ExpiresAt: t0, CreatedAt: t0}) },
				func() error { _, err := s.Entries().List(ctx, store.EntryFilter{}); return err },
				func() error { _, err := s.Policies().Put(ctx, id, "x"); return err },
			}
			// Each goroutine starts at a different operation.
			for j := range ops {
				if err := ops[(i+j)%len(ops)](); err != nil && !errors.Is(err, store.ErrNotFound) {
					t.Errorf("%s: operation %d: %v", id, (i+j)%len(ops), err)
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("concurrent store operations did not finish: deadlock")
	}
}

func revision(t *testing.T, s store.Store) int64 {
	t.Helper()
	r, err := s.Entries().Revision(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// testEntriesRevision checks that every entry change and every agent
// eviction, and nothing else, moves the revision forward.
func testEntriesRevision(t *testing.T, s store.Store) {
	ctx := context.Background()
	r0 := revision(t, s)
	e, err := s.Entries().Create(ctx, store.Entry{SPIFFEID: "spiffe://td/w", ParentID: "spiffe://td/a",
		Selectors: []store.Selector{{Type: "unix", Value: "uid:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	r1 := revision(t, s)
	if r1 <= r0 {
		t.Fatalf("create: revision %d -> %d", r0, r1)
	}
	if _, err := s.Entries().List(ctx, store.EntryFilter{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Agents().Attest(ctx, store.Agent{SPIFFEID: "spiffe://td/spire/agent/x", Attestor: "join_token",
		SerialNumber: "1", ExpiresAt: t0, CreatedAt: t0, UpdatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if r := revision(t, s); r != r1 {
		t.Fatalf("a read and an attestation moved the revision %d -> %d", r1, r)
	}
	if err := s.Agents().Evict(ctx, "spiffe://td/spire/agent/x", t0); err != nil {
		t.Fatal(err)
	}
	r2 := revision(t, s)
	if r2 <= r1 {
		t.Fatalf("evict: revision %d -> %d", r1, r2)
	}
	if err := s.Entries().Delete(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	if r3 := revision(t, s); r3 <= r2 {
		t.Fatalf("delete: revision %d -> %d", r2, r3)
	}
}

func testAgents(t *testing.T, s store.Store) {
	ctx := context.Background()
	as := s.Agents()
	id := "spiffe://td/spire/agent/join_token/abc"
	if _, err := as.Get(ctx, id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
	a := store.Agent{SPIFFEID: id, Attestor: "join_token", Selectors: []store.Selector{{Type: "join_token", Value: "abc"}},
		SerialNumber: "100", ExpiresAt: t0.Add(time.Hour), CreatedAt: t0, UpdatedAt: t0}
	if _, err := as.Attest(ctx, a); err != nil {
		t.Fatal(err)
	}
	got, err := as.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got.Attestor != "join_token" || !slices.Equal(got.Selectors, a.Selectors) || got.SerialNumber != "100" ||
		!got.ExpiresAt.Equal(a.ExpiresAt) || !got.CreatedAt.Equal(t0) || got.Evicted {
		t.Fatalf("round trip: %+v", got)
	}
	// Re-attestation keeps CreatedAt and replaces the rest.
	a2 := a
	a2.SerialNumber, a2.Selectors, a2.CreatedAt, a2.UpdatedAt = "200", nil, t0.Add(time.Minute), t0.Add(time.Minute)
	stored, err := as.Attest(ctx, a2)
	if err != nil {
		t.Fatal(err)
	}
	if !stored.CreatedAt.Equal(t0) {
		t.Fatalf("re-attestation changed CreatedAt to %v", stored.CreatedAt)
	}
	if got, _ := as.Get(ctx, id); got.SerialNumber != "200" || len(got.Selectors) != 0 || !got.UpdatedAt.Equal(a2.UpdatedAt) {
		t.Fatalf("after re-attestation: %+v", got)
	}
	// Renewal: only with the current (or previous) serial.
	if err := as.Renew(ctx, id, "100", "300", t0.Add(2*time.Hour), t0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("renew with a replaced serial: %v", err)
	}
	if err := as.Renew(ctx, id, "", "300", t0.Add(2*time.Hour), t0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("renew with no serial: %v", err)
	}
	if err := as.Renew(ctx, id, "200", "300", t0.Add(2*time.Hour), t0); err != nil {
		t.Fatal(err)
	}
	got, _ = as.Get(ctx, id)
	if got.SerialNumber != "300" || got.PrevSerialNumber != "200" || !got.ExpiresAt.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("after renewal: %+v", got)
	}
	// The previous serial still renews (a lost answer), once.
	if err := as.Renew(ctx, id, "200", "400", t0.Add(3*time.Hour), t0); err != nil {
		t.Fatalf("renew with the previous serial: %v", err)
	}
	if err := as.Renew(ctx, "spiffe://td/spire/agent/none", "1", "2", t0, t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("renew unknown: %v", err)
	}
	if _, err := as.Attest(ctx, store.Agent{SPIFFEID: "spiffe://td/spire/agent/b", Attestor: "x509pop", SerialNumber: "1",
		ExpiresAt: t0, CreatedAt: t0, UpdatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	list, err := as.List(ctx)
	if err != nil || len(list) != 2 || list[0].SPIFFEID != "spiffe://td/spire/agent/b" || list[1].SPIFFEID != id {
		t.Fatalf("list: %+v %v", list, err)
	}
	// Eviction is final: no renewal, no re-attestation.
	if err := as.Evict(ctx, id, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := as.Evict(ctx, "spiffe://td/spire/agent/none", t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("evict unknown: %v", err)
	}
	if got, _ := as.Get(ctx, id); !got.Evicted {
		t.Fatalf("not evicted: %+v", got)
	}
	if err := as.Renew(ctx, id, "400", "500", t0, t0); !errors.Is(err, store.ErrEvicted) {
		t.Fatalf("renew evicted: %v", err)
	}
	if _, err := as.Attest(ctx, a); !errors.Is(err, store.ErrEvicted) {
		t.Fatalf("re-attest evicted: %v", err)
	}
	if got, _ := as.Get(ctx, id); !got.Evicted || got.SerialNumber != "400" {
		t.Fatalf("an evicted agent's record changed: %+v", got)
	}
}

// testSpentTokens checks that an attestation token is spent on one key:
// the same key again gets the recorded answer (a retry), another key is
// refused, also when keys race for a fresh token; and that expired tokens
// are forgotten.
func testSpentTokens(t *testing.T, s store.Store) {
	ctx := context.Background()
	as := s.Agents()
	if ans, err := as.SpendToken(ctx, "jti-1", "key-a", t0.Add(time.Minute)); err != nil || ans != nil {
		t.Fatalf("first spend: %q %v", ans, err)
	}
	if ans, err := as.SpendToken(ctx, "jti-1", "key-a", t0.Add(time.Minute)); err != nil || ans != nil {
		t.Fatalf("the same key before an answer: %q %v", ans, err)
	}
	if err := as.TokenAnswered(ctx, "jti-1", []byte(`{"chain":1}`)); err != nil {
		t.Fatal(err)
	}
	if ans, err := as.SpendToken(ctx, "jti-1", "key-a", t0.Add(time.Minute)); err != nil || string(ans) != `{"chain":1}` {
		t.Fatalf("the same key after the answer: %q %v", ans, err)
	}
	if _, err := as.SpendToken(ctx, "jti-1", "key-b", t0.Add(time.Minute)); !errors.Is(err, store.ErrConsumed) {
		t.Fatalf("another key: %v, want ErrConsumed", err)
	}
	if err := as.TokenAnswered(ctx, "jti-none", []byte("x")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("answer of an unspent token: %v, want ErrNotFound", err)
	}
	if _, err := as.SpendToken(ctx, "jti-2", "key-b", t0.Add(time.Hour)); err != nil {
		t.Fatalf("another token: %v", err)
	}
	const n = 8
	var wg sync.WaitGroup
	var wins atomic.Int32
	for i := range n {
		wg.Go(func() {
			_, err := as.SpendToken(ctx, "jti-race", fmt.Sprint("key-", i), t0.Add(time.Minute))
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, store.ErrConsumed):
				t.Errorf("spend %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d keys got the same token, want 1", wins.Load())
	}
	// jti-1 and jti-race expire at t0+1m, jti-2 at t0+1h.
	if n, err := as.DeleteSpentTokens(ctx, t0.Add(time.Minute)); err != nil || n != 0 {
		t.Fatalf("delete at expiry: %d %v, want 0 (still presentable)", n, err)
	}
	if n, err := as.DeleteSpentTokens(ctx, t0.Add(2*time.Minute)); err != nil || n != 2 {
		t.Fatalf("delete expired: %d %v, want 2", n, err)
	}
	if _, err := as.SpendToken(ctx, "jti-2", "key-c", t0.Add(time.Hour)); !errors.Is(err, store.ErrConsumed) {
		t.Fatalf("a live token was forgotten: %v", err)
	}
}

// testAgentRenewConcurrency checks that of concurrent renewals presenting
// the same serial, each either wins or sees ErrConflict, and the stored
// serial is one of the winners'.
func testAgentRenewConcurrency(t *testing.T, s store.Store) {
	ctx := context.Background()
	id := "spiffe://td/spire/agent/c"
	if _, err := s.Agents().Attest(ctx, store.Agent{SPIFFEID: id, Attestor: "x509pop", SerialNumber: "1",
		ExpiresAt: t0, CreatedAt: t0, UpdatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	const n = 8
	var wg sync.WaitGroup
	var wins atomic.Int32
	for i := range n {
		wg.Go(func() {
			err := s.Agents().Renew(ctx, id, "1", fmt.Sprint("new", i), t0, t0)
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, store.ErrConflict):
				t.Errorf("renew %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if wins.Load() == 0 {
		t.Fatal("no renewal won")
	}
	got, err := s.Agents().Get(ctx, id)
	if err != nil || len(got.SerialNumber) < 4 || got.SerialNumber[:3] != "new" {
		t.Fatalf("after concurrent renewals: %+v %v", got, err)
	}
}
