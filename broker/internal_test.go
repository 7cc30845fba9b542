package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/trustgate/trustgate/store"
)

func TestLimiterBoundedAndPerAddress(t *testing.T) {
	l := newLimiter(RateLimit{PerSecond: 1, Burst: 1, MaxClients: 100})
	now := time.Unix(0, 0)
	if v := l.allow("10.0.0.1:1", now); !v.ok {
		t.Fatal("first request refused")
	}
	if v := l.allow("10.0.0.1:2", now); v.ok || v.wait <= 0 || v.client != "10.0.0.1/32" {
		t.Fatalf("second request from the same host (other port): %+v", v)
	}
	if v := l.allow("10.0.0.2:1", now); !v.ok {
		t.Fatal("another address limited")
	}
	if v := l.allow("[::ffff:10.0.0.2]:1", now); v.ok {
		t.Fatal("the IPv4-mapped form of a limited address has a bucket of its own")
	}
	for i := range 1000 {
		l.allow(fmt.Sprintf("10.1.%d.%d:1", i/256, i%256), now)
	}
	if n := l.size(); n != 100 {
		t.Fatalf("tracked %d addresses, want the bound 100", n)
	}
	if newLimiter(RateLimit{}) != nil {
		t.Fatal("PerSecond 0 should disable limiting")
	}
}

// TestLimiterPrefixes checks configurable prefix lengths: an IPv6 /48 and
// an IPv4 /24 each share one bucket.
func TestLimiterPrefixes(t *testing.T) {
	l := newLimiter(RateLimit{PerSecond: 1, Burst: 1, MaxClients: 100, IPv4Prefix: 24, IPv6Prefix: 48})
	now := time.Unix(0, 0)
	for _, c := range []struct {
		addr string
		ok   bool
	}{
		{"[2001:db8:7::1]:1", true},
		{"[2001:db8:7:ffff::2]:1", false}, // same /48
		{"[2001:db8:8::1]:1", true},
		{"192.0.2.1:1", true},
		{"192.0.2.200:1", false}, // same /24
		{"192.0.3.1:1", true},
	} {
		if v := l.allow(c.addr, now); v.ok != c.ok {
			t.Errorf("%s: %+v, want ok=%v", c.addr, v, c.ok)
		}
	}
}

// TestLimiterGlobal checks the global bucket: distinct clients together
// are refused past it, and a request refused by its own client's bucket
// takes nothing from the global one.
func TestLimiterGlobal(t *testing.T) {
	l := newLimiter(RateLimit{PerSecond: 1, Burst: 1, MaxClients: 100, GlobalPerSecond: 1, GlobalBurst: 3})
	now := time.Unix(0, 0)
	if v := l.allow("192.0.2.1:1", now); !v.ok {
		t.Fatal("first request refused")
	}
	for range 10 {
		if v := l.allow("192.0.2.1:1", now); v.ok || v.global {
			t.Fatalf("a client over its own limit: %+v", v)
		}
	}
	for _, a := range []string{"192.0.2.2:1", "192.0.2.3:1"} {
		if v := l.allow(a, now); !v.ok {
			t.Fatalf("%s refused within the global burst: %+v", a, v)
		}
	}
	v := l.allow("192.0.2.4:1", now)
	if v.ok || !v.global || v.wait <= 0 {
		t.Fatalf("fourth client past the global burst: %+v", v)
	}
	if v := l.allow("192.0.2.4:1", now.Add(time.Second)); !v.ok {
		t.Fatalf("a client refused only globally lost its own token: %+v", v)
	}
	if g := newLimiter(RateLimit{GlobalPerSecond: 1, GlobalBurst: 1}); g == nil || !g.allow("192.0.2.9:1", now).ok || g.allow("192.0.2.10:1", now).ok {
		t.Fatal("a global limit alone does not limit")
	}
}

func TestMatchNodeAliases(t *testing.T) {
	sel := func(v ...string) []store.Selector {
		var out []store.Selector
		for _, s := range v {
			out = append(out, store.Selector{Type: "t", Value: s})
		}
		return out
	}
	entries := []store.Entry{
		{SPIFFEID: "a", Selectors: sel("1")},
		{SPIFFEID: "ab", Selectors: sel("1", "2")},
		{SPIFFEID: "c", Selectors: sel("3")},
		{SPIFFEID: "none"},
	}
	got := MatchNodeAliases(entries, sel("1", "2", "4"))
	if fmt.Sprint(got) != "[a ab]" {
		t.Fatalf("got %v", got)
	}
	if got := MatchNodeAliases(entries, nil); len(got) != 0 {
		t.Fatalf("empty node matched %v", got)
	}
}

func TestParseSelector(t *testing.T) {
	s, err := ParseSelector("x509pop:subject:cn:node-1")
	if err != nil || s.Type != "x509pop" || s.Value != "subject:cn:node-1" {
		t.Fatalf("%+v %v", s, err)
	}
	for _, bad := range []string{"", "x509pop", ":v", "t:"} {
		if _, err := ParseSelector(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
