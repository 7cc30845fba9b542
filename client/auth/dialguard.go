package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
)

// Resolver looks up the addresses of a host name; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// WithResolver sets the resolver that realm host names are checked with
// (default net.DefaultResolver). The addresses it returns are the ones
// token requests connect to.
func WithResolver(r Resolver) Option { return func(t *Transport) { t.resolver = r } }

// registryKey carries, in a token request's context, the URL of the
// registry whose challenge named the realm.
type registryKey struct{}

// realmGuard keeps token requests for a public registry away from private
// addresses whatever a realm's name resolves to. Its dialer resolves the
// name itself, checks every address, and connects only to the addresses it
// checked, so a name that changes its answer between a check and the
// connection (DNS rebinding) cannot pass.
type realmGuard struct {
	resolver Resolver
	// dial is the base transport's dialer, given IP addresses only.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// proxies are the host:port of proxies the base transport chose for
	// token requests; the proxy resolves and connects, so connections to
	// the proxy itself are not realm connections.
	proxies sync.Map
}

// guardedTransport returns a copy of base whose connections go through g,
// or nil when base is not an *http.Transport whose dialing it can take
// over (then token requests get checkRealmAddrs before they are sent).
func (g *realmGuard) guardedTransport(base http.RoundTripper) http.RoundTripper {
	b, ok := base.(*http.Transport)
	//lint:ignore SA1019 Dial and DialTLS are deprecated, but http.Transport still honours them
	if !ok || b.DialTLSContext != nil || b.DialTLS != nil || b.Dial != nil {
		return nil
	}
	g.dial = b.DialContext
	if g.dial == nil {
		g.dial = (&net.Dialer{}).DialContext
	}
	c := b.Clone()
	c.DialContext = g.dialContext
	if b.Proxy != nil {
		c.Proxy = func(req *http.Request) (*url.URL, error) {
			p, err := b.Proxy(req)
			if err != nil || p == nil {
				return p, err
			}
			if err := g.check(req.Context(), req.URL.Hostname(), registryOf(req.Context())); err != nil {
				return nil, err
			}
			g.proxies.Store(proxyAddr(p), true)
			return p, nil
		}
	}
	return c
}

// proxyAddr is the host:port http.Transport dials for proxy p.
func proxyAddr(p *url.URL) string {
	port := p.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443", "socks5": "1080", "socks5h": "1080"}[strings.ToLower(p.Scheme)]
	}
	return net.JoinHostPort(strings.ToLower(p.Hostname()), port)
}

func registryOf(ctx context.Context) *url.URL {
	u, _ := ctx.Value(registryKey{}).(*url.URL)
	return u
}

// dialContext resolves addr's host, refuses it if any of its addresses is
// private while the registry is public, and connects to the checked
// addresses in order.
func (g *realmGuard) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("token request: dial %s: %w", addr, err)
	}
	if _, ok := g.proxies.Load(strings.ToLower(addr)); ok {
		return g.dial(ctx, network, addr)
	}
	registry := registryOf(ctx)
	if registry == nil {
		return nil, fmt.Errorf("token request: dial %s: no registry in the request context", addr)
	}
	ips, err := g.lookup(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("token request: %w", err)
	}
	if err := g.refusePrivate(ctx, host, ips, registry); err != nil {
		return nil, err
	}
	var errs []error
	for _, ip := range ips {
		c, err := g.dial(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// check applies the address rule to host ahead of a request that g does
// not dial itself (a custom base transport, or a proxy). It is not proof
// against DNS rebinding, and a name this host cannot resolve is left to
// whoever connects.
func (g *realmGuard) check(ctx context.Context, host string, registry *url.URL) error {
	if registry == nil {
		return errors.New("token request: no registry in the request context")
	}
	ips, err := g.lookup(ctx, host)
	if err != nil {
		return nil
	}
	return g.refusePrivate(ctx, host, ips, registry)
}

// refusePrivate refuses host, resolved to ips, if any of them is private
// while the registry is public: a registry that itself resolves only to
// private addresses may use a private realm.
func (g *realmGuard) refusePrivate(ctx context.Context, host string, ips []netip.Addr, registry *url.URL) error {
	for _, ip := range ips {
		if isPrivateAddr(ip) && !g.registryPrivate(ctx, registry) {
			return fmt.Errorf("%w: %s resolves to private address %s but registry %s is public", ErrRealmRefused, host, ip, registry.Host)
		}
	}
	return nil
}

// registryPrivate reports whether the registry is a private address or
// name, or a name whose every address is private.
func (g *realmGuard) registryPrivate(ctx context.Context, registry *url.URL) bool {
	if isPrivateHost(registry.Hostname()) {
		return true
	}
	ips, err := g.lookup(ctx, registry.Hostname())
	if err != nil {
		return false
	}
	for _, ip := range ips {
		if !isPrivateAddr(ip) {
			return false
		}
	}
	return true
}

// lookup returns host's addresses: itself if it is an IP literal.
func (g *realmGuard) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, nil
	}
	ips, err := g.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("resolve %s: no addresses", host)
	}
	return ips, nil
}
