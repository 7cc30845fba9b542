package broker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/internal/syncbuf"
)

type namedPlugin struct {
	echoPlugin
	name string
}

func (p namedPlugin) Name() string { return p.name }

func TestReservedAndInvalidPluginNames(t *testing.T) {
	for _, names := range [][]string{{"auth"}, {"attest"}, {"resource-policy"}, {"token"}, {"admin"}, {"a/b"}, {".x"}, {""}, {"echo", "echo"}} {
		_, err := brokerWith(t, names)
		if err == nil {
			t.Errorf("plugins %q accepted", names)
		}
	}
	if _, err := brokerWith(t, []string{"resource", "nebula-ca", "my-plugin"}); err != nil {
		t.Errorf("valid names refused: %v", err)
	}
}

// brokerWith builds a broker with echo plugins of the given names.
func brokerWith(t *testing.T, names []string) (*broker.Server, error) {
	h := newHarness(t, harnessOpts{})
	var ps []plugin.Plugin
	for _, n := range names {
		ps = append(ps, namedPlugin{name: n})
	}
	o := h.opts
	o.Plugins = ps
	return broker.New(o)
}

func TestPathValidation(t *testing.T) {
	h := newHarness(t, harnessOpts{plugins: withResourceAndEcho, policy: allowEchoGet})
	tok := attestSample(t, h, teeKey(t))
	for _, p := range []string{
		"/kbs/v0/echo/a/../b", "/kbs/v0/echo/..", "/kbs/v0/echo/./a", "/kbs/v0/echo/a%2Fb", "/kbs/v0/echo/a%2fb",
		"/kbs/v0/echo/a//b", "/kbs/v0/echo/a/", "/kbs/v0/echo/.hidden", "/kbs/v0/echo/a%20b", "/kbs/v0/echo/%2e%2e",
		"/kbs/v0/echo/" + strings.Repeat("a/", 40) + "a", "/kbs/v0/echo/" + strings.Repeat("x", 256),
	} {
		req, _ := http.NewRequest("GET", h.http.URL+"/", nil)
		req.URL.Opaque = p // sent exactly as written
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := h.http.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: status %d, want 404", p, resp.StatusCode)
		}
	}
	resp, body := call(t, h, "GET", "/kbs/v0/echo/a.b/c_d-e/1.2", tok, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"path":["a.b","c_d-e","1.2"]`) {
		t.Fatalf("valid path: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, h, "GET", "/kbs/v0/nothing/a", tok, nil)
	wantProblem(t, resp, body, 404, "PluginNotFound", "nothing")
	resp, body = call(t, h, "GET", "/kbs/v0/echo/a?x=1&x=2", tok, nil)
	wantProblem(t, resp, body, 400, "BadRequest", "appears 2 times")
	resp, body = call(t, h, "PATCH", "/kbs/v0/echo/a", tok, nil)
	wantProblem(t, resp, body, 405, "MethodNotAllowed", "PATCH")
	if got := resp.Header.Get("Allow"); got != "GET, POST, PUT, DELETE" {
		t.Fatalf("Allow: %q", got)
	}
}

func TestBodyLimit(t *testing.T) {
	h := newHarness(t, harnessOpts{plugins: withResourceAndEcho, maxBody: 1024})
	admin := h.adminToken(t)
	resp, body := call(t, h, "POST", "/kbs/v0/resource/default/key/big", admin, bytes.Repeat([]byte("x"), 1025))
	wantProblem(t, resp, body, 413, "PayloadTooLarge", "1024")
	resp, _ = call(t, h, "POST", "/kbs/v0/resource/default/key/big", admin, bytes.Repeat([]byte("x"), 1024))
	if resp.StatusCode != 200 {
		t.Fatalf("body at the limit: %d", resp.StatusCode)
	}
}

func TestAuthentication(t *testing.T) {
	h := newHarness(t, harnessOpts{plugins: withResourceAndEcho, policy: allowEchoGet})
	resp, body := call(t, h, "GET", "/kbs/v0/echo/a", "", nil)
	wantProblem(t, resp, body, 401, "TokenNotFound", "no attestation token")
	if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="trustgate"` {
		t.Fatalf("WWW-Authenticate: %q", got)
	}
	tok := attestSample(t, h, teeKey(t))
	bad := tok[:len(tok)-4] + "AAAA"
	resp, body = call(t, h, "GET", "/kbs/v0/echo/a", bad, nil)
	wantProblem(t, resp, body, 401, "TokenVerifierError", "attestation token")
	if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="trustgate", error="invalid_token"` {
		t.Fatalf("WWW-Authenticate: %q", got)
	}
	// An admin token is not an attestation token, and the reverse.
	resp, body = call(t, h, "GET", "/kbs/v0/echo/a", h.adminToken(t), nil)
	wantProblem(t, resp, body, 401, "TokenVerifierError", "")
	resp, body = call(t, h, "PUT", "/kbs/v0/echo/a", tok, nil)
	wantProblem(t, resp, body, 401, "AdminAuthAccess", "")
	resp, body = call(t, h, "PUT", "/kbs/v0/echo/a", h.adminToken(t), []byte("hi"))
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"admin":true`) || !strings.Contains(string(body), `"subject":"test-admin"`) {
		t.Fatalf("admin PUT: %d %s", resp.StatusCode, body)
	}
	// The token survives the cache: a second call answers the same.
	for range 2 {
		resp, body = call(t, h, "GET", "/kbs/v0/echo/a?q=1", tok, nil)
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"spiffe_id":"spiffe://example.org/tee/sample"`) {
			t.Fatalf("attested GET: %d %s", resp.StatusCode, body)
		}
	}
	// An expired token is refused even though it is cached.
	h.clock.Advance(6 * 60e9)
	resp, body = call(t, h, "GET", "/kbs/v0/echo/a", tok, nil)
	wantProblem(t, resp, body, 401, "TokenVerifierError", "expired")
}

func TestSessionCookieAfterAttest(t *testing.T) {
	h := newHarness(t, harnessOpts{plugins: withResourceAndEcho, policy: allowEchoGet})
	jar, _ := cookiejar.New(nil)
	hc := h.http.Client()
	hc.Jar = jar
	c := &rcartest.Client{Base: h.http.URL, HTTP: hc}
	ch, _, err := c.Auth("sample", "")
	if err != nil {
		t.Fatal(err)
	}
	// Before attestation the session cookie is no credential.
	resp, err := hc.Get(h.http.URL + "/kbs/v0/echo/a")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("unattested session: %d", resp.StatusCode)
	}
	if _, err := c.Attest(sampleAttestation(t, ch, teeKey(t))); err != nil {
		t.Fatal(err)
	}
	resp, err = hc.Get(h.http.URL + "/kbs/v0/echo/a")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("attested session cookie: %d", resp.StatusCode)
	}
}

// TestSessionIDKeptByHand is Trustee's curl flow: the client keeps the
// kbs-session-id from /auth by hand and sends it, unchanged, after attest.
// The id stays a credential until the session expires, and a second attest
// on the attested session answers the session's token.
func TestSessionIDKeptByHand(t *testing.T) {
	h := newHarness(t, harnessOpts{plugins: withResourceAndEcho, policy: allowEchoGet})
	c := h.client() // no cookie jar: c.Cookie is the id from /auth
	ch, _, err := c.Auth("sample", "")
	if err != nil {
		t.Fatal(err)
	}
	id := c.Cookie
	get := func() (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", h.http.URL+"/kbs/v0/echo/a", nil)
		req.Header.Set("Cookie", broker.SessionCookie+"="+id)
		resp, err := h.http.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, body := get()
	wantProblem(t, resp, body, 401, "TokenNotFound", "has not attested")
	a := sampleAttestation(t, ch, teeKey(t))
	tok, err := c.Attest(a)
	if err != nil {
		t.Fatal(err)
	}
	if resp, body = get(); resp.StatusCode != 200 || !strings.Contains(string(body), `"spiffe_id":"spiffe://example.org/tee/sample"`) {
		t.Fatalf("session id after attest: %d %s", resp.StatusCode, body)
	}
	// The session keeps the claims, not the bearer token.
	if sess, err := h.st.Sessions().Get(context.Background(), id); err != nil || !json.Valid(sess.Claims) || strings.Contains(string(sess.Claims), tok) {
		t.Fatalf("stored session: %v %q", err, sess.Claims)
	}
	// A second attest on the attested session answers its token, as
	// Trustee: the same claims (signed again, the session keeping no token).
	again, err := c.Attest(a)
	if err != nil || strings.Split(again, ".")[1] != strings.Split(tok, ".")[1] {
		t.Fatalf("second attest: %v, %q, want the claims of %q", err, again, tok)
	}
	if resp, body := call(t, h, "GET", "/kbs/v0/echo/a", again, nil); resp.StatusCode != 200 {
		t.Fatalf("token of the second attest: %d %s", resp.StatusCode, body)
	}
	// The id is a credential only while the session lives (1m here).
	h.clock.Advance(time.Minute)
	resp, body = get()
	wantProblem(t, resp, body, 401, "TokenNotFound", "expired")
	if _, err := c.Attest(a); err == nil {
		t.Fatal("attest on an expired session answered")
	}
}

func TestPolicyDenyAndMethod(t *testing.T) {
	h := newHarness(t, harnessOpts{plugins: withResourceAndEcho})
	tok := attestSample(t, h, teeKey(t))
	resp, body := call(t, h, "GET", "/kbs/v0/echo/a", tok, nil)
	wantProblem(t, resp, body, 403, "PolicyDeny", "denies GET")
	if resp, body = setPolicy(t, h, allowEchoGet); resp.StatusCode != 200 {
		t.Fatalf("set policy: %d %s", resp.StatusCode, body)
	}
	resp, _ = call(t, h, "GET", "/kbs/v0/echo/a", tok, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("GET after allowing: %d", resp.StatusCode)
	}
	resp, body = call(t, h, "DELETE", "/kbs/v0/echo/a", tok, nil)
	wantProblem(t, resp, body, 403, "PolicyDeny", "denies DELETE")
	resp, body = call(t, h, "POST", "/kbs/v0/echo/a", tok, []byte("x"))
	wantProblem(t, resp, body, 403, "PolicyDeny", "denies POST")
}

func TestPolicyUpdate(t *testing.T) {
	h := newHarness(t, harnessOpts{plugins: withResourceAndEcho, policy: allowEchoGet})
	tok := attestSample(t, h, teeKey(t))
	resp, body := setPolicy(t, h, "package policy\n\nallow if {\n\tinput.method == \"GET\" )\n}\n")
	wantProblem(t, resp, body, 400, "PolicyInvalid", "4:")
	resp, _ = call(t, h, "GET", "/kbs/v0/echo/a", tok, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("old policy no longer in force after a refused update: %d", resp.StatusCode)
	}
	resp, body = call(t, h, "GET", "/kbs/v0/resource-policy", h.adminToken(t), nil)
	if got, _ := b64.DecodeString(string(body)); resp.StatusCode != 200 || string(got) != allowEchoGet {
		t.Fatalf("GET resource-policy: %d %q", resp.StatusCode, got)
	}
	// Hot reload: a deny-all policy takes effect on the next request.
	if resp, body = setPolicy(t, h, "package policy\ndefault allow := false\n"); resp.StatusCode != 200 {
		t.Fatalf("set: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, h, "GET", "/kbs/v0/echo/a", tok, nil)
	wantProblem(t, resp, body, 403, "PolicyDeny", "")
	// Only admins set the policy.
	resp, _ = call(t, h, "POST", "/kbs/v0/resource-policy", tok, []byte(`{"policy":""}`))
	if resp.StatusCode != 401 {
		t.Fatalf("attested caller set the policy: %d", resp.StatusCode)
	}
	resp, body = call(t, h, "POST", "/kbs/v0/resource-policy", h.adminToken(t), []byte(`{"policy":"!!"}`))
	wantProblem(t, resp, body, 400, "BadRequest", "base64url")
}

func TestResourceJWE(t *testing.T) {
	h := newHarness(t, harnessOpts{plugins: withResourceAndEcho, policy: allowEchoGet})
	value := []byte("the secret value \x00\xff")
	resp, body := call(t, h, "POST", "/kbs/v0/resource/default/key/1", h.adminToken(t), value)
	if resp.StatusCode != 200 {
		t.Fatalf("POST: %d %s", resp.StatusCode, body)
	}
	ecPriv, ecPub := ecTEEKey(t)
	rsaPriv, rsaPub := rsaTEEKey(t)
	for name, c := range map[string]struct {
		priv any
		pub  map[string]string
		alg  string
	}{"P-256": {ecPriv, ecPub, "ECDH-ES+A256KW"}, "RSA": {rsaPriv, rsaPub, "RSA-OAEP-256"}} {
		t.Run(name, func(t *testing.T) {
			tok := attestSample(t, h, c.pub)
			resp, body := call(t, h, "GET", "/kbs/v0/resource/default/key/1", tok, nil)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("GET: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
			if bytes.Contains(body, value[:10]) {
				t.Fatal("answer contains the plaintext")
			}
			// Trustee's Response shape: exactly these members.
			var members map[string]json.RawMessage
			if err := json.Unmarshal(body, &members); err != nil {
				t.Fatal(err)
			}
			var keys []string
			for k := range members {
				keys = append(keys, k)
			}
			if len(keys) != 5 || members["protected"] == nil || members["encrypted_key"] == nil || members["iv"] == nil || members["ciphertext"] == nil || members["tag"] == nil {
				t.Fatalf("members %v: want protected, encrypted_key, iv, ciphertext, tag", keys)
			}
			obj, err := jose.ParseEncryptedJSON(string(body), []jose.KeyAlgorithm{jose.KeyAlgorithm(c.alg)}, []jose.ContentEncryption{jose.A256GCM})
			if err != nil {
				t.Fatal(err)
			}
			got, err := obj.Decrypt(c.priv)
			if err != nil || !bytes.Equal(got, value) {
				t.Fatalf("go-jose decrypt: %q, %v", got, err)
			}
			got, err = decryptByHand(body, c.priv)
			if err != nil || !bytes.Equal(got, value) {
				t.Fatalf("independent decrypt: %q, %v", got, err)
			}
		})
	}
	// A caller whose policy input differs (svn 2) is denied.
	c := h.client()
	ch, _, _ := c.Auth("sample", "")
	pub := teeKey(t)
	rd, _ := rcartest.ReportData("sha384", pub, ch.Nonce, "")
	tok, err := c.Attest(rcartest.Attestation{RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: pub},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: rcartest.SampleEvidence("2", rd)}})
	if err != nil {
		t.Fatal(err)
	}
	resp, body = call(t, h, "GET", "/kbs/v0/resource/default/key/1", tok, nil)
	wantProblem(t, resp, body, 403, "PolicyDeny", "")
	// Missing resources are 404; admins delete.
	tok = attestSample(t, h, ecPub)
	resp, body = call(t, h, "GET", "/kbs/v0/resource/default/key/2", tok, nil)
	wantProblem(t, resp, body, 404, "PluginError", "no resource")
	resp, _ = call(t, h, "DELETE", "/kbs/v0/resource/default/key/1", tok, nil)
	if resp.StatusCode != 401 {
		t.Fatalf("attested DELETE: %d", resp.StatusCode)
	}
	resp, _ = call(t, h, "DELETE", "/kbs/v0/resource/default/key/1", h.adminToken(t), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("admin DELETE: %d", resp.StatusCode)
	}
}

func TestAuditAndMetrics(t *testing.T) {
	var buf syncbuf.Buffer
	reg := prometheus.NewRegistry()
	h := newHarness(t, harnessOpts{plugins: withResourceAndEcho, policy: allowEchoGet, metrics: reg,
		audit: slog.New(slog.NewJSONHandler(&buf, nil))})
	tok := attestSample(t, h, teeKey(t))
	call(t, h, "GET", "/kbs/v0/echo/x/y", tok, nil)
	call(t, h, "DELETE", "/kbs/v0/echo/x", tok, nil)
	call(t, h, "GET", "/kbs/v0/echo/x", "", nil)
	call(t, h, "PUT", "/kbs/v0/echo/x", h.adminToken(t), nil)
	call(t, h, "GET", "/kbs/v0/echo/x?fail=teapot", tok, nil)
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		if m["msg"] == "plugin request" {
			recs = append(recs, m)
		}
	}
	if len(recs) != 5 {
		t.Fatalf("%d audit records, want 5: %s", len(recs), buf.String())
	}
	want := []struct{ method, verdict, who, reason string }{
		{"GET", "allowed", "spiffe://example.org/tee/sample", "GET echo for spiffe://example.org/tee/sample"},
		{"DELETE", "denied", "spiffe://example.org/tee/sample", ""},
		{"GET", "unauthenticated", "", ""},
		{"PUT", "admin", "test-admin", ""},
		{"GET", "allowed", "spiffe://example.org/tee/sample", "GET echo for spiffe://example.org/tee/sample"},
	}
	for i, w := range want {
		r := recs[i]
		who, _ := r["spiffe_id"].(string)
		if a, ok := r["admin"].(string); ok {
			who = a
		}
		reason, _ := r["reason"].(string)
		if r["plugin"] != "echo" || r["method"] != w.method || r["verdict"] != w.verdict || who != w.who || reason != w.reason {
			t.Errorf("record %d: %v; want %+v", i, r, w)
		}
	}
	if recs[0]["path"] != "x/y" || recs[4]["status"] != float64(418) {
		t.Errorf("records: %v / %v", recs[0], recs[4])
	}
	for _, c := range []struct {
		method, verdict string
		n               float64
	}{{"GET", "allowed", 2}, {"DELETE", "denied", 1}, {"GET", "unauthenticated", 1}, {"PUT", "admin", 1}} {
		got := testutil.ToFloat64(counter(t, reg, "echo", c.method, c.verdict))
		if got != c.n {
			t.Errorf("counter echo/%s/%s = %v, want %v", c.method, c.verdict, got, c.n)
		}
	}
}

// counter finds the plugin request counter for the labels via the registry.
func counter(t *testing.T, reg *prometheus.Registry, labels ...string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "trustgate_broker_plugin_requests_total" {
			continue
		}
		for _, m := range mf.Metric {
			got := map[string]string{}
			for _, l := range m.Label {
				got[l.GetName()] = l.GetValue()
			}
			if got["plugin"] == labels[0] && got["method"] == labels[1] && got["verdict"] == labels[2] {
				return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x", Help: "x"}, func() float64 { return m.Counter.GetValue() })
			}
		}
	}
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x", Help: "x"}, func() float64 { return 0 })
}
