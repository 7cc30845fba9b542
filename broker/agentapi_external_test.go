package broker_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/agentapi/wire"
	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/sqlite"
)

// agentEnv is a broker with the svid plugin over HTTPS that requests
// client certificates, and an admin client for it.
type agentEnv struct {
	h     *harness
	ca    *svid.Plugin
	base  string
	admin *broker.AdminClient
}

func newAgentEnv(t testing.TB) *agentEnv { return newAgentEnvOpts(t, harnessOpts{}) }

// newAgentEnvOpts is newAgentEnv with harness options (a policy, the token
// service); the plugins are the echo and svid plugins.
func newAgentEnvOpts(t testing.TB, ho harnessOpts) *agentEnv {
	t.Helper()
	var ca *svid.Plugin
	ho.plugins = func(st store.Store, sealer *seal.Sealer) []plugin.Plugin {
		p, err := svid.New(context.Background(), svid.DefaultConfig(), td, st, sealer, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		ca = p
		return []plugin.Plugin{echoPlugin{}, p}
	}
	h := newHarness(t, ho)
	base := mtlsServer(t, h, ca)
	return &agentEnv{h: h, ca: ca, base: base, admin: &broker.AdminClient{Server: base, Token: h.adminToken(t), HTTP: svidClient(nil)}}
}

// testAgent is one node agent: its key and current SVID.
type testAgent struct {
	key  crypto.Signer
	svid *x509svid.SVID
	// token is the attestation token the agent got its first SVID with.
	token string
}

func csrFor(t testing.TB, key crypto.Signer, uri string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	if uri != "" {
		u, _ := url.Parse(uri)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// call posts or gets path with the agent's SVID (or none) and an optional
// bearer token, and decodes a 200 answer into out.
func (e *agentEnv) call(t testing.TB, a *testAgent, method, path, bearer string, in, out any) (int, string) {
	t.Helper()
	st, body, err := e.try(a, method, path, bearer, in, out)
	if err != nil {
		t.Fatal(err)
	}
	return st, body
}

// try is call for goroutines: it returns its error instead of failing.
func (e *agentEnv) try(a *testAgent, method, path, bearer string, in, out any) (int, string, error) {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.base+path, body)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	var s *x509svid.SVID
	if a != nil {
		s = a.svid
	}
	resp, err := svidClient(s).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 && out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return 0, "", fmt.Errorf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode, string(b), nil
}

func parseChain(t testing.TB, ders [][]byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// attestAgent runs a join-token RCAR attestation and gets the agent SVID.
func (e *agentEnv) attestAgent(t testing.TB) *testAgent {
	t.Helper()
	jt, err := e.admin.CreateJoinToken(context.Background(), broker.JoinTokenRequest{TTL: 60})
	if err != nil {
		t.Fatal(err)
	}
	c := e.h.client()
	ch, _, err := c.Auth("join_token", "")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Attest(rcartest.Attestation{
		RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: teeKey(t)},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: map[string]string{"token": jt.Token}},
	})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var out wire.SVIDResponse
	// The CSR asks for another ID: the broker ignores it.
	if st, body := e.call(t, nil, "POST", wire.PathSVID, tok, wire.SVIDRequest{CSR: csrFor(t, key, "spiffe://example.org/admin")}, &out); st != 200 {
		t.Fatalf("agent SVID: %d %s", st, body)
	}
	want := "spiffe://example.org/spire/agent/join_token/" + jt.Token
	chain := parseChain(t, out.Chain)
	if out.SPIFFEID != want || chain[0].URIs[0].String() != want || out.ExpiresAt != chain[0].NotAfter.Unix() {
		t.Fatalf("agent SVID for %s (want %s), URI %s", out.SPIFFEID, want, chain[0].URIs[0])
	}
	id, _, err := x509svid.Verify(chain, e.ca)
	if err != nil || id.String() != want {
		t.Fatalf("agent SVID does not verify: %v", err)
	}
	return &testAgent{key: key, svid: &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, token: tok}
}

func (e *agentEnv) entry(t testing.TB, id, parent string, sel ...broker.Selector) broker.Entry {
	t.Helper()
	if len(sel) == 0 {
		sel = []broker.Selector{{Type: "unix", Value: "uid:1000"}}
	}
	out, err := e.admin.CreateEntry(context.Background(), broker.Entry{SPIFFEID: id, ParentID: parent, Selectors: sel})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *agentEnv) entries(t testing.TB, a *testAgent, query string) (wire.Entries, int, string) {
	t.Helper()
	var out wire.Entries
	st, body := e.call(t, a, "GET", wire.PathEntries+query, "", nil, &out)
	return out, st, body
}

func entryIDs(es wire.Entries) []string {
	var out []string
	for _, e := range es.Entries {
		out = append(out, e.SPIFFEID)
	}
	return out
}

// TestAgentAPIEndToEnd: join-token attestation -> agent SVID -> entries ->
// batch X.509 signing verified by go-spiffe against the bundle from the API
// -> JWT-SVID validated by go-spiffe; another agent's entry is refused.
func TestAgentAPIEndToEnd(t *testing.T) {
	e := newAgentEnv(t)
	a := e.attestAgent(t)
	b := e.attestAgent(t)
	web := e.entry(t, "spiffe://example.org/web", a.svid.ID.String())
	db := e.entry(t, "spiffe://example.org/db", a.svid.ID.String())
	other := e.entry(t, "spiffe://example.org/other", b.svid.ID.String())

	got, st, body := e.entries(t, a, "")
	if st != 200 || strings.Join(entryIDs(got), ",") != sortedJoin(web, db) {
		t.Fatalf("entries of a: %d %s", st, body)
	}

	var bundle wire.Bundle
	if st, body := e.call(t, a, "GET", wire.PathBundle, "", nil, &bundle); st != 200 || bundle.TrustDomain != "example.org" {
		t.Fatalf("bundle: %d %s", st, body)
	}
	xb := x509bundle.New(td)
	for _, d := range bundle.X509Authorities {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		xb.AddX509Authority(c)
	}
	jb := jwtbundle.New(td)
	for kid, d := range bundle.JWTAuthorities {
		k, err := x509.ParsePKIXPublicKey(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := jb.AddJWTAuthority(kid, k); err != nil {
			t.Fatal(err)
		}
	}

	// Batch: two good CSRs, one for another agent's entry, one whose URI
	// SAN names another ID, one unknown entry.
	wkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	req := wire.X509Request{Requests: []wire.X509CSR{
		{EntryID: web.ID, CSR: csrFor(t, wkey, "")},
		{EntryID: db.ID, CSR: csrFor(t, wkey, "spiffe://example.org/db")},
		{EntryID: other.ID, CSR: csrFor(t, wkey, "")},
		{EntryID: web.ID, CSR: csrFor(t, wkey, "spiffe://example.org/db")},
		{EntryID: "nope", CSR: csrFor(t, wkey, "")},
	}}
	var res wire.X509Response
	if st, body := e.call(t, a, "POST", wire.PathX509, "", req, &res); st != 200 || len(res.Results) != 5 {
		t.Fatalf("x509 batch: %d %s", st, body)
	}
	for i, want := range []string{"spiffe://example.org/web", "spiffe://example.org/db"} {
		r := res.Results[i]
		id, _, err := x509svid.Verify(parseChain(t, r.Chain), xb)
		if err != nil || id.String() != want || r.Error != "" || r.EntryID != req.Requests[i].EntryID {
			t.Fatalf("result %d: %s %v %q", i, id, err, r.Error)
		}
	}
	for i := 2; i < 5; i++ {
		if r := res.Results[i]; r.Error == "" || len(r.Chain) != 0 {
			t.Fatalf("result %d was signed: %+v", i, r)
		}
	}
	if !strings.Contains(res.Results[2].Error, "not authorized") {
		t.Fatalf("another agent's entry: %q", res.Results[2].Error)
	}

	// JWT-SVID.
	var jr wire.JWTResponse
	if st, body := e.call(t, a, "POST", wire.PathJWT, "", wire.JWTRequest{EntryID: web.ID, Audience: []string{"db"}}, &jr); st != 200 {
		t.Fatalf("jwt: %d %s", st, body)
	}
	js, err := jwtsvid.ParseAndValidate(jr.Token, jb, []string{"db"})
	if err != nil || js.ID.String() != "spiffe://example.org/web" {
		t.Fatalf("JWT-SVID: %v", err)
	}
	// A JWT-SVID for another agent's entry is refused.
	if st, body := e.call(t, a, "POST", wire.PathJWT, "", wire.JWTRequest{EntryID: other.ID, Audience: []string{"db"}}, nil); st != 403 {
		t.Fatalf("jwt for b's entry: %d %s", st, body)
	}
	// b sees only its own entry.
	if got, st, body := e.entries(t, b, ""); st != 200 || strings.Join(entryIDs(got), ",") != "spiffe://example.org/other" {
		t.Fatalf("entries of b: %d %s", st, body)
	}
	// Without a client certificate: 401; with a workload SVID of the trust
	// domain that is no agent: 403.
	if st, _ := e.call(t, nil, "GET", wire.PathEntries, "", nil, nil); st != 401 {
		t.Fatalf("no certificate: %d", st)
	}
	w := &testAgent{svid: &x509svid.SVID{ID: spiffeid.RequireFromString("spiffe://example.org/web"), Certificates: parseChain(t, res.Results[0].Chain), PrivateKey: wkey}}
	if st, _ := e.call(t, w, "GET", wire.PathEntries, "", nil, nil); st != 403 {
		t.Fatalf("workload SVID as agent: %d", st)
	}
}

func sortedJoin(es ...broker.Entry) string {
	if es[0].ID > es[1].ID {
		es[0], es[1] = es[1], es[0]
	}
	return es[0].SPIFFEID + "," + es[1].SPIFFEID
}

// TestAgentAPIRenewalAndEviction: renewal over mTLS replaces the SVID;
// an evicted agent gets 403 on every endpoint, and cannot renew.
func TestAgentAPIRenewalAndEviction(t *testing.T) {
	e := newAgentEnv(t)
	a := e.attestAgent(t)
	web := e.entry(t, "spiffe://example.org/web", a.svid.ID.String())

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var out wire.SVIDResponse
	if st, body := e.call(t, a, "POST", wire.PathSVID, "", wire.SVIDRequest{CSR: csrFor(t, key, "")}, &out); st != 200 {
		t.Fatalf("renewal: %d %s", st, body)
	}
	chain := parseChain(t, out.Chain)
	if out.SPIFFEID != a.svid.ID.String() || chain[0].SerialNumber.Cmp(a.svid.Certificates[0].SerialNumber) == 0 {
		t.Fatalf("renewal gave %s", out.SPIFFEID)
	}
	old := a.svid
	a.svid = &x509svid.SVID{ID: a.svid.ID, Certificates: chain, PrivateKey: key}
	if _, st, body := e.entries(t, a, ""); st != 200 {
		t.Fatalf("entries with the renewed SVID: %d %s", st, body)
	}
	// Renew once more: the first SVID is now two generations old.
	key2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if st, body := e.call(t, a, "POST", wire.PathSVID, "", wire.SVIDRequest{CSR: csrFor(t, key2, "")}, &out); st != 200 {
		t.Fatalf("second renewal: %d %s", st, body)
	}
	if _, st, _ := e.entries(t, &testAgent{svid: old}, ""); st != 403 {
		t.Fatalf("a replaced SVID still authenticates: %d", st)
	}
	a.svid = &x509svid.SVID{ID: a.svid.ID, Certificates: parseChain(t, out.Chain), PrivateKey: key2}

	list, err := e.admin.ListAgents(context.Background())
	if err != nil || len(list) != 1 || list[0].SPIFFEID != a.svid.ID.String() || list[0].Attestor != "join_token" || list[0].Evicted {
		t.Fatalf("agent list: %+v %v", list, err)
	}
	cur, st, _ := e.entries(t, a, "")
	if st != 200 {
		t.Fatalf("entries: %d", st)
	}
	polled := make(chan int, 1)
	go func() {
		st, _, err := e.try(a, "GET", wire.PathEntries+fmt.Sprintf("?revision=%d&wait=30s", cur.Revision), "", nil, nil)
		if err != nil {
			t.Error(err)
		}
		polled <- st
	}()
	time.Sleep(200 * time.Millisecond)
	evicted := time.Now()
	if _, err := e.admin.EvictAgent(context.Background(), a.svid.ID.String()); err != nil {
		t.Fatal(err)
	}
	// The waiting long poll ends at once, refused.
	if st := <-polled; st != 403 || time.Since(evicted) > time.Second {
		t.Fatalf("waiting long poll after eviction: %d after %s", st, time.Since(evicted))
	}
	for _, c := range []struct {
		method, path string
		in           any
	}{
		{"GET", wire.PathEntries, nil},
		{"GET", wire.PathBundle, nil},
		{"POST", wire.PathSVID, wire.SVIDRequest{CSR: csrFor(t, key, "")}},
		{"POST", wire.PathX509, wire.X509Request{Requests: []wire.X509CSR{{EntryID: web.ID, CSR: csrFor(t, key, "")}}}},
		{"POST", wire.PathJWT, wire.JWTRequest{EntryID: web.ID, Audience: []string{"x"}}},
	} {
		if st, body := e.call(t, a, c.method, c.path, "", c.in, nil); st != 403 {
			t.Errorf("evicted agent: %s %s: %d %s", c.method, c.path, st, body)
		}
	}
	if list, _ := e.admin.ListAgents(context.Background()); len(list) != 1 || !list[0].Evicted {
		t.Fatalf("agent list after eviction: %+v", list)
	}
}

// TestAgentAPIEvictedCannotReattest: an attestation token for an evicted
// agent ID gets no SVID.
func TestAgentAPIEvictedCannotReattest(t *testing.T) {
	e := newAgentEnv(t)
	jt, err := e.admin.CreateJoinToken(context.Background(), broker.JoinTokenRequest{TTL: 60})
	if err != nil {
		t.Fatal(err)
	}
	c := e.h.client()
	ch, _, _ := c.Auth("join_token", "")
	tok, err := c.Attest(rcartest.Attestation{RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: teeKey(t)},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: map[string]string{"token": jt.Token}}})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if st, body := e.call(t, nil, "POST", wire.PathSVID, tok, wire.SVIDRequest{CSR: csrFor(t, key, "")}, nil); st != 200 {
		t.Fatalf("first issuance: %d %s", st, body)
	}
	if _, err := e.admin.EvictAgent(context.Background(), "spiffe://example.org/spire/agent/join_token/"+jt.Token); err != nil {
		t.Fatal(err)
	}
	if st, body := e.call(t, nil, "POST", wire.PathSVID, tok, wire.SVIDRequest{CSR: csrFor(t, key, "")}, nil); st != 403 {
		t.Fatalf("issuance after eviction: %d %s", st, body)
	}
	// A sample attestation is mapped to a dev agent ID; a bad token is 401.
	smp := attestSample(t, e.h, teeKey(t))
	var out wire.SVIDResponse
	if st, body := e.call(t, nil, "POST", wire.PathSVID, smp, wire.SVIDRequest{CSR: csrFor(t, key, "")}, &out); st != 200 || !strings.HasPrefix(out.SPIFFEID, "spiffe://example.org/spire/agent/sample/") {
		t.Fatalf("sample: %d %s", st, body)
	}
	if st, _ := e.call(t, nil, "POST", wire.PathSVID, "garbage", wire.SVIDRequest{CSR: csrFor(t, key, "")}, nil); st != 401 {
		t.Fatalf("bad token: %d", st)
	}
}

// TestAgentAPIAttestationTokenSpentOnOneKey: the attestation token gets
// one agent SVID, for one key. The same request again (the agent retrying
// after a lost answer, or a replay) gets that same SVID; another key is
// refused. Neither changes the agent's record: its SVID stays in force.
func TestAgentAPIAttestationTokenSpentOnOneKey(t *testing.T) {
	e := newAgentEnv(t)
	a := e.attestAgent(t)
	var out wire.SVIDResponse
	if st, body := e.call(t, nil, "POST", wire.PathSVID, a.token, wire.SVIDRequest{CSR: csrFor(t, a.key, "")}, &out); st != 200 {
		t.Fatalf("retry with the agent's key: %d %s", st, body)
	}
	if chain := parseChain(t, out.Chain); !chain[0].Equal(a.svid.Certificates[0]) {
		t.Fatalf("the retry got serial %v, want the same SVID (serial %v)", chain[0].SerialNumber, a.svid.Certificates[0].SerialNumber)
	}
	thief, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if st, body := e.call(t, nil, "POST", wire.PathSVID, a.token, wire.SVIDRequest{CSR: csrFor(t, thief, "")}, nil); st != 401 || !strings.Contains(body, "already spent") {
		t.Fatalf("replay with another key: %d %s, want 401", st, body)
	}
	if _, st, body := e.entries(t, a, ""); st != 200 {
		t.Fatalf("the agent after the refused replay: %d %s", st, body)
	}
}

// TestAgentAPINodeAlias: an agent attested with selectors (the sample
// TEE's sample:svn:1) is authorized for the entries under a node alias whose
// selectors it has, not under one whose selectors it lacks.
func TestAgentAPINodeAlias(t *testing.T) {
	e := newAgentEnv(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var out wire.SVIDResponse
	if st, body := e.call(t, nil, "POST", wire.PathSVID, attestSample(t, e.h, teeKey(t)), wire.SVIDRequest{CSR: csrFor(t, key, "")}, &out); st != 200 {
		t.Fatalf("agent SVID: %d %s", st, body)
	}
	a := &testAgent{key: key, svid: &x509svid.SVID{ID: spiffeid.RequireFromString(out.SPIFFEID), Certificates: parseChain(t, out.Chain), PrivateKey: key}}
	const server = "spiffe://example.org/spire/server"
	e.entry(t, "spiffe://example.org/cluster/c1", server, broker.Selector{Type: "sample", Value: "svn:1"})
	e.entry(t, "spiffe://example.org/cluster/c2", server, broker.Selector{Type: "sample", Value: "svn:1"}, broker.Selector{Type: "x509pop", Value: "subject:cn:other"})
	in := e.entry(t, "spiffe://example.org/via-alias", "spiffe://example.org/cluster/c1")
	e.entry(t, "spiffe://example.org/not-mine", "spiffe://example.org/cluster/c2")
	got, st, body := e.entries(t, a, "")
	if st != 200 || len(got.Entries) != 1 || got.Entries[0].ID != in.ID {
		t.Fatalf("alias entries: %d %s", st, body)
	}
	var res wire.X509Response
	if st, body := e.call(t, a, "POST", wire.PathX509, "", wire.X509Request{Requests: []wire.X509CSR{{EntryID: in.ID, CSR: csrFor(t, key, "")}}}, &res); st != 200 || res.Results[0].Error != "" {
		t.Fatalf("SVID through the alias: %d %s", st, body)
	}
}

// TestAgentAPILongPollDelete: a deleted entry leaves a waiting long poll in
// under a second, whether the delete goes through this replica (in-process
// broadcast) or another one sharing the store (revision poll).
func TestAgentAPILongPollDelete(t *testing.T) {
	e := newAgentEnv(t)
	a := e.attestAgent(t)
	for _, replica := range []string{"same", "other"} {
		t.Run(replica, func(t *testing.T) {
			web := e.entry(t, "spiffe://example.org/web-"+replica, a.svid.ID.String())
			first, st, body := e.entries(t, a, "")
			if st != 200 || len(first.Entries) != 1 {
				t.Fatalf("entries: %d %s", st, body)
			}
			// Nothing changes: the poll waits its whole wait.
			start := time.Now()
			same, st, _ := e.entries(t, a, fmt.Sprintf("?revision=%d&wait=700ms", first.Revision))
			if st != 200 || time.Since(start) < 700*time.Millisecond || same.Revision != first.Revision || len(same.Entries) != 1 {
				t.Fatalf("idle long poll: %d after %s, %+v", st, time.Since(start), same)
			}
			// An entry of another agent changes nothing for this one.
			type answer struct {
				got     wire.Entries
				st      int
				elapsed time.Duration
			}
			done := make(chan answer, 1)
			begin := time.Now()
			go func() {
				var got wire.Entries
				st, _, err := e.try(a, "GET", wire.PathEntries+fmt.Sprintf("?revision=%d&wait=30s", first.Revision), "", nil, &got)
				if err != nil {
					t.Error(err)
				}
				done <- answer{got, st, time.Since(begin)}
			}()
			time.Sleep(200 * time.Millisecond)
			unrelated := e.entry(t, "spiffe://example.org/unrelated-"+replica, "spiffe://example.org/spire/agent/x")
			time.Sleep(700 * time.Millisecond)
			select {
			case r := <-done:
				t.Fatalf("an unrelated change ended the poll: %+v", r)
			default:
			}
			admin := e.admin
			if replica == "other" {
				// The harness's plain-HTTP broker is another replica on
				// the same store: no in-process notification reaches ours.
				admin = &broker.AdminClient{Server: e.h.http.URL, Token: e.h.adminToken(t), HTTP: e.h.http.Client()}
			}
			deleted := time.Now()
			if err := admin.DeleteEntry(context.Background(), web.ID); err != nil {
				t.Fatal(err)
			}
			r := <-done
			lag := time.Since(deleted)
			if r.st != 200 || len(r.got.Entries) != 0 || r.got.Revision <= first.Revision {
				t.Fatalf("after delete: %d %+v", r.st, r.got)
			}
			if lag >= time.Second {
				t.Fatalf("the deleted entry left the long poll after %s", lag)
			}
			t.Logf("%s replica: deletion reached the long poll in %s", replica, lag)
			if err := e.admin.DeleteEntry(context.Background(), unrelated.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// BenchmarkAgentX509Batch1000 signs 1,000 workload CSRs for one agent over
// HTTPS+mTLS, as two batches of wire.MaxX509Requests.
func BenchmarkAgentX509Batch1000(b *testing.B) {
	e := newAgentEnv(b)
	a := e.attestAgent(b)
	ent := e.entry(b, "spiffe://example.org/web", a.svid.ID.String())
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := csrFor(b, key, "")
	req := wire.X509Request{Requests: make([]wire.X509CSR, wire.MaxX509Requests)}
	for i := range req.Requests {
		req.Requests[i] = wire.X509CSR{EntryID: ent.ID, CSR: csr}
	}
	b.ResetTimer()
	for b.Loop() {
		for range 1000 / wire.MaxX509Requests {
			var res wire.X509Response
			if st, body := e.call(b, a, "POST", wire.PathX509, "", req, &res); st != 200 || len(res.Results) != wire.MaxX509Requests || res.Results[0].Error != "" {
				b.Fatalf("%d %.200s", st, body)
			}
		}
	}
}

// TestAgentAPILongPollOutlivesWriteTimeout: a long poll may wait longer
// than the server's WriteTimeout (serve's default is 30s, a poll's wait up
// to 60s): the answer still arrives.
func TestAgentAPILongPollOutlivesWriteTimeout(t *testing.T) {
	e := newAgentEnv(t)
	a := e.attestAgent(t)
	_, base := mtlsBroker(t, e.h, e.ca, func(hs *http.Server) { hs.WriteTimeout = 300 * time.Millisecond })
	slow := *e
	slow.base = base
	first, st, body := slow.entries(t, a, "")
	if st != 200 {
		t.Fatalf("entries: %d %s", st, body)
	}
	start := time.Now()
	got, st, body := slow.entries(t, a, fmt.Sprintf("?revision=%d&wait=1s", first.Revision))
	if st != 200 || got.Revision != first.Revision || time.Since(start) < time.Second {
		t.Fatalf("long poll past the write timeout: %d after %s: %s", st, time.Since(start), body)
	}
}

// evictionPolicy lets every attested or X.509-SVID caller use the svid
// and echo plugins.
const evictionPolicy = `package policy
allow if {
	input.credential in {"x509-svid", "attestation"}
	input.plugin in {"svid", "echo"}
}

grant contains "pull" if {
	input.service == "registry.test"
	input.credential == "attestation"
}
`

// TestEvictedAgentRefusedEverywhere: an evicted agent gets nothing from the
// broker's plugin endpoints and token service either, with its SVID or its attestation token,
// even where the resource policy would let it.
func TestEvictedAgentRefusedEverywhere(t *testing.T) {
	e := newAgentEnvOpts(t, harnessOpts{policy: evictionPolicy,
		tokenService: &broker.TokenServiceOptions{Service: "trustgate", Services: []string{"registry.test"}}})
	a := e.attestAgent(t)
	e.entry(t, "spiffe://example.org/web", a.svid.ID.String())
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := func() io.Reader {
		return bytes.NewReader(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrFor(t, key, "spiffe://example.org/web")}))
	}
	withToken := func(method, path string, body io.Reader) int {
		req, _ := http.NewRequest(method, e.base+path, body)
		req.Header.Set("Authorization", "Bearer "+a.token)
		resp, err := svidClient(nil).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st, body := mdo(t, svidClient(a.svid), "POST", e.base+"/kbs/v0/svid/x509", csr()); st != 200 {
		t.Fatalf("before eviction: svid plugin: %d %s", st, body)
	}
	if st, body := mdo(t, svidClient(a.svid), "GET", e.base+"/kbs/v0/echo/x", nil); st != 200 {
		t.Fatalf("before eviction: echo: %d %s", st, body)
	}
	if st := withToken("GET", "/kbs/v0/echo/x", nil); st != 200 {
		t.Fatalf("before eviction: echo with the token: %d", st)
	}
	const scope = "/token?service=registry.test&scope=repository:team/app:pull"
	if st := withToken("GET", scope, nil); st != 200 {
		t.Fatalf("before eviction: /token: %d", st)
	}
	if _, err := e.admin.EvictAgent(context.Background(), a.svid.ID.String()); err != nil {
		t.Fatal(err)
	}
	if st, body := mdo(t, svidClient(a.svid), "POST", e.base+"/kbs/v0/svid/x509", csr()); st != 403 {
		t.Fatalf("evicted agent through the svid plugin: %d %s", st, body)
	}
	if st, body := mdo(t, svidClient(a.svid), "GET", e.base+"/kbs/v0/echo/x", nil); st != 403 {
		t.Fatalf("evicted agent, echo plugin: %d %s", st, body)
	}
	if st := withToken("GET", "/kbs/v0/echo/x", nil); st != 403 {
		t.Fatalf("evicted agent's attestation token, echo plugin: %d", st)
	}
	if st := withToken("GET", scope, nil); st != 403 {
		t.Fatalf("evicted agent's attestation token, /token: %d", st)
	}
}

// racyStore is a store whose entry List runs hook once, after the long
// poll has read the revision: a change committed between the two reads.
type racyStore struct {
	store.Store
	hook atomic.Pointer[func()]
}

func (s *racyStore) Entries() store.Entries { return racyEntries{s.Store.Entries(), s} }

type racyEntries struct {
	store.Entries
	s *racyStore
}

func (e racyEntries) List(ctx context.Context, f store.EntryFilter) ([]store.Entry, error) {
	if h := e.s.hook.Swap(nil); h != nil {
		(*h)()
	}
	return e.Entries.List(ctx, f)
}

// TestAgentAPILongPollChangeBetweenReads: an entry deleted after the long
// poll read the revision but before it read the agent's entries still
// ends the poll at once. The poll's answer pairs a revision with exactly
// the entries of that revision; pairing it with the newer set made the
// poll wait out its whole wait while the agent kept serving the deleted
// entry (seen in TestAgentEndToEnd as a 5 s stall).
func TestAgentAPILongPollChangeBetweenReads(t *testing.T) {
	db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "trustgate.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	racy := &racyStore{Store: db}
	e := newAgentEnvOpts(t, harnessOpts{store: racy})
	a := e.attestAgent(t)
	keep := e.entry(t, "spiffe://example.org/keep", a.svid.ID.String())
	gone := e.entry(t, "spiffe://example.org/gone", a.svid.ID.String())
	first, st, body := e.entries(t, a, "")
	if st != 200 || len(first.Entries) != 2 {
		t.Fatalf("entries: %d %s", st, body)
	}
	// The agent's next long poll: the delete lands between its reads.
	hook := func() {
		if err := db.Entries().Delete(context.Background(), gone.ID); err != nil {
			t.Error(err)
		}
	}
	racy.hook.Store(&hook)
	start := time.Now()
	got, st, body := e.entries(t, a, fmt.Sprintf("?revision=%d&wait=5s", first.Revision))
	if st != 200 || len(got.Entries) != 1 || got.Entries[0].ID != keep.ID || got.Revision <= first.Revision {
		t.Fatalf("after a delete between the reads: %d %s", st, body)
	}
	if d := time.Since(start); d >= 2*time.Second {
		t.Fatalf("the poll waited %s for a change made at its start", d)
	}
	// The revision it gave is the current one: the next poll waits.
	start = time.Now()
	again, st, body := e.entries(t, a, fmt.Sprintf("?revision=%d&wait=300ms", got.Revision))
	if st != 200 || again.Revision != got.Revision || len(again.Entries) != 1 || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("the next poll: %d after %s: %s", st, time.Since(start), body)
	}
}

// TestAgentAPILongPollDrain: Drain (called as the server starts shutting
// down) answers a waiting long poll at once, and later polls do not wait,
// so that agents' polls never hold a shutdown for its grace.
func TestAgentAPILongPollDrain(t *testing.T) {
	e := newAgentEnv(t)
	a := e.attestAgent(t)
	srv, base := mtlsBroker(t, e.h, e.ca, nil)
	own := *e
	own.base = base
	e.entry(t, "spiffe://example.org/web", a.svid.ID.String())
	first, st, body := own.entries(t, a, "")
	if st != 200 || len(first.Entries) != 1 {
		t.Fatalf("entries: %d %s", st, body)
	}
	type answer struct {
		got wire.Entries
		st  int
	}
	done := make(chan answer, 1)
	go func() {
		var got wire.Entries
		st, _, err := own.try(a, "GET", wire.PathEntries+fmt.Sprintf("?revision=%d&wait=30s", first.Revision), "", nil, &got)
		if err != nil {
			t.Error(err)
		}
		done <- answer{got, st}
	}()
	time.Sleep(300 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("the poll ended before Drain: %+v", r)
	default:
	}
	drained := time.Now()
	srv.Drain()
	select {
	case r := <-done:
		if r.st != 200 || r.got.Revision != first.Revision || len(r.got.Entries) != 1 {
			t.Fatalf("drained poll: %d %+v", r.st, r.got)
		}
		t.Logf("Drain to answer: %s", time.Since(drained))
	case <-time.After(5 * time.Second):
		t.Fatal("Drain left the long poll waiting")
	}
	start := time.Now()
	if got, st, body := own.entries(t, a, fmt.Sprintf("?revision=%d&wait=30s", first.Revision)); st != 200 || got.Revision != first.Revision || time.Since(start) > 5*time.Second {
		t.Fatalf("a poll after Drain: %d after %s: %s", st, time.Since(start), body)
	}
}
