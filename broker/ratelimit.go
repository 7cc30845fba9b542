package broker

import (
	"container/list"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// RateLimit bounds attestation requests per client address.
type RateLimit struct {
	// PerSecond is the sustained rate; 0 disables limiting.
	PerSecond float64
	// Burst is how many requests may come at once.
	Burst int
	// MaxClients bounds the addresses tracked; the least recently seen
	// address is forgotten first, so memory stays bounded under a flood
	// of addresses.
	MaxClients int
}

// limiter is a token bucket per client address in a bounded LRU map.
type limiter struct {
	cfg   RateLimit
	mu    sync.Mutex
	byKey map[string]*list.Element
	lru   *list.List // front: most recently seen
}

type limiterEntry struct {
	key string
	lim *rate.Limiter
}

func newLimiter(cfg RateLimit) *limiter {
	if cfg.PerSecond <= 0 {
		return nil
	}
	return &limiter{cfg: cfg, byKey: make(map[string]*list.Element), lru: list.New()}
}

// allow reports whether the client at remoteAddr (host:port) may proceed at
// now, and if not, how long until it may.
func (l *limiter) allow(remoteAddr string, now time.Time) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var lim *rate.Limiter
	if e, ok := l.byKey[host]; ok {
		l.lru.MoveToFront(e)
		lim = e.Value.(*limiterEntry).lim
	} else {
		if l.lru.Len() >= l.cfg.MaxClients {
			old := l.lru.Back()
			l.lru.Remove(old)
			delete(l.byKey, old.Value.(*limiterEntry).key)
		}
		lim = rate.NewLimiter(rate.Limit(l.cfg.PerSecond), l.cfg.Burst)
		l.byKey[host] = l.lru.PushFront(&limiterEntry{key: host, lim: lim})
	}
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// size is how many addresses are tracked.
func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}
