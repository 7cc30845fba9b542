package svid

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/trustgate/trustgate/store"
)

// maxCachedIDs bounds the entry cache; callers choose the SPIFFE IDs they
// ask for, so misses are cached too and the cache is emptied when full.
const maxCachedIDs = 16384

// entryCache keeps the registration entries of each requested SPIFFE ID for
// ttl, so that issuance does not query the store every time. The store's
// change notifications (store.TopicEntries) empty it, so that an entry
// deleted on any replica stops granting within the notification's delay,
// not ttl; ttl only bounds staleness when a notification is lost.
type entryCache struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]cachedEntries
	// gen counts invalidations: a lookup that started before one must
	// not cache what it read.
	gen uint64
}

type cachedEntries struct {
	entries []store.Entry
	expires time.Time
}

// invalidate empties the cache.
func (c *entryCache) invalidate(store.Change) {
	c.mu.Lock()
	c.gen++
	c.m = nil
	c.mu.Unlock()
}

// get returns the entries granting id, from the cache or the store.
func (c *entryCache) get(ctx context.Context, st store.Entries, id string, now time.Time) ([]store.Entry, error) {
	var gen uint64
	if c.ttl > 0 {
		c.mu.Lock()
		hit, ok := c.m[id]
		gen = c.gen
		c.mu.Unlock()
		if ok && now.Before(hit.expires) {
			return hit.entries, nil
		}
	}
	entries, err := st.List(ctx, store.EntryFilter{SPIFFEID: id})
	if err != nil {
		return nil, fmt.Errorf("svid: list entries for %s: %w", id, err)
	}
	if c.ttl > 0 {
		c.mu.Lock()
		if c.gen == gen {
			if c.m == nil || len(c.m) >= maxCachedIDs {
				c.m = make(map[string]cachedEntries)
			}
			c.m[id] = cachedEntries{entries: entries, expires: now.Add(c.ttl)}
		}
		c.mu.Unlock()
	}
	return entries, nil
}
