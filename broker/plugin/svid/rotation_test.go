package svid_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/sqlite"
)

func keyIDs(t *testing.T, st store.Store, kind string) []string {
	t.Helper()
	list, err := st.Keys().List(context.Background(), kind)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, k := range list {
		ids = append(ids, k.ID)
	}
	return ids
}

func issuerOf(t *testing.T, chain [][]byte) string {
	t.Helper()
	c, err := x509.ParseCertificate(chain[1])
	if err != nil {
		t.Fatal(err)
	}
	return c.Subject.CommonName
}

func TestIntermediateRotatesWithOverlap(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	f := newFixture(t, start, svid.DefaultConfig()) // intermediates sign for 24h
	agentQuery := url.Values{"spiffe_id": {agentID}}
	ctx := context.Background()

	// Half-way through its term, the successor is made; the current one
	// keeps signing.
	f.clock.Set(start.Add(12*time.Hour + time.Minute))
	if err := f.p.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	ints := keyIDs(t, f.st, svid.KindIntermediate)
	if len(ints) != 2 {
		t.Fatalf("intermediates after half-life: %v, want current and successor", ints)
	}
	_, der := newCSR(t)
	f.clock.Set(start.Add(23*time.Hour + 30*time.Minute))
	_, oldChain := issueX509(t, f.p, agent(), agentQuery, der) // 1h SVID, outlives the term
	// At the end of the term the successor signs, with no Rotate call in
	// between: it was loaded when it was made.
	f.clock.Set(start.Add(24 * time.Hour))
	_, newChain := issueX509(t, f.p, agent(), agentQuery, der)
	if a, b := issuerOf(t, oldChain), issuerOf(t, newChain); a == b {
		t.Fatalf("both SVIDs were signed by %q; want the successor to sign after the term", a)
	}
	// During the overlap both verify against the one served bundle.
	at := start.Add(24*time.Hour + 10*time.Minute)
	f.clock.Set(at)
	if err := f.p.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	b := bundle(t, f.p)
	if len(b.X509Authorities()) != 1 {
		t.Fatalf("bundle has %d roots; intermediates must not change it", len(b.X509Authorities()))
	}
	for name, chain := range map[string][][]byte{"old": oldChain, "new": newChain} {
		if _, _, err := x509svid.ParseAndVerify(chain, b, x509svid.WithTime(at)); err != nil {
			t.Fatalf("%s intermediate's SVID: %v", name, err)
		}
	}
	// Once every SVID it can have signed has expired, the old
	// intermediate is deleted.
	f.clock.Set(start.Add(48 * time.Hour))
	if err := f.p.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if got := keyIDs(t, f.st, svid.KindIntermediate); len(got) != 2 || got[0] != ints[1] {
		t.Fatalf("intermediates two terms later: %v, want the first (of %v) gone", got, ints)
	}
}

// TestRotationKeepsEverySVIDValid walks a short-lived root through several
// terms, as Run would, issuing an SVID every step; at every step each
// unexpired SVID issued so far must verify against the bundle served then.
func TestRotationKeepsEverySVIDValid(t *testing.T) {
	cfg := svid.DefaultConfig()
	cfg.RootTTL.Duration = 48 * time.Hour
	cfg.IntermediateTTL.Duration = 12 * time.Hour
	cfg.X509SVIDTTL.Duration = 6 * time.Hour
	cfg.MaxX509SVIDTTL.Duration = 6 * time.Hour
	start := time.Now().Truncate(time.Second)
	f := newFixture(t, start, cfg)
	_, der := newCSR(t, agentID)
	type issued struct {
		chain    [][]byte
		notAfter time.Time
	}
	var all []issued
	maxRoots, roots := 0, map[string]bool{}
	step := 90 * time.Minute
	if testing.Short() {
		step = 4 * time.Hour
	}
	for now := start; now.Before(start.Add(10 * 24 * time.Hour)); now = now.Add(step) {
		f.clock.Set(now)
		if err := f.p.Rotate(context.Background()); err != nil {
			t.Fatal(err)
		}
		out, chain := issueX509(t, f.p, agent(), nil, der)
		all = append(all, issued{chain, time.Unix(out.ExpiresAt, 0)})
		b := bundle(t, f.p)
		maxRoots = max(maxRoots, len(b.X509Authorities()))
		for _, r := range b.X509Authorities() {
			roots[r.Subject.CommonName] = true
		}
		for i, s := range all {
			if !now.Before(s.notAfter) {
				continue
			}
			if _, _, err := x509svid.ParseAndVerify(s.chain, b, x509svid.WithTime(now)); err != nil {
				t.Fatalf("at +%v, SVID %d (issued under %s) no longer verifies: %v", now.Sub(start), i, issuerOf(t, s.chain), err)
			}
		}
	}
	if maxRoots != 2 || len(roots) < 4 {
		t.Fatalf("at most %d roots at once and %d in all; want overlapping roots that rotate", maxRoots, len(roots))
	}
}

func TestStalledRotationRecoversOnIssue(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	f := newFixture(t, start, svid.DefaultConfig())
	firstRoot := keyIDs(t, f.st, svid.KindRoot)
	// No Rotate for two years: every key is spent.
	later := start.Add(2 * 365 * 24 * time.Hour)
	f.clock.Set(later)
	_, der := newCSR(t, agentID)
	_, chain := issueX509(t, f.p, agent(), nil, der)
	if _, _, err := x509svid.ParseAndVerify(chain, bundle(t, f.p), x509svid.WithTime(later)); err != nil {
		t.Fatal(err)
	}
	if got := keyIDs(t, f.st, svid.KindRoot); len(got) != 1 || got[0] <= firstRoot[0] {
		t.Fatalf("roots after a stall: %v, want one new root", got)
	}
}

func TestJWTKeyRotatesWithOverlap(t *testing.T) {
	// go-spiffe validates exp and iat on the real clock, so the fake
	// clock's schedule ends at the real now.
	real := time.Now().Truncate(time.Second)
	f := newFixture(t, real.Add(-24*time.Hour), svid.DefaultConfig()) // key 1 signs until real-1m
	f.clock.Set(real.Add(-12 * time.Hour))
	if err := f.p.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(bundle(t, f.p).JWTAuthorities()); n != 2 {
		t.Fatalf("bundle has %d JWT keys half-way through the term; want the successor published", n)
	}
	f.clock.Set(real.Add(-2 * time.Minute))
	old := issueJWT(t, f.p, agent(), workloadID, "a")
	f.clock.Set(real)
	cur := issueJWT(t, f.p, agent(), workloadID, "a")
	b := bundle(t, f.p)
	kids := map[string]bool{}
	for name, tok := range map[string]string{"old": old.Token, "new": cur.Token} {
		s, err := jwtsvid.ParseAndValidate(tok, b, []string{"a"})
		if err != nil {
			t.Fatalf("%s key's JWT-SVID: %v", name, err)
		}
		_ = s
		parts := strings.SplitN(tok, ".", 2)
		kids[parts[0]] = true
	}
	if len(kids) != 2 {
		t.Fatal("both tokens carry the same header: the key did not rotate")
	}
	// One max_jwt_svid_ttl after its term, the old key leaves the bundle.
	f.clock.Set(real.Add(time.Hour))
	if err := f.p.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	b = bundle(t, f.p)
	if n := len(b.JWTAuthorities()); n != 1 {
		t.Fatalf("bundle has %d JWT keys after the old key's tail, want 1", n)
	}
	if _, err := jwtsvid.ParseAndValidate(old.Token, b, []string{"a"}); err == nil {
		t.Fatal("a token of a retired key still validates")
	}
}

// TestReplicasAgree runs two plugins on two connections to one database,
// as two broker replicas: they race to create the first keys and every
// successor, and must end with one set.
func TestReplicasAgree(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shared.db")
	open := func() store.Store {
		st, err := sqlite.Open(context.Background(), path, sqlite.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	}
	race := &racing{b: newBarrier(2)}
	stores := []store.Store{race.wrap(open()), race.wrap(open())}
	sealer := newSealer(t)
	start := time.Now().Truncate(time.Second)
	c := &clock{t: start}
	plugins := make([]*svid.Plugin, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range plugins {
		wg.Go(func() {
			plugins[i], errs[i] = svid.New(context.Background(), svid.DefaultConfig(), td, stores[i], sealer, nil, c.Now)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		b0, b1 := bundle(t, plugins[0]), bundle(t, plugins[1])
		if !b0.Equal(b1) {
			t.Fatalf("%s: replicas serve different bundles", when)
		}
		_, der := newCSR(t, agentID)
		_, chain := issueX509(t, plugins[0], agent(), nil, der)
		_, other := issueX509(t, plugins[1], agent(), nil, der)
		if issuerOf(t, chain) != issuerOf(t, other) {
			t.Fatalf("%s: replicas sign with different intermediates", when)
		}
		if _, _, err := x509svid.ParseAndVerify(chain, b1, x509svid.WithTime(c.Now())); err != nil {
			t.Fatalf("%s: replica 1 rejects replica 0's SVID: %v", when, err)
		}
	}
	check("first start")
	// How many keys one replica alone would hold at each step: the
	// intermediate's predecessor stays for max_x509_svid_ttl (24h) after
	// its term, the JWT key's for max_jwt_svid_ttl (1h).
	steps := []struct {
		at       time.Duration
		int, jwt int
	}{{12*time.Hour + time.Minute, 2, 2}, {24 * time.Hour, 2, 2}, {36*time.Hour + time.Minute, 3, 2}}
	for _, s := range steps {
		at := s.at
		c.Set(start.Add(at))
		for i := range plugins {
			wg.Go(func() { errs[i] = plugins[i].Rotate(context.Background()) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		for kind, want := range map[string]int{svid.KindRoot: 1, svid.KindIntermediate: s.int, svid.KindJWT: s.jwt} {
			if ids := keyIDs(t, stores[0], kind); len(ids) != want {
				t.Fatalf("+%v: %s keys %v, want %d: a successor was made twice or not at all", at, kind, ids, want)
			}
		}
		check("+" + at.String())
	}
	if race.conflicts.Load() == 0 {
		t.Fatal("the replicas never raced to create a key: the test did not exercise ErrConflict")
	}
}

// racing wraps stores so that replicas meet before each key creation, and
// counts the creations that lost the race.
type racing struct {
	b         *barrier
	conflicts atomic.Int32
}

func (r *racing) wrap(st store.Store) store.Store {
	return racingStore{Store: st, keys: racingKeys{Keys: st.Keys(), r: r}}
}

type racingStore struct {
	store.Store
	keys racingKeys
}

func (s racingStore) Keys() store.Keys { return s.keys }

type racingKeys struct {
	store.Keys
	r *racing
}

func (k racingKeys) Create(ctx context.Context, key store.Key) error {
	k.r.b.wait()
	err := k.Keys.Create(ctx, key)
	if errors.Is(err, store.ErrConflict) {
		k.r.conflicts.Add(1)
	}
	return err
}

// barrier releases its waiters when n have arrived, or after a second
// (when the other party has nothing to create).
type barrier struct {
	mu         sync.Mutex
	cond       *sync.Cond
	n, arrived int
	generation int
}

func newBarrier(n int) *barrier {
	b := &barrier{n: n}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *barrier) wait() {
	b.mu.Lock()
	defer b.mu.Unlock()
	g := b.generation
	release := func() {
		b.arrived = 0
		b.generation++
		b.cond.Broadcast()
	}
	if b.arrived++; b.arrived == b.n {
		release()
		return
	}
	t := time.AfterFunc(time.Second, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.generation == g {
			release()
		}
	})
	defer t.Stop()
	for b.generation == g {
		b.cond.Wait()
	}
}

func TestKeysPersistSealed(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	f := newFixture(t, start, svid.DefaultConfig())
	before := bundle(t, f.p)
	again, err := svid.New(context.Background(), svid.DefaultConfig(), td, f.st, f.sealer, nil, f.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	if !bundle(t, again).Equal(before) {
		t.Fatal("a restarted plugin serves another bundle: the CA did not persist")
	}
	for _, kind := range []string{svid.KindRoot, svid.KindIntermediate, svid.KindJWT} {
		list, err := f.st.Keys().List(context.Background(), kind)
		if err != nil || len(list) == 0 {
			t.Fatalf("%s: %v, %d keys", kind, err, len(list))
		}
		for _, k := range list {
			if _, err := x509.ParsePKCS8PrivateKey(k.Sealed); err == nil {
				t.Fatalf("%s key %s is stored in the clear", kind, k.ID)
			}
			if bytes.Contains(k.Sealed, k.Public) {
				t.Fatalf("%s key %s: sealed value holds the public part verbatim", kind, k.ID)
			}
		}
	}
	// Under another sealing key nothing opens, and New says so.
	_, err = svid.New(context.Background(), svid.DefaultConfig(), td, f.st, newSealer(t), nil, f.clock.Now)
	if !errors.Is(err, seal.ErrOpen) {
		t.Fatalf("New with the wrong sealing key: %v, want seal.ErrOpen", err)
	}
}
