package cache

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// maxJWTs is the cache size at which tokens due for renewal are swept.
const maxJWTs = 4096

// FetchJWTSVID returns a JWT-SVID for the entry and audience. A cached
// token is reused until half of its lifetime has passed; then a new one is
// minted. When minting fails, a cached token that has not expired is
// returned instead, so workloads keep working while the broker is away.
func (c *Cache) FetchJWTSVID(ctx context.Context, e Entry, audience []string) (string, error) {
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		return "", fmt.Errorf("cache: entry %s: %w", e.ID, err)
	}
	key := newJWTKey(id, audience)
	now := c.cfg.Now()
	c.jwtMu.Lock()
	t, ok := c.jwts[key]
	c.jwtMu.Unlock()
	if ok && now.Before(t.renew) {
		return t.token, nil
	}
	v, err, _ := c.jwtSF.Do(key.id+"\x01"+key.audience, func() (any, error) {
		cctx, cancel := context.WithTimeout(ctx, c.cfg.IssueTimeout)
		defer cancel()
		tok, err := c.cfg.Issuer.MintJWTSVID(cctx, e.ID, id, audience)
		if err != nil {
			return nil, err
		}
		s, err := jwtsvid.ParseInsecure(tok, audience)
		if err != nil {
			return nil, fmt.Errorf("minted JWT-SVID: %w", err)
		}
		if s.ID != id {
			return nil, fmt.Errorf("minted JWT-SVID is for %s, not %s", s.ID, id)
		}
		got := c.cfg.Now()
		if !got.Before(s.Expiry) {
			return nil, fmt.Errorf("minted JWT-SVID expired at %s", s.Expiry)
		}
		nt := jwtToken{token: tok, expiry: s.Expiry, renew: got.Add(s.Expiry.Sub(got) / 2)}
		c.jwtMu.Lock()
		if len(c.jwts) >= maxJWTs {
			for k, old := range c.jwts {
				if !got.Before(old.renew) {
					delete(c.jwts, k)
				}
			}
		}
		c.jwts[key] = nt
		c.jwtMu.Unlock()
		return nt, nil
	})
	if err != nil {
		if ok && c.cfg.Now().Before(t.expiry) {
			c.log.Warn("cache: JWT-SVID renewal failed; serving the cached token", "spiffe_id", id.String(), "err", err)
			return t.token, nil
		}
		return "", fmt.Errorf("cache: mint JWT-SVID for %s: %w", id, err)
	}
	return v.(jwtToken).token, nil
}
