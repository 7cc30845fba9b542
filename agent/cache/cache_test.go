package cache_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/trustgate/trustgate/agent/cache"
	"github.com/trustgate/trustgate/agent/internal/testca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func sel(v ...string) []cache.Selector {
	var out []cache.Selector
	for _, s := range v {
		out = append(out, cache.Selector{Type: "unix", Value: s})
	}
	return out
}

func entry(id string, s ...string) cache.Entry {
	return cache.Entry{ID: id, SPIFFEID: "spiffe://example.org/" + id, Selectors: sel(s...)}
}

type clock struct {
	mu sync.Mutex
	d  time.Duration
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.d) }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.d += d
	c.mu.Unlock()
}

func newCache(t *testing.T, iss cache.Issuer, now func() time.Time, run bool) *cache.Cache {
	t.Helper()
	c, err := cache.New(cache.Config{
		Issuer: iss, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		RetryMin: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond, Now: now, BatchSize: 500,
	})
	if err != nil {
		t.Fatal(err)
	}
	if run {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = c.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	return c
}

func newCA(t *testing.T, ttl time.Duration) *testca.CA {
	ca, err := testca.New(td, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestMatches(t *testing.T) {
	set := cache.SelectorSet(sel("uid:1", "gid:2", "user:x"))
	for _, c := range []struct {
		e    cache.Entry
		want bool
	}{
		{entry("a", "uid:1"), true},
		{entry("b", "uid:1", "gid:2"), true},
		{entry("c", "uid:1", "gid:3"), false},
		{entry("d"), false},
		{cache.Entry{Selectors: []cache.Selector{{Type: "k8s", Value: "uid:1"}}}, false},
	} {
		if got := cache.Matches(c.e, set); got != c.want {
			t.Errorf("%v: %v, want %v", c.e.Selectors, got, c.want)
		}
	}
}

func next(t *testing.T, s *cache.Subscription, d time.Duration) *cache.WorkloadUpdate {
	t.Helper()
	select {
	case u := <-s.Updates():
		return u
	case <-time.After(d):
		t.Fatalf("no update in %s", d)
	}
	return nil
}

// TestSubscriptionFollowsEntries: a subscriber sees its entry pending, then
// issued; a deletion is in its channel when SetEntries returns; changes to
// other workloads' entries are not pushed to it.
func TestSubscriptionFollowsEntries(t *testing.T) {
	ca := newCA(t, time.Hour)
	c := newCache(t, ca, nil, false)
	if err := c.SetBundles([]*spiffebundle.Bundle{ca.Bundle()}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetEntries([]cache.Entry{entry("a", "uid:1")}); err != nil {
		t.Fatal(err)
	}
	s := c.Subscribe(sel("uid:1", "gid:1"))
	defer s.Close()
	u := next(t, s, time.Second)
	if len(u.Entries) != 1 || len(u.Identities) != 0 || u.Pending != 1 {
		t.Fatalf("before signing: %d entries, %d identities, %d pending", len(u.Entries), len(u.Identities), u.Pending)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	u = next(t, s, 5*time.Second)
	if len(u.Identities) != 1 || u.Identities[0].ID.String() != "spiffe://example.org/a" || u.Pending != 0 {
		t.Fatalf("after signing: %+v", u)
	}
	if u.Bundles[td] == nil {
		t.Fatal("no bundle in the update")
	}
	// Another workload's entry: signed, but not pushed to this subscriber.
	if err := c.SetEntries([]cache.Entry{entry("a", "uid:1"), entry("b", "uid:2")}); err != nil {
		t.Fatal(err)
	}
	for c.Stats().SVIDs < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case u := <-s.Updates():
		t.Fatalf("pushed an unrelated change: %+v", u)
	case <-time.After(50 * time.Millisecond):
	}
	// Deleting a: the update is waiting when SetEntries returns.
	if err := c.SetEntries([]cache.Entry{entry("b", "uid:2")}); err != nil {
		t.Fatal(err)
	}
	select {
	case u := <-s.Updates():
		if len(u.Entries) != 0 || len(u.Identities) != 0 || u.Pending != 0 {
			t.Fatalf("after deletion: %+v", u)
		}
	default:
		t.Fatal("deletion not delivered synchronously")
	}
	// A selector change that takes the entry back.
	if err := c.SetEntries([]cache.Entry{entry("b", "uid:2"), entry("a", "gid:1")}); err != nil {
		t.Fatal(err)
	}
	u = next(t, s, time.Second)
	if len(u.Entries) != 1 {
		t.Fatalf("after selector change: %+v", u)
	}
}

// TestRenewalAndOutage: SVIDs are renewed at half-life; while the issuer
// fails, the last SVID is served until it expires, then the workload has
// none; when the issuer returns, a new one arrives.
func TestRenewalAndOutage(t *testing.T) {
	const ttl = 2 * time.Second
	ca := newCA(t, ttl)
	c := newCache(t, ca, nil, true)
	if err := c.SetBundles([]*spiffebundle.Bundle{ca.Bundle()}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetEntries([]cache.Entry{entry("a", "uid:1")}); err != nil {
		t.Fatal(err)
	}
	s := c.Subscribe(sel("uid:1"))
	defer s.Close()
	var first *cache.Identity
	for first == nil {
		if u := next(t, s, 5*time.Second); len(u.Identities) == 1 {
			first = u.Identities[0]
		}
	}
	u := next(t, s, 2*ttl)
	if len(u.Identities) != 1 || u.Identities[0] == first {
		t.Fatalf("no renewal: %+v", u)
	}
	renewed := time.Since(first.NotBefore)
	t.Logf("renewed %s after NotBefore (TTL %s)", renewed, ttl)
	if renewed > ttl {
		t.Fatalf("renewed after %s", renewed)
	}
	ca.SetFailure(errors.New("broker unreachable"))
	last := u.Identities[0]
	u = next(t, s, 2*ttl)
	if len(u.Identities) != 0 || u.Pending != 1 {
		t.Fatalf("expected the SVID to lapse: %+v", u)
	}
	if now := time.Now(); now.Before(last.NotAfter) {
		t.Fatalf("SVID dropped at %s, before its expiry %s", now, last.NotAfter)
	}
	ca.SetFailure(nil)
	u = next(t, s, 2*time.Second)
	if len(u.Identities) != 1 {
		t.Fatalf("no recovery: %+v", u)
	}
}

// lying issuer returns certificates for another key or ID.
type lying struct {
	ca   *testca.CA
	mode string
}

func (l *lying) SignX509SVIDs(ctx context.Context, reqs []cache.X509Request) ([]cache.X509Result, error) {
	for i := range reqs {
		switch l.mode {
		case "id":
			reqs[i].SPIFFEID = spiffeid.RequireFromString("spiffe://example.org/admin")
		case "key":
			// Same ID, but a key the agent did not make.
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return nil, err
			}
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{reqs[i].SPIFFEID.URL()}}, key)
			if err != nil {
				return nil, err
			}
			reqs[i].CSR = csr
		}
	}
	return l.ca.SignX509SVIDs(ctx, reqs)
}

func (l *lying) MintJWTSVID(ctx context.Context, e string, id spiffeid.ID, aud []string) (string, error) {
	return l.ca.MintJWTSVID(ctx, e, spiffeid.RequireFromString("spiffe://example.org/admin"), aud)
}

// TestIssuerAnswerChecked: an SVID for another ID or another key is not
// installed, nor is a JWT-SVID for another ID.
func TestIssuerAnswerChecked(t *testing.T) {
	for _, mode := range []string{"id", "key"} {
		ca := newCA(t, time.Hour)
		c := newCache(t, &lying{ca: ca, mode: mode}, nil, true)
		if err := c.SetEntries([]cache.Entry{entry("a", "uid:1"), entry("b", "uid:1")}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for ca.Batches.Load() < 3 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := c.Stats().SVIDs; n != 0 {
			t.Fatalf("%s: %d SVIDs installed from a lying issuer", mode, n)
		}
	}
	c := newCache(t, &lying{ca: newCA(t, time.Hour)}, nil, false)
	if _, err := c.FetchJWTSVID(context.Background(), entry("a", "uid:1"), []string{"x"}); err == nil {
		t.Fatal("accepted a JWT-SVID for another ID")
	}
}

// TestJWTCache: a JWT-SVID is reused until half its lifetime, then
// renewed; while minting fails, an unexpired cached token is served.
func TestJWTCache(t *testing.T) {
	ca := newCA(t, time.Hour)
	clk := &clock{}
	c := newCache(t, ca, clk.now, false)
	e := entry("a", "uid:1")
	ctx := context.Background()
	t1, err := c.FetchJWTSVID(ctx, e, []string{"x", "y"})
	if err != nil {
		t.Fatal(err)
	}
	clk.add(29 * time.Minute)
	t2, err := c.FetchJWTSVID(ctx, e, []string{"y", "x"})
	if err != nil || t2 != t1 || ca.Minted.Load() != 1 {
		t.Fatalf("before half-life: same=%v minted=%d err=%v", t2 == t1, ca.Minted.Load(), err)
	}
	if _, err := c.FetchJWTSVID(ctx, e, []string{"x"}); err != nil || ca.Minted.Load() != 2 {
		t.Fatalf("another audience must mint: %d %v", ca.Minted.Load(), err)
	}
	clk.add(2 * time.Minute)
	ca.SetFailure(errors.New("down"))
	t3, err := c.FetchJWTSVID(ctx, e, []string{"x", "y"})
	if err != nil || t3 != t1 {
		t.Fatalf("outage before expiry must serve the cached token: %v", err)
	}
	ca.SetFailure(nil)
	t4, err := c.FetchJWTSVID(ctx, e, []string{"x", "y"})
	if err != nil || t4 == t1 {
		t.Fatalf("after half-life: same=%v err=%v", t4 == t1, err)
	}
	clk.add(2 * time.Hour)
	ca.SetFailure(errors.New("down"))
	if _, err := c.FetchJWTSVID(ctx, e, []string{"x", "y"}); err == nil {
		t.Fatal("served an expired JWT-SVID")
	}
}

// TestBatching: 1,200 entries are signed in batches of at most 500.
func TestBatching(t *testing.T) {
	ca := newCA(t, time.Hour)
	c := newCache(t, ca, nil, true)
	var es []cache.Entry
	for i := range 1200 {
		es = append(es, entry(fmt.Sprintf("e%04d", i), "uid:1"))
	}
	if err := c.SetEntries(es); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for c.Stats().SVIDs < 1200 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := c.Stats().SVIDs; n != 1200 {
		t.Fatalf("%d SVIDs", n)
	}
	if b := ca.Batches.Load(); b != 3 {
		t.Fatalf("%d batches, want 3", b)
	}
	if err := c.SetEntries([]cache.Entry{{ID: "bad", SPIFFEID: "not an id"}}); err == nil {
		t.Fatal("accepted an entry with a bad SPIFFE ID")
	}
	if n := c.Stats().Entries; n != 0 {
		t.Fatalf("%d entries after replacing with one bad entry", n)
	}
}
