package svid_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/sqlite"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

const (
	agentID    = "spiffe://example.org/spire/agent/join_token/abc"
	aliasID    = "spiffe://example.org/node/group-a"
	workloadID = "spiffe://example.org/ns/prod/sa/web"
)

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openStore(t testing.TB) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "trustgate.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func newSealer(t testing.TB) *seal.Sealer {
	t.Helper()
	k := make([]byte, seal.KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	s, err := seal.New(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fixture is one plugin over a fresh store with a workload entry under the
// agent, and one under the agent's node alias.
type fixture struct {
	p      *svid.Plugin
	st     store.Store
	sealer *seal.Sealer
	clock  *clock
	cfg    svid.Config
}

func newFixture(t testing.TB, start time.Time, cfg svid.Config) *fixture {
	t.Helper()
	f := &fixture{st: openStore(t), sealer: newSealer(t), clock: &clock{t: start}, cfg: cfg}
	ctx := context.Background()
	for _, e := range []store.Entry{
		{SPIFFEID: workloadID, ParentID: agentID, Selectors: []store.Selector{{Type: "unix", Value: "uid:1000"}},
			X509SVIDTTL: 10 * time.Minute, JWTSVIDTTL: 2 * time.Minute, DNSNames: []string{"web.prod.svc", "web"}},
		{SPIFFEID: "spiffe://example.org/ns/prod/sa/db", ParentID: aliasID, Selectors: []store.Selector{{Type: "unix", Value: "uid:1001"}}},
		{SPIFFEID: "spiffe://example.org/ns/other/sa/x", ParentID: "spiffe://example.org/spire/agent/join_token/other",
			Selectors: []store.Selector{{Type: "unix", Value: "uid:1002"}}},
	} {
		e.CreatedAt = start
		if _, err := f.st.Entries().Create(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	p, err := svid.New(ctx, cfg, td, f.st, f.sealer, nil, f.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	f.p = p
	return f
}

func agent() plugin.Caller {
	return plugin.Caller{Subject: agentID, SPIFFEID: agentID, Aliases: []string{aliasID}, TEE: "join_token"}
}

// newCSR returns a P-256 key and a DER CSR for it naming uris.
func newCSR(t testing.TB, uris ...string) (crypto.Signer, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key, csrFor(t, key, uris...)
}

func csrFor(t testing.TB, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemCSR(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// issueX509 asks p for an X.509-SVID and returns the DER chain.
func issueX509(t testing.TB, p *svid.Plugin, caller plugin.Caller, query url.Values, body []byte) (svid.X509Response, [][]byte) {
	t.Helper()
	resp, err := p.Handle(context.Background(), &plugin.Request{Method: http.MethodPost, Path: []string{"x509"}, Query: query, Body: body, Caller: caller})
	if err != nil {
		t.Fatalf("x509: %v", err)
	}
	var out svid.X509Response
	if err := json.Unmarshal(resp.Body, &out); err != nil {
		t.Fatalf("x509 answer: %v", err)
	}
	var chain [][]byte
	for _, s := range out.SVID {
		b, rest := pem.Decode([]byte(s))
		if b == nil || b.Type != "CERTIFICATE" || len(rest) != 0 {
			t.Fatalf("svid element is not one PEM certificate: %q", s)
		}
		chain = append(chain, b.Bytes)
	}
	return out, chain
}

func issueJWT(t testing.TB, p *svid.Plugin, caller plugin.Caller, id string, aud ...string) svid.JWTResponse {
	t.Helper()
	body, _ := json.Marshal(svid.JWTRequest{SPIFFEID: id, Audience: aud})
	resp, err := p.Handle(context.Background(), &plugin.Request{Method: http.MethodPost, Path: []string{"jwt"}, Body: body, Caller: caller})
	if err != nil {
		t.Fatalf("jwt: %v", err)
	}
	var out svid.JWTResponse
	if err := json.Unmarshal(resp.Body, &out); err != nil {
		t.Fatalf("jwt answer: %v", err)
	}
	return out
}

// bundle fetches the served bundle through Handle and parses it with
// go-spiffe.
func bundle(t testing.TB, p *svid.Plugin) *spiffebundle.Bundle {
	t.Helper()
	resp, err := p.Handle(context.Background(), &plugin.Request{Method: http.MethodGet, Path: []string{"bundle"}, Caller: agent()})
	if err != nil {
		t.Fatalf("bundle: %v", err)
	}
	b, err := spiffebundle.Parse(td, resp.Body)
	if err != nil {
		t.Fatalf("parse served bundle: %v", err)
	}
	return b
}

// status returns the HTTP status of a plugin error, or 0 when err is nil
// and 500 for any other error.
func status(err error) int {
	if err == nil {
		return 0
	}
	var pe *plugin.Error
	if errors.As(err, &pe) {
		return pe.Status
	}
	return http.StatusInternalServerError
}
