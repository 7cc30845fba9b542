package auth_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/trustgate/trustgate/client/auth"
)

// fakeDNS answers from a table; next, when set, replaces a name's answer
// after its first lookup (DNS rebinding).
type fakeDNS struct {
	mu     sync.Mutex
	hosts  map[string][]string
	next   map[string][]string
	lookup map[string]int
}

func (d *fakeDNS) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lookup == nil {
		d.lookup = map[string]int{}
	}
	d.lookup[host]++
	answer, ok := d.hosts[host]
	if n, rebind := d.next[host]; rebind && d.lookup[host] > 1 {
		answer = n
	}
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []netip.Addr
	for _, a := range answer {
		out = append(out, netip.MustParseAddr(a))
	}
	return out, nil
}

// fakeNet stands for the network: it connects each address it knows to a
// loopback test server and records every address anything tried to reach.
// Nothing is ever sent to a private address other than loopback.
type fakeNet struct {
	mu     sync.Mutex
	routes map[string]string
	dialed []string
}

func (n *fakeNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	n.mu.Lock()
	n.dialed = append(n.dialed, addr)
	to, ok := n.routes[addr]
	n.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("fake network: no route to %s", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, to)
}

func (n *fakeNet) dials() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.dialed...)
}

// world is a registry at registry.test:5000 whose realm is
// http://auth.test:5000/token, both served by one loopback server that the
// fake network reaches under the registry's name, its public address
// 203.0.113.5 and whatever addresses a test routes.
type world struct {
	dns  *fakeDNS
	net  *fakeNet
	srv  *httptest.Server
	tr   *auth.Transport
	seen chan string
}

func newWorld(t *testing.T, registryIPs, realmIPs []string, proxy *url.URL) *world {
	t.Helper()
	w := &world{seen: make(chan string, 100)}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			w.seen <- "token via " + r.Host
			fmt.Fprint(rw, `{"token":"t"}`)
			return
		}
		if r.Header.Get("Authorization") != "Bearer t" {
			rw.Header().Set("WWW-Authenticate", `Bearer realm="http://auth.test:5000/token",service="s"`)
			rw.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(w.srv.Close)
	lo := w.srv.Listener.Addr().String()
	w.dns = &fakeDNS{hosts: map[string][]string{"registry.test": registryIPs, "auth.test": realmIPs}}
	w.net = &fakeNet{routes: map[string]string{"registry.test:5000": lo, "203.0.113.5:5000": lo, "203.0.113.9:5000": lo, "10.0.0.6:5000": lo, "proxy.test:3128": lo}}
	base := &http.Transport{DialContext: w.net.dial, DisableKeepAlives: true}
	if proxy != nil {
		base.Proxy = http.ProxyURL(proxy)
	}
	w.tr = auth.New(auth.WithBase(base), auth.WithResolver(w.dns),
		auth.WithCredentials(auth.StaticCredential("registry.test:5000", auth.Credential{Username: "u", Password: "p"})))
	return w
}

func (w *world) get(repo string) error {
	req, _ := http.NewRequest(http.MethodGet, "http://registry.test:5000/v2/"+repo+"/manifests/v1", nil)
	resp, err := w.tr.RoundTrip(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// TestRealmNameResolvingToPrivateIsRefusedBeforeConnecting gives a public
// registry a realm whose name resolves to loopback, RFC 1918, link-local,
// unique-local, IPv4-mapped or a mix of public and private addresses: the
// token request is refused with ErrRealmRefused, and nothing dialed any of
// those addresses.
func TestRealmNameResolvingToPrivateIsRefusedBeforeConnecting(t *testing.T) {
	for _, realmIPs := range [][]string{
		{"127.0.0.1"}, {"10.1.2.3"}, {"::1"}, {"169.254.169.254"}, {"fe80::1"},
		{"fd00::1"}, {"::ffff:192.168.1.1"}, {"100.64.0.1"}, {"203.0.113.9", "10.1.2.3"},
	} {
		w := newWorld(t, []string{"203.0.113.5"}, realmIPs, nil)
		err := w.get("a")
		if !errors.Is(err, auth.ErrRealmRefused) {
			t.Errorf("realm at %v: want ErrRealmRefused, got %v", realmIPs, err)
		}
		for _, d := range w.net.dials() {
			if d != "registry.test:5000" {
				t.Errorf("realm at %v: dialed %s", realmIPs, d)
			}
		}
		if len(w.seen) != 0 {
			t.Errorf("realm at %v: a token request arrived", realmIPs)
		}
	}
}

// TestRealmPublicOrBothPrivate checks what is allowed: a realm name with
// public addresses (connected by the address that was checked, not by name),
// and a private realm behind a registry whose own name resolves only to
// private addresses.
func TestRealmPublicOrBothPrivate(t *testing.T) {
	w := newWorld(t, []string{"203.0.113.5"}, []string{"203.0.113.9"}, nil)
	if err := w.get("a"); err != nil {
		t.Fatal(err)
	}
	if d := w.net.dials(); !containsStr(d, "203.0.113.9:5000") || containsStr(d, "auth.test:5000") {
		t.Fatalf("dials %v: want the checked address, never the name", d)
	}
	w = newWorld(t, []string{"10.0.0.5"}, []string{"10.0.0.6"}, nil)
	if err := w.get("a"); err != nil {
		t.Fatalf("private registry with a private realm: %v", err)
	}
}

// TestRealmDNSRebinding answers the realm name with a public address once
// and a private one afterwards: the second connection, which a check made
// before dialing by name would have let through, is refused.
func TestRealmDNSRebinding(t *testing.T) {
	w := newWorld(t, []string{"203.0.113.5"}, []string{"203.0.113.9"}, nil)
	w.dns.next = map[string][]string{"auth.test": {"10.0.0.6"}}
	if err := w.get("a"); err != nil {
		t.Fatal(err)
	}
	err := w.get("b")
	if !errors.Is(err, auth.ErrRealmRefused) {
		t.Fatalf("after rebinding: want ErrRealmRefused, got %v", err)
	}
	if d := w.net.dials(); containsStr(d, "10.0.0.6:5000") {
		t.Fatalf("dialed the rebound address: %v", d)
	}
}

// TestRealmThroughProxy sends token requests through an HTTP proxy on a
// private address: the connection to the proxy is allowed, and the realm's
// own addresses are still checked before the proxy is asked.
func TestRealmThroughProxy(t *testing.T) {
	proxy, _ := url.Parse("http://proxy.test:3128")
	w := newWorld(t, []string{"203.0.113.5"}, []string{"203.0.113.9"}, proxy)
	w.dns.hosts["proxy.test"] = []string{"10.9.9.9"}
	if err := w.get("a"); err != nil {
		t.Fatal(err)
	}
	if got := <-w.seen; got != "token via auth.test:5000" {
		t.Fatalf("token request %q", got)
	}
	w = newWorld(t, []string{"203.0.113.5"}, []string{"10.1.2.3"}, proxy)
	if err := w.get("a"); !errors.Is(err, auth.ErrRealmRefused) || len(w.seen) != 0 {
		t.Fatalf("private realm through the proxy: err=%v, %d token requests", err, len(w.seen))
	}
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
