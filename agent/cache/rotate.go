package cache

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Run issues an X.509-SVID for every entry that has none and renews each
// at half of its remaining lifetime, until ctx ends. A failed signing is
// retried with backoff; meanwhile the previous SVID is served until it
// expires. Run returns ctx's error.
func (c *Cache) Run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		case <-c.kick:
		}
		next := c.rotate(ctx)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(time.Until(next), time.Millisecond))
	}
}

// pendingSign is one SVID being made: its entry as it was when the key was
// generated, and the key.
type pendingSign struct {
	ce  *cachedEntry
	key crypto.Signer
	req X509Request
}

// rotate signs what is due and returns when it should run next.
func (c *Cache) rotate(ctx context.Context) time.Time {
	now := c.cfg.Now()
	c.mu.Lock()
	var due []*cachedEntry
	for id, ce := range c.entries {
		if r, ok := c.retries[id]; ok && now.Before(r.at) {
			continue
		}
		if s, ok := c.svids[id]; ok && now.Before(s.renewAt) {
			continue
		}
		due = append(due, ce)
	}
	c.mu.Unlock()

	for len(due) > 0 && ctx.Err() == nil {
		n := min(len(due), c.cfg.BatchSize)
		c.signBatch(ctx, due[:n])
		due = due[n:]
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	// Expiries change what subscribers see even without a signing.
	c.notifyLocked()
	next := now.Add(time.Hour)
	for id := range c.entries {
		if r, ok := c.retries[id]; ok {
			next = minTime(next, r.at)
			continue
		}
		if s, ok := c.svids[id]; ok {
			next = minTime(next, s.renewAt)
			next = minTime(next, s.NotAfter)
		}
	}
	return next
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (c *Cache) signBatch(ctx context.Context, batch []*cachedEntry) {
	ps := make([]pendingSign, 0, len(batch))
	failed := map[string]error{}
	for _, ce := range batch {
		key, csr, err := newCSR(ce)
		if err != nil {
			failed[ce.e.ID] = err
			continue
		}
		ps = append(ps, pendingSign{ce: ce, key: key, req: X509Request{EntryID: ce.e.ID, SPIFFEID: ce.id, CSR: csr}})
	}
	reqs := make([]X509Request, len(ps))
	for i, p := range ps {
		reqs[i] = p.req
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.IssueTimeout)
	results, err := c.cfg.Issuer.SignX509SVIDs(cctx, reqs)
	cancel()
	byID := make(map[string]X509Result, len(results))
	for _, r := range results {
		byID[r.EntryID] = r
	}

	now := c.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range ps {
		id := p.ce.e.ID
		if c.entries[id] == nil || c.entries[id].e.SPIFFEID != p.ce.e.SPIFFEID {
			continue // deleted or changed meanwhile; the next round handles it
		}
		r, ok := byID[id]
		switch {
		case err != nil:
			failed[id] = err
		case !ok:
			failed[id] = errors.New("issuer returned no SVID")
		case r.Err != nil:
			failed[id] = r.Err
		default:
			s, verr := newIdentity(p, r.Chain, now)
			if verr != nil {
				failed[id] = verr
				continue
			}
			c.svids[id] = s
			delete(c.retries, id)
		}
	}
	for id, ferr := range failed {
		if c.entries[id] == nil {
			continue
		}
		r := c.retries[id]
		r.delay = min(max(2*r.delay, c.cfg.RetryMin), c.cfg.RetryMax)
		r.at = now.Add(r.delay)
		c.retries[id] = r
		c.log.Warn("cache: X.509-SVID signing failed", "entry", id, "spiffe_id", c.entries[id].e.SPIFFEID, "retry_in", r.delay, "err", ferr)
	}
	c.notifyLocked()
}

// newCSR makes a P-256 key and a CSR for the entry's SPIFFE ID.
func newCSR(ce *cachedEntry) (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	u := ce.id.URL()
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return key, csr, nil
}

// newIdentity checks a signed chain against the request: the leaf must
// certify our key and the entry's SPIFFE ID.
func newIdentity(p pendingSign, chain []*x509.Certificate, now time.Time) (*Identity, error) {
	if len(chain) == 0 {
		return nil, errors.New("issuer returned an empty chain")
	}
	leaf := chain[0]
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(p.key.Public()) {
		return nil, errors.New("issued SVID does not certify the requested key")
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("issued SVID: %w", err)
	}
	if id != p.ce.id {
		return nil, fmt.Errorf("issued SVID is for %s, not %s", id, p.ce.id)
	}
	if !now.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("issued SVID expired at %s", leaf.NotAfter)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(p.key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	var der []byte
	for _, c := range chain {
		der = append(der, c.Raw...)
	}
	start := now
	if leaf.NotBefore.After(now) {
		start = leaf.NotBefore
	}
	return &Identity{
		Entry: p.ce.e, ID: id, ChainDER: der, KeyDER: keyDER,
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter,
		renewAt: start.Add(leaf.NotAfter.Sub(start) / 2),
	}, nil
}
