package broker

import (
	"container/list"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults for the zero values of RateLimit's fields.
const (
	// DefaultIPv4Prefix and DefaultIPv6Prefix are the prefix lengths by
	// which client addresses share a bucket.
	DefaultIPv4Prefix = 32
	DefaultIPv6Prefix = 64
	// DefaultMaxClients is how many client networks are tracked.
	DefaultMaxClients = 10000
)

// RateLimit bounds requests per client network and in total. Each limited
// route group (attestation, /token) has its own buckets.
type RateLimit struct {
	// PerSecond is the sustained rate per client network; 0 disables the
	// per-client limit.
	PerSecond float64
	// Burst is how many requests a client network may send at once.
	Burst int
	// MaxClients bounds the networks tracked (0 means
	// DefaultMaxClients); the least recently seen network is forgotten
	// first, so memory stays bounded under a flood of addresses.
	MaxClients int
	// IPv4Prefix and IPv6Prefix are the prefix lengths by which client
	// addresses share a bucket (0 means DefaultIPv4Prefix and
	// DefaultIPv6Prefix): one host usually holds a whole IPv6 /64, so
	// limiting single IPv6 addresses would limit nothing.
	IPv4Prefix, IPv6Prefix int
	// GlobalPerSecond is the sustained rate of all clients together; 0
	// disables the global limit.
	GlobalPerSecond float64
	// GlobalBurst is how many requests all clients may send at once.
	GlobalBurst int
}

// limiter is a token bucket per client network in a bounded LRU map, and
// one global bucket.
type limiter struct {
	cfg    RateLimit
	global *rate.Limiter
	mu     sync.Mutex
	byKey  map[string]*list.Element
	lru    *list.List // front: most recently seen
}

type limiterEntry struct {
	key string
	lim *rate.Limiter
}

func newLimiter(cfg RateLimit) *limiter {
	if cfg.PerSecond <= 0 && cfg.GlobalPerSecond <= 0 {
		return nil
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = DefaultMaxClients
	}
	if cfg.IPv4Prefix <= 0 || cfg.IPv4Prefix > 32 {
		cfg.IPv4Prefix = DefaultIPv4Prefix
	}
	if cfg.IPv6Prefix <= 0 || cfg.IPv6Prefix > 128 {
		cfg.IPv6Prefix = DefaultIPv6Prefix
	}
	l := &limiter{cfg: cfg, byKey: map[string]*list.Element{}, lru: list.New()}
	if cfg.GlobalPerSecond > 0 {
		l.global = rate.NewLimiter(rate.Limit(cfg.GlobalPerSecond), cfg.GlobalBurst)
	}
	return l
}

// verdict is the outcome of one allow call.
type verdict struct {
	ok bool
	// wait is how long until a refused client may try again.
	wait time.Duration
	// client names the bucket: a network such as "2001:db8::/64".
	client string
	// global is set when the global limit refused the request.
	global bool
}

// clientKey returns the network that remoteAddr (host:port) belongs to,
// such as "2001:db8::/64", or, for an address that is not an IP, the
// address itself.
func (l *limiter) clientKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.WithZone("").Unmap()
	bits := l.cfg.IPv6Prefix
	if ip.Is4() {
		bits = l.cfg.IPv4Prefix
	}
	p, _ := ip.Prefix(bits)
	return p.String()
}

// allow reports whether the client at remoteAddr may proceed at now, and if
// not, how long until it may. A request refused by its client's bucket
// takes nothing from the global one.
func (l *limiter) allow(remoteAddr string, now time.Time) verdict {
	if l == nil {
		return verdict{ok: true}
	}
	key := l.clientKey(remoteAddr)
	l.mu.Lock()
	defer l.mu.Unlock()
	var client *rate.Reservation
	if l.cfg.PerSecond > 0 {
		client = l.bucket(key).ReserveN(now, 1)
		if d := client.DelayFrom(now); d > 0 {
			client.CancelAt(now)
			return verdict{wait: d, client: key}
		}
	}
	if l.global != nil {
		r := l.global.ReserveN(now, 1)
		if d := r.DelayFrom(now); d > 0 {
			r.CancelAt(now)
			if client != nil {
				client.CancelAt(now)
			}
			return verdict{wait: d, client: key, global: true}
		}
	}
	return verdict{ok: true, client: key}
}

// bucket returns the client's limiter, creating it and forgetting the least
// recently seen client when the map is full. l.mu must be held.
func (l *limiter) bucket(key string) *rate.Limiter {
	if e, ok := l.byKey[key]; ok {
		l.lru.MoveToFront(e)
		return e.Value.(*limiterEntry).lim
	}
	if l.lru.Len() >= l.cfg.MaxClients {
		old := l.lru.Back()
		l.lru.Remove(old)
		delete(l.byKey, old.Value.(*limiterEntry).key)
	}
	lim := rate.NewLimiter(rate.Limit(l.cfg.PerSecond), l.cfg.Burst)
	l.byKey[key] = l.lru.PushFront(&limiterEntry{key: key, lim: lim})
	return lim
}

// size is how many client networks are tracked.
func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}
