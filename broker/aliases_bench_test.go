package broker_test

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/storekinds"
	"github.com/trustgate/trustgate/store/storetest"
)

// BenchmarkRCARNodeAliases times complete sample-TEE attestations whose
// node matches 2 of 10 node alias entries, as one store grows to 1k, 10k
// and 100k entries (the rest under 1,000 agents): the alias lookup is
// indexed, so the rate should not fall with the store's size (issue 15).
func BenchmarkRCARNodeAliases(b *testing.B) {
	server := "spiffe://" + td.Name() + "/spire/server"
	mk := func(i int) store.Entry {
		sel := store.Selector{Type: "sample", Value: "svn:1"}
		switch {
		case i < 2:
			return store.Entry{SPIFFEID: fmt.Sprint("spiffe://example.org/node/match-", i), ParentID: server, Selectors: []store.Selector{sel}}
		case i < 10:
			sel.Value = fmt.Sprint("svn:", 100+i)
			return store.Entry{SPIFFEID: fmt.Sprint("spiffe://example.org/node/other-", i), ParentID: server, Selectors: []store.Selector{sel}}
		}
		return store.Entry{SPIFFEID: fmt.Sprint("spiffe://example.org/w/", i), ParentID: fmt.Sprint("spiffe://example.org/spire/agent/x/", i%1000),
			Selectors: []store.Selector{{Type: "unix", Value: fmt.Sprint("uid:", i)}}}
	}
	evidence := func(_ int, ch rcartest.Challenge, pub map[string]string) any {
		rd, err := rcartest.ReportData("sha384", pub, ch.Nonce, "")
		if err != nil {
			b.Fatal(err)
		}
		return rcartest.SampleEvidence("1", rd)
	}
	for _, s := range storekinds.All {
		b.Run(s.Name, func(b *testing.B) {
			st := s.Open(b)
			h := newHarness(b, harnessOpts{store: st})
			have := 0
			for _, n := range []int{1_000, 10_000, 100_000} {
				b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) {
					storetest.Fill(b, st, have, n, mk)
					have = n
					checkAliases(b, h, evidence, "spiffe://example.org/node/match-0", "spiffe://example.org/node/match-1")
					runRCAR(b, h, "sample", evidence)
				})
			}
		})
	}
}

// checkAliases attests once and fails unless the token names every alias.
func checkAliases(b *testing.B, h *harness, evidence func(int, rcartest.Challenge, map[string]string) any, aliases ...string) {
	b.Helper()
	c := h.client()
	pub := teeKey(b)
	ch, _, err := c.Auth("sample", "")
	if err != nil {
		b.Fatal(err)
	}
	tok, err := c.Attest(rcartest.Attestation{
		RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: pub},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: evidence(0, ch, pub)},
	})
	if err != nil {
		b.Fatal(err)
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		b.Fatalf("token has %d parts", len(parts))
	}
	claims, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		b.Fatal(err)
	}
	for _, a := range aliases {
		if !strings.Contains(string(claims), `"`+a+`"`) {
			b.Fatalf("token claims %s lack alias %s", claims, a)
		}
	}
}
