// Package cache holds the node agent's view of its workloads' identities:
// the registration entries the broker authorized for the agent, an
// X.509-SVID for each (its private key made here and never sent anywhere),
// the trust bundles, and JWT-SVIDs minted on demand. Subscribers, one per
// Workload API stream, are told at once about every change that affects
// them.
//
// Two seams face the broker: the sync calls SetEntries and SetBundles with
// what the broker says, and an Issuer signs CSRs and mints JWT-SVIDs.
package cache

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/trustgate/trustgate/store"
	"golang.org/x/sync/singleflight"
)

// Entry is a registration entry, as the broker stores it.
type Entry = store.Entry

// Selector is one selector of an entry or a workload.
type Selector = store.Selector

// X509Request asks for one X.509-SVID.
type X509Request struct {
	// EntryID names the registration entry the SVID is for. The issuer
	// decides, from the entry, the SPIFFE ID, lifetime and DNS names.
	EntryID string
	// SPIFFEID is the entry's SPIFFE ID as the agent knows it; the issuer
	// may ignore it.
	SPIFFEID spiffeid.ID
	// CSR is a DER PKCS#10 request signed by the SVID's key, made on the
	// node. It carries SPIFFEID as its URI SAN.
	CSR []byte
}

// X509Result is the answer for one X509Request.
type X509Result struct {
	// EntryID is the request's entry.
	EntryID string
	// Chain is the SVID, leaf first, then any intermediates.
	Chain []*x509.Certificate
	// Err is set when this entry's SVID could not be signed; the others in
	// the batch are unaffected.
	Err error
}

// Issuer signs SVIDs for the agent. The broker client implements it; tests
// implement it with a local CA.
type Issuer interface {
	// SignX509SVIDs signs a batch of CSRs, one per entry, in one round
	// trip. An error fails the whole batch; per-entry failures go in
	// X509Result.Err. Entries missing from the result count as failed.
	SignX509SVIDs(ctx context.Context, reqs []X509Request) ([]X509Result, error)
	// MintJWTSVID returns a JWT-SVID (JWS compact form) for the entry's
	// SPIFFE ID with the given audience.
	MintJWTSVID(ctx context.Context, entryID string, id spiffeid.ID, audience []string) (string, error)
}

// Bundle is one trust domain's bundle, with its Workload API encodings
// computed once when it is set.
type Bundle struct {
	// TrustDomain is the bundle's trust domain.
	TrustDomain spiffeid.TrustDomain
	// X509Authorities are the CA certificates.
	X509Authorities []*x509.Certificate
	// X509DER is the concatenated DER of X509Authorities.
	X509DER []byte
	// JWKS is the JWT authorities as a JWK set.
	JWKS []byte
	// JWT is the JWT authorities, for validation.
	JWT *jwtbundle.Bundle
}

// Identity is an entry with its current X.509-SVID.
type Identity struct {
	// Entry is the registration entry.
	Entry Entry
	// ID is the entry's parsed SPIFFE ID.
	ID spiffeid.ID
	// ChainDER is the concatenated DER of the SVID chain, leaf first. The
	// parsed certificates are not kept: with 1,001 entries they were half
	// of the agent's live heap (7.6 of 14.7 MB).
	ChainDER []byte
	// KeyDER is the PKCS#8 DER of the SVID's private key.
	KeyDER []byte
	// NotBefore and NotAfter bound the leaf's validity.
	NotBefore, NotAfter time.Time

	renewAt time.Time
}

// WorkloadUpdate is what one workload is entitled to at one moment.
type WorkloadUpdate struct {
	// Entries are the entries whose selectors the workload has, ordered by
	// entry ID.
	Entries []Entry
	// Identities are those of Entries that have a valid X.509-SVID, in
	// the same order.
	Identities []*Identity
	// Pending counts matching entries whose SVID is not issued yet (or has
	// expired and not been renewed).
	Pending int
	// Bundles are every trust bundle the agent holds, by trust domain.
	Bundles map[spiffeid.TrustDomain]*Bundle
	// BundlesRevision changes whenever Bundles does.
	BundlesRevision uint64
}

// Config configures a Cache.
type Config struct {
	// Issuer signs SVIDs. Required.
	Issuer Issuer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// BatchSize bounds the CSRs per SignX509SVIDs call; default 500.
	BatchSize int
	// IssueTimeout bounds one issuer call; default 30 s.
	IssueTimeout time.Duration
	// RetryMin and RetryMax bound the backoff after a failed signing;
	// defaults 1 s and 30 s.
	RetryMin, RetryMax time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// cachedEntry is one entry with its parsed ID. A changed entry gets a new
// *cachedEntry, so pointers tell subscribers whether anything changed.
type cachedEntry struct {
	e  Entry
	id spiffeid.ID
}

type retry struct {
	at    time.Time
	delay time.Duration
}

// Cache is the agent's identity cache. Its methods are safe for concurrent
// use.
type Cache struct {
	cfg Config
	log *slog.Logger

	mu         sync.Mutex
	entries    map[string]*cachedEntry
	svids      map[string]*Identity
	retries    map[string]retry
	bundles    map[spiffeid.TrustDomain]*Bundle
	bundlesRev uint64
	subs       map[*Subscription]struct{}
	kick       chan struct{}

	jwtMu sync.Mutex
	jwts  map[jwtKey]jwtToken
	jwtSF singleflight.Group
}

// New returns an empty cache. Call Run to issue and renew SVIDs.
func New(cfg Config) (*Cache, error) {
	if cfg.Issuer == nil {
		return nil, errors.New("cache: no issuer")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 500
	}
	if cfg.IssueTimeout <= 0 {
		cfg.IssueTimeout = 30 * time.Second
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(30*time.Second, cfg.RetryMin)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Cache{
		cfg:     cfg,
		log:     cfg.Logger,
		entries: map[string]*cachedEntry{},
		svids:   map[string]*Identity{},
		retries: map[string]retry{},
		bundles: map[spiffeid.TrustDomain]*Bundle{},
		subs:    map[*Subscription]struct{}{},
		kick:    make(chan struct{}, 1),
		jwts:    map[jwtKey]jwtToken{},
	}, nil
}

// SetEntries replaces the cache's entries with entries, the complete set
// the broker authorized for this agent. Entries whose SPIFFE ID cannot be
// parsed are skipped and reported. New entries are queued for signing;
// removed ones, and their SVIDs, are gone for every subscriber before
// SetEntries returns.
func (c *Cache) SetEntries(entries []Entry) error {
	var errs []error
	next := make(map[string]*cachedEntry, len(entries))
	for _, e := range entries {
		id, err := spiffeid.FromString(e.SPIFFEID)
		if err != nil {
			errs = append(errs, fmt.Errorf("entry %s: %w", e.ID, err))
			continue
		}
		next[e.ID] = &cachedEntry{e: e, id: id}
	}
	c.mu.Lock()
	changed := len(next) != len(c.entries)
	for id, old := range c.entries {
		ne, ok := next[id]
		switch {
		case !ok:
			delete(c.svids, id)
			delete(c.retries, id)
			changed = true
		case sameEntry(old.e, ne.e):
			next[id] = old
		default:
			changed = true
			if old.e.SPIFFEID != ne.e.SPIFFEID || old.e.X509SVIDTTL != ne.e.X509SVIDTTL || !slices.Equal(old.e.DNSNames, ne.e.DNSNames) {
				delete(c.svids, id)
				delete(c.retries, id)
			}
		}
	}
	for id := range next {
		if _, ok := c.entries[id]; !ok {
			changed = true
		}
	}
	c.entries = next
	if changed {
		c.notifyLocked()
	}
	c.mu.Unlock()
	if changed {
		c.wake()
		c.pruneJWTs()
	}
	return errors.Join(errs...)
}

// sameEntry reports whether two versions of an entry serve the same
// identity to the same workloads.
func sameEntry(a, b Entry) bool {
	return a.SPIFFEID == b.SPIFFEID && a.ParentID == b.ParentID &&
		a.X509SVIDTTL == b.X509SVIDTTL && a.JWTSVIDTTL == b.JWTSVIDTTL &&
		slices.Equal(a.Selectors, b.Selectors) && slices.Equal(a.DNSNames, b.DNSNames)
}

// SetBundles replaces the trust bundles: the agent's own trust domain and
// any federated ones.
func (c *Cache) SetBundles(bundles []*spiffebundle.Bundle) error {
	next := make(map[spiffeid.TrustDomain]*Bundle, len(bundles))
	for _, b := range bundles {
		nb, err := newBundle(b)
		if err != nil {
			return err
		}
		next[nb.TrustDomain] = nb
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if sameBundles(c.bundles, next) {
		return nil
	}
	c.bundles = next
	c.bundlesRev++
	c.notifyLocked()
	return nil
}

func newBundle(b *spiffebundle.Bundle) (*Bundle, error) {
	jb := b.JWTBundle()
	jwks, err := jb.Marshal()
	if err != nil {
		return nil, fmt.Errorf("cache: bundle %s: JWKS: %w", b.TrustDomain(), err)
	}
	auth := b.X509Authorities()
	var der []byte
	for _, c := range auth {
		der = append(der, c.Raw...)
	}
	return &Bundle{TrustDomain: b.TrustDomain(), X509Authorities: auth, X509DER: der, JWKS: jwks, JWT: jb}, nil
}

func sameBundles(a, b map[spiffeid.TrustDomain]*Bundle) bool {
	if len(a) != len(b) {
		return false
	}
	for td, x := range a {
		y, ok := b[td]
		if !ok || string(x.X509DER) != string(y.X509DER) || string(x.JWKS) != string(y.JWKS) {
			return false
		}
	}
	return true
}

// Matches reports whether an entry applies to a workload with the given
// selectors: every selector of the entry is among them. An entry without
// selectors matches nothing.
func Matches(e Entry, set map[Selector]struct{}) bool {
	if len(e.Selectors) == 0 {
		return false
	}
	for _, s := range e.Selectors {
		if _, ok := set[s]; !ok {
			return false
		}
	}
	return true
}

// SelectorSet turns a selector list into the set Matches takes.
func SelectorSet(sel []Selector) map[Selector]struct{} {
	m := make(map[Selector]struct{}, len(sel))
	for _, s := range sel {
		m[s] = struct{}{}
	}
	return m
}

// Fetch returns what a workload with the given selectors is entitled to
// now.
func (c *Cache) Fetch(selectors []Selector) *WorkloadUpdate {
	set := SelectorSet(selectors)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.updateLocked(set, c.cfg.Now())
}

func (c *Cache) updateLocked(set map[Selector]struct{}, now time.Time) *WorkloadUpdate {
	u := &WorkloadUpdate{Bundles: c.bundles, BundlesRevision: c.bundlesRev}
	var ids []string
	for id, ce := range c.entries {
		if Matches(ce.e, set) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		u.Entries = append(u.Entries, c.entries[id].e)
		if s, ok := c.svids[id]; ok && now.Before(s.NotAfter) {
			u.Identities = append(u.Identities, s)
		} else {
			u.Pending++
		}
	}
	return u
}

// Subscription delivers a workload's updates. The channel holds at most
// one update: a slow reader gets the latest, never a stale one.
type Subscription struct {
	c    *Cache
	set  map[Selector]struct{}
	ch   chan *WorkloadUpdate
	last *WorkloadUpdate
}

// Subscribe returns a subscription for a workload with the given
// selectors. Its channel holds the current state at once.
func (c *Cache) Subscribe(selectors []Selector) *Subscription {
	s := &Subscription{c: c, set: SelectorSet(selectors), ch: make(chan *WorkloadUpdate, 1)}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs[s] = struct{}{}
	s.push(c.updateLocked(s.set, c.cfg.Now()))
	return s
}

// Updates returns the channel of updates.
func (s *Subscription) Updates() <-chan *WorkloadUpdate { return s.ch }

// Close ends the subscription.
func (s *Subscription) Close() {
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
}

// push delivers u unless it equals the last update. Called with c.mu held.
func (s *Subscription) push(u *WorkloadUpdate) {
	if s.last != nil && sameUpdate(s.last, u) {
		return
	}
	s.last = u
	select {
	case <-s.ch:
	default:
	}
	s.ch <- u
}

func sameUpdate(a, b *WorkloadUpdate) bool {
	if a.BundlesRevision != b.BundlesRevision || a.Pending != b.Pending ||
		len(a.Entries) != len(b.Entries) || len(a.Identities) != len(b.Identities) {
		return false
	}
	for i := range a.Entries {
		if a.Entries[i].ID != b.Entries[i].ID || !sameEntry(a.Entries[i], b.Entries[i]) {
			return false
		}
	}
	for i := range a.Identities {
		if a.Identities[i] != b.Identities[i] {
			return false
		}
	}
	return true
}

func (c *Cache) notifyLocked() {
	now := c.cfg.Now()
	for s := range c.subs {
		s.push(c.updateLocked(s.set, now))
	}
}

func (c *Cache) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Stats is a snapshot of the cache's size.
type Stats struct {
	// Entries, SVIDs and Subscribers count what the cache holds.
	Entries, SVIDs, Subscribers int
}

// Stats returns the cache's counts, for metrics.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{Entries: len(c.entries), SVIDs: len(c.svids), Subscribers: len(c.subs)}
}

// jwtKey names a cached JWT-SVID: one SPIFFE ID for one audience list.
type jwtKey struct {
	id       string
	audience string
}

type jwtToken struct {
	token         string
	renew, expiry time.Time
}

func newJWTKey(id spiffeid.ID, audience []string) jwtKey {
	a := slices.Clone(audience)
	slices.Sort(a)
	return jwtKey{id: id.String(), audience: strings.Join(a, "\x00")}
}

func (c *Cache) pruneJWTs() {
	c.mu.Lock()
	live := make(map[string]struct{}, len(c.entries))
	for _, ce := range c.entries {
		live[ce.e.SPIFFEID] = struct{}{}
	}
	c.mu.Unlock()
	now := c.cfg.Now()
	c.jwtMu.Lock()
	for k, t := range c.jwts {
		if _, ok := live[k.id]; !ok || !now.Before(t.expiry) {
			delete(c.jwts, k)
		}
	}
	c.jwtMu.Unlock()
}
