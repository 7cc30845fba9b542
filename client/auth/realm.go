package auth

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

// ErrRealmRefused reports a Bearer realm the transport will not send
// credentials to.
var ErrRealmRefused = errors.New("bearer realm refused")

// privatePrefixes are address ranges that a public registry's realm must not
// point into: loopback, RFC 1918, CGNAT, link-local (cloud metadata
// included), unique-local, unspecified and multicast.
var privatePrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// isPrivateHost reports whether a URL host names a non-public address: an IP
// literal in privatePrefixes (IPv4-mapped forms unwrapped), "localhost", or a
// name under the .localhost, .local or .internal special-use domains.
func isPrivateHost(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") || strings.HasSuffix(h, ".local") || strings.HasSuffix(h, ".internal") {
		return true
	}
	addr, err := netip.ParseAddr(h)
	return err == nil && isPrivateAddr(addr)
}

// isPrivateAddr reports whether addr is in privatePrefixes (IPv4-mapped
// forms unwrapped).
func isPrivateAddr(addr netip.Addr) bool {
	addr = addr.Unmap().WithZone("")
	for _, p := range privatePrefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// validateRealm checks a Bearer realm against the registry URL that sent
// the challenge: it must be an absolute http(s) URL without user info; an
// https registry may not downgrade to an http realm; and a registry on a
// public host may not send the client to a private-address realm.
func validateRealm(realm string, registry *url.URL) (*url.URL, error) {
	if realm == "" {
		return nil, fmt.Errorf("%w: empty realm", ErrRealmRefused)
	}
	u, err := url.Parse(realm)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrRealmRefused, realm, err)
	}
	if err := checkRealmURL(u, registry); err != nil {
		return nil, err
	}
	return u, nil
}

// checkRealmURL applies the realm rules to u; it also guards every redirect
// hop of a token request.
func checkRealmURL(u, registry *url.URL) error {
	switch u.Scheme {
	case "https":
	case "http":
		if registry.Scheme == "https" {
			return fmt.Errorf("%w: %q downgrades https registry %s to http", ErrRealmRefused, u.Redacted(), registry.Host)
		}
	default:
		return fmt.Errorf("%w: %q: scheme must be http or https", ErrRealmRefused, u.Redacted())
	}
	if u.Host == "" || u.User != nil {
		return fmt.Errorf("%w: %q: need a host and no user info", ErrRealmRefused, u.Redacted())
	}
	if isPrivateHost(u.Hostname()) && !isPrivateHost(registry.Hostname()) {
		return fmt.Errorf("%w: %q is a private address but registry %s is public", ErrRealmRefused, u.Redacted(), registry.Host)
	}
	return nil
}
