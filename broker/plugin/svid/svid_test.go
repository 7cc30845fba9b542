package svid_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/store"
)

func TestX509SVIDFromCSRVerifiesWithGoSPIFFE(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	f := newFixture(t, start, svid.DefaultConfig())
	_, der := newCSR(t, workloadID)
	for name, body := range map[string][]byte{"der": der, "pem": pemCSR(der)} {
		t.Run(name, func(t *testing.T) {
			out, chain := issueX509(t, f.p, agent(), nil, body)
			if len(chain) != 2 {
				t.Fatalf("chain has %d certificates, want leaf and intermediate", len(chain))
			}
			id, chains, err := x509svid.ParseAndVerify(chain, bundle(t, f.p), x509svid.WithTime(start))
			if err != nil {
				t.Fatalf("go-spiffe rejects the SVID: %v", err)
			}
			if id.String() != workloadID || out.SPIFFEID != workloadID {
				t.Fatalf("SVID is for %s (answer says %s), want %s", id, out.SPIFFEID, workloadID)
			}
			if len(chains) != 1 || len(chains[0]) != 3 {
				t.Fatalf("verified chains %d, want one chain leaf -> intermediate -> root", len(chains))
			}
			leaf := chains[0][0]
			if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature || len(leaf.URIs) != 1 {
				t.Fatalf("leaf: IsCA %v, KeyUsage %v, %d URIs", leaf.IsCA, leaf.KeyUsage, len(leaf.URIs))
			}
			if !slices.Equal(leaf.DNSNames, []string{"web.prod.svc", "web"}) {
				t.Fatalf("DNS names %v, want the entry's", leaf.DNSNames)
			}
			if want := start.Add(10 * time.Minute); !leaf.NotAfter.Equal(want) || out.ExpiresAt != want.Unix() {
				t.Fatalf("NotAfter %v (expires_at %d), want the entry's TTL: %v", leaf.NotAfter, out.ExpiresAt, want)
			}
			if !chains[0][1].IsCA || !chains[0][2].IsCA || chains[0][2].Subject.String() != chains[0][2].Issuer.String() {
				t.Fatal("chain is not leaf -> intermediate CA -> self-signed root")
			}
			// The SVID expires, and go-spiffe then refuses it.
			if _, _, err := x509svid.ParseAndVerify(chain, bundle(t, f.p), x509svid.WithTime(start.Add(11*time.Minute))); err == nil {
				t.Fatal("an expired SVID verifies")
			}
		})
	}
}

func TestX509SVIDGrants(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	f := newFixture(t, start, svid.DefaultConfig())
	cases := []struct {
		name   string
		caller plugin.Caller
		id     string
		ttl    time.Duration
	}{
		{"own agent ID, default TTL", agent(), agentID, time.Hour},
		{"entry under a node alias", agent(), "spiffe://example.org/ns/prod/sa/db", time.Hour},
		{"entry under the caller", agent(), workloadID, 10 * time.Minute},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, der := newCSR(t)
			_, chain := issueX509(t, f.p, c.caller, url.Values{"spiffe_id": {c.id}}, der)
			id, chains, err := x509svid.ParseAndVerify(chain, bundle(t, f.p), x509svid.WithTime(start))
			if err != nil || id.String() != c.id {
				t.Fatalf("got %v, %v; want %s", id, err, c.id)
			}
			if got := chains[0][0].NotAfter.Sub(start).Round(time.Second); got != c.ttl {
				t.Fatalf("TTL %v, want %v", got, c.ttl)
			}
		})
	}
}

func TestX509SVIDRefusals(t *testing.T) {
	f := newFixture(t, time.Now(), svid.DefaultConfig())
	_, good := newCSR(t)
	_, twoURIs := newCSR(t, workloadID, "spiffe://example.org/other")
	_, otherSAN := newCSR(t, "spiffe://example.org/other")
	_, httpSAN := newCSR(t, "https://example.org/x")
	tampered := slices.Clone(good)
	tampered[len(tampered)-5] ^= 0xff
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weak := csrFor(t, rsaKey)
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	q := func(id ...string) url.Values { return url.Values{"spiffe_id": id} }
	cases := []struct {
		name   string
		caller plugin.Caller
		query  url.Values
		body   []byte
		status int
		detail string
	}{
		{"not the entry's parent", agent(), q("spiffe://example.org/ns/other/sa/x"), good, 403, "may not hold"},
		{"no entry at all", agent(), q("spiffe://example.org/nobody"), good, 403, "may not hold"},
		{"foreign trust domain", agent(), q("spiffe://evil.org/ns/prod/sa/web"), good, 403, "not in trust domain"},
		{"alias is not a grant of its own", agent(), q(aliasID), good, 403, "may not hold"},
		{"admin caller", plugin.Caller{Admin: true, Subject: "root"}, q(agentID), good, 403, "attested callers only"},
		{"unattested caller", plugin.Caller{}, q(agentID), good, 403, "attested callers only"},
		{"CSR SAN differs from spiffe_id", agent(), q(workloadID), otherSAN, 400, "differs"},
		{"two URI SANs", agent(), nil, twoURIs, 400, "exactly one"},
		{"URI SAN not SPIFFE", agent(), nil, httpSAN, 400, "not a SPIFFE ID"},
		{"no ID anywhere", agent(), nil, good, 400, "no SPIFFE ID"},
		{"spiffe_id twice", agent(), q(workloadID, workloadID), good, 400, "2 times"},
		{"spiffe_id malformed", agent(), q("spiffe://Example.org/x"), good, 400, "spiffe_id"},
		{"tampered CSR", agent(), q(agentID), tampered, 400, "CSR"},
		{"RSA-1024", agent(), q(agentID), weak, 400, "1024 bits"},
		{"P-224", agent(), q(agentID), csrFor(t, p224), 400, "P-224"},
		{"garbage", agent(), q(agentID), []byte("hello"), 400, "PKCS#10"},
		{"empty body", agent(), q(agentID), nil, 400, "PKCS#10"},
		{"PEM of another type", agent(), q(agentID), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 400, "CERTIFICATE REQUEST"},
		{"two PEM blocks", agent(), q(agentID), append(pemCSR(good), pemCSR(good)...), 400, "one PEM block"},
		{"oversized", agent(), q(agentID), make([]byte, svid.MaxCSRSize+1), 400, "more than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.p.Handle(context.Background(), &plugin.Request{Method: http.MethodPost, Path: []string{"x509"}, Query: c.query, Body: c.body, Caller: c.caller})
			if status(err) != c.status || !strings.Contains(err.Error(), c.detail) {
				t.Fatalf("got %v (status %d), want %d mentioning %q", err, status(err), c.status, c.detail)
			}
		})
	}
}

func TestCSRKeyTypes(t *testing.T) {
	f := newFixture(t, time.Now(), svid.DefaultConfig())
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		body  []byte
		usage x509.KeyUsage
	}{
		"rsa-2048": {csrFor(t, rsaKey, agentID), x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
		"ed25519":  {csrFor(t, edKey, agentID), x509.KeyUsageDigitalSignature},
		"p-384":    {csrFor(t, p384, agentID), x509.KeyUsageDigitalSignature},
	} {
		t.Run(name, func(t *testing.T) {
			_, chain := issueX509(t, f.p, agent(), nil, c.body)
			_, chains, err := x509svid.ParseAndVerify(chain, bundle(t, f.p), x509svid.WithTime(time.Now()))
			if err != nil {
				t.Fatal(err)
			}
			if chains[0][0].KeyUsage != c.usage {
				t.Fatalf("key usage %v, want %v", chains[0][0].KeyUsage, c.usage)
			}
		})
	}
}

func TestJWTSVIDValidatesWithGoSPIFFE(t *testing.T) {
	// go-spiffe checks exp against the real clock.
	start := time.Now()
	f := newFixture(t, start, svid.DefaultConfig())
	out := issueJWT(t, f.p, agent(), workloadID, "https://api.example.org", "vault")
	got, err := jwtsvid.ParseAndValidate(out.Token, bundle(t, f.p), []string{"vault"})
	if err != nil {
		t.Fatalf("go-spiffe rejects the JWT-SVID: %v", err)
	}
	if got.ID.String() != workloadID || !slices.Equal(got.Audience, []string{"https://api.example.org", "vault"}) {
		t.Fatalf("JWT-SVID for %s, audience %v", got.ID, got.Audience)
	}
	if want := start.Add(2 * time.Minute).Unix(); got.Expiry.Unix() != want || out.ExpiresAt != want {
		t.Fatalf("exp %v (expires_at %d), want the entry's TTL: %d", got.Expiry.Unix(), out.ExpiresAt, want)
	}
	if _, err := jwtsvid.ParseAndValidate(out.Token, bundle(t, f.p), []string{"someone-else"}); err == nil {
		t.Fatal("a JWT-SVID validates for an audience it was not minted for")
	}
	// A bundle from another broker does not validate it.
	other := newFixture(t, start, svid.DefaultConfig())
	if _, err := jwtsvid.ParseAndValidate(out.Token, bundle(t, other.p), []string{"vault"}); err == nil {
		t.Fatal("a JWT-SVID validates against a foreign bundle")
	}

	// The query form gives the same, and the default TTL for the agent.
	resp, err := f.p.Handle(context.Background(), &plugin.Request{Method: http.MethodPost, Path: []string{"jwt"},
		Query: url.Values{"spiffe_id": {agentID}, "audience": {"a", "b"}}, Caller: agent()})
	if err != nil {
		t.Fatal(err)
	}
	var q svid.JWTResponse
	if err := json.Unmarshal(resp.Body, &q); err != nil {
		t.Fatal(err)
	}
	got, err = jwtsvid.ParseAndValidate(q.Token, bundle(t, f.p), []string{"b"})
	if err != nil || got.ID.String() != agentID || got.Expiry.Unix() != start.Add(5*time.Minute).Unix() {
		t.Fatalf("query form: %v, %v", got, err)
	}
}

func TestJWTSVIDRefusals(t *testing.T) {
	f := newFixture(t, time.Now(), svid.DefaultConfig())
	many := make([]string, svid.MaxAudiences+1)
	for i := range many {
		many[i] = "a"
	}
	manyJSON, _ := json.Marshal(svid.JWTRequest{SPIFFEID: workloadID, Audience: many})
	cases := []struct {
		name   string
		query  url.Values
		body   string
		status int
		detail string
	}{
		{"not the parent", nil, `{"spiffe_id":"spiffe://example.org/ns/other/sa/x","audience":["a"]}`, 403, "may not hold"},
		{"no audience", nil, `{"spiffe_id":"` + workloadID + `"}`, 400, "audience"},
		{"empty audience value", nil, `{"spiffe_id":"` + workloadID + `","audience":[""]}`, 400, "audience"},
		{"too many audiences", nil, string(manyJSON), 400, "audience"},
		{"unknown field", nil, `{"spiffe_id":"` + workloadID + `","audience":["a"],"ttl":99999}`, 400, "unknown field"},
		{"trailing data", nil, `{"spiffe_id":"` + workloadID + `","audience":["a"]} {}`, 400, "trailing"},
		{"not JSON", nil, `spiffe_id=x`, 400, "request body"},
		{"empty", nil, ``, 400, "request body"},
		{"bad ID", nil, `{"spiffe_id":"spiffe://example.org/../x","audience":["a"]}`, 400, "spiffe_id"},
		{"query and body", url.Values{"spiffe_id": {workloadID}, "audience": {"a"}}, `{"spiffe_id":"` + workloadID + `","audience":["a"]}`, 400, "not both"},
		{"query without ID", url.Values{"audience": {"a"}}, ``, 400, "spiffe_id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.p.Handle(context.Background(), &plugin.Request{Method: http.MethodPost, Path: []string{"jwt"}, Query: c.query, Body: []byte(c.body), Caller: agent()})
			if status(err) != c.status || !strings.Contains(err.Error(), c.detail) {
				t.Fatalf("got %v (status %d), want %d mentioning %q", err, status(err), c.status, c.detail)
			}
		})
	}
}

func TestRoutesAndContract(t *testing.T) {
	f := newFixture(t, time.Now(), svid.DefaultConfig())
	if f.p.Name() != "svid" {
		t.Fatalf("name %q", f.p.Name())
	}
	for method, want := range map[string]plugin.Access{"GET": plugin.Attested, "POST": plugin.Attested, "PUT": plugin.Denied, "DELETE": plugin.Denied} {
		if got := f.p.Access(method); got != want {
			t.Errorf("Access(%s) = %v, want %v", method, got, want)
		}
	}
	if !f.p.Encrypt("POST") || f.p.Encrypt("GET") {
		t.Error("POST answers (JWT-SVIDs are bearer credentials) must be encrypted; the public bundle need not be")
	}
	for _, c := range []struct {
		method string
		path   []string
		status int
	}{
		{"GET", []string{"x509"}, 405},
		{"POST", []string{"bundle"}, 405},
		{"GET", []string{"jwt"}, 405},
		{"GET", []string{"nope"}, 404},
		{"GET", nil, 404},
		{"GET", []string{"bundle", "extra"}, 404},
	} {
		_, err := f.p.Handle(context.Background(), &plugin.Request{Method: c.method, Path: c.path, Caller: agent()})
		if status(err) != c.status {
			t.Errorf("%s %v: %v, want %d", c.method, c.path, err, c.status)
		}
	}
	b := bundle(t, f.p)
	if len(b.X509Authorities()) != 1 || len(b.JWTAuthorities()) != 1 {
		t.Fatalf("bundle has %d roots and %d JWT keys, want 1 and 1", len(b.X509Authorities()), len(b.JWTAuthorities()))
	}
	if hint, ok := b.RefreshHint(); !ok || hint != 5*time.Minute {
		t.Fatalf("refresh hint %v, %v", hint, ok)
	}
	if _, ok := b.SequenceNumber(); !ok {
		t.Fatal("no sequence number")
	}
	root := b.X509Authorities()[0]
	if id, err := x509svid.IDFromCert(root); err != nil || id != td.ID() {
		// The root names the trust domain, as the X.509-SVID spec allows
		// for signing certificates.
		t.Fatalf("root URI SAN: %v, %v", id, err)
	}
}

// TestDeletedEntryStopsGrantingAtOnce: the entry cache (5 s by default)
// is emptied by the store's change notification, so that a deleted entry
// stops granting before Delete returns, not when the cache expires.
func TestDeletedEntryStopsGrantingAtOnce(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	f := newFixture(t, start, svid.DefaultConfig()) // entry_cache_ttl 5s
	issueJWT(t, f.p, agent(), workloadID, "a")
	list, err := f.st.Entries().List(context.Background(), store.EntryFilter{SPIFFEID: workloadID})
	if err != nil || len(list) != 1 {
		t.Fatalf("%v, %d entries", err, len(list))
	}
	if err := f.st.Entries().Delete(context.Background(), list[0].ID); err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(svid.JWTRequest{SPIFFEID: workloadID, Audience: []string{"a"}})
	req := &plugin.Request{Method: http.MethodPost, Path: []string{"jwt"}, Body: body, Caller: agent()}
	if _, err := f.p.Handle(context.Background(), req); status(err) != http.StatusForbidden {
		t.Fatalf("within the cache TTL, a deleted entry still grants: %v", err)
	}
}
