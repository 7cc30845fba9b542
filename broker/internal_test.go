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
	if ok, _ := l.allow("10.0.0.1:1", now); !ok {
		t.Fatal("first request refused")
	}
	if ok, wait := l.allow("10.0.0.1:2", now); ok || wait <= 0 {
		t.Fatal("second request from the same host (other port) allowed")
	}
	if ok, _ := l.allow("10.0.0.2:1", now); !ok {
		t.Fatal("another address limited")
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
