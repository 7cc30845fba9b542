package broker_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dtoken "github.com/distribution/distribution/v3/registry/auth/token"
	"github.com/go-jose/go-jose/v4"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/client/auth"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
)

const registryService = "registry.test"

// tokenPolicy lets sample-TEE callers GET echo paths and pull from team/
// repositories of registry.test; only team/rw may be pushed, by anyone
// attested; svid issuance is open to the sample TEE.
const tokenPolicy = `package policy

default allow := false

allow if {
	input.plugin == "echo"
	input.method == "GET"
	input.path[0] != "denied"
}

allow if {
	input.plugin == "svid"
	input.claims.tee == "sample"
}

grant contains "pull" if {
	input.service == "registry.test"
	input.scope.type == "repository"
	startswith(input.scope.name, "team/")
	startswith(input.claims.spiffe_id, "spiffe://example.org/tee/")
}

grant contains "push" if {
	input.service == "registry.test"
	input.scope.name == "team/rw"
	input.credential == "attestation"
}

grant contains "*" if {
	input.service == "registry.test"
	input.scope.type == "registry"
	input.credential == "jwt-svid"
}
`

func tokenHarness(t testing.TB, extra ...plugin.Plugin) *harness {
	return newHarness(t, harnessOpts{policy: tokenPolicy,
		plugins: func(store.Store, *seal.Sealer) []plugin.Plugin {
			return append([]plugin.Plugin{echoPlugin{}}, extra...)
		},
		tokenService: &broker.TokenServiceOptions{Service: "trustgate", Services: []string{registryService}}})
}

// tokenAnswer is a /token answer as the distribution token spec defines it.
type tokenAnswer struct {
	Token       string  `json:"token"`
	AccessToken string  `json:"access_token"`
	ExpiresIn   float64 `json:"expires_in"`
	IssuedAt    string  `json:"issued_at"`
	Scope       *string `json:"scope"`
	TokenType   string  `json:"token_type"`
}

// getToken calls GET /token with the query and Authorization value.
func getToken(t testing.TB, h *harness, query url.Values, authz string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", h.http.URL+"/token?"+query.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	return do(t, h, req)
}

func do(t testing.TB, h *harness, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := h.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp, []byte(b.String())
}

// verifyWithDistribution checks a token exactly as a distribution registry
// does, trusting the broker's published JWKS, and returns its claims.
func verifyWithDistribution(t testing.TB, h *harness, raw, service string) *dtoken.ClaimSet {
	t.Helper()
	resp, body := call(t, h, "GET", "/.well-known/jwks.json", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("jwks: %d", resp.StatusCode)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatal(err)
	}
	keys := map[string]crypto.PublicKey{}
	for _, k := range set.Keys {
		keys[k.KeyID] = k.Key
	}
	tok, err := dtoken.NewToken(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("distribution cannot parse the token: %v", err)
	}
	claims, err := tok.Verify(dtoken.VerifyOptions{TrustedIssuers: []string{"https://trustgate.test"}, AcceptedAudiences: []string{service}, TrustedKeys: keys})
	if err != nil {
		t.Fatalf("distribution refuses the token: %v", err)
	}
	return claims
}

func accessStrings(c *dtoken.ClaimSet) []string {
	var out []string
	for _, a := range c.Access {
		out = append(out, a.Type+":"+a.Name+":"+strings.Join(a.Actions, ","))
	}
	return out
}

// decodeAnswer returns a decoder of a successful token answer.
func decodeAnswer(t testing.TB) func(*http.Response, []byte) tokenAnswer {
	return func(resp *http.Response, body []byte) tokenAnswer {
		t.Helper()
		if resp.StatusCode != 200 {
			t.Fatalf("token: %d %s", resp.StatusCode, body)
		}
		var a tokenAnswer
		if err := json.Unmarshal(body, &a); err != nil {
			t.Fatal(err)
		}
		return a
	}
}

func TestTokenServicePartialGrant(t *testing.T) {
	h := tokenHarness(t)
	att := attestSample(t, h, teeKey(t))
	q := url.Values{"service": {registryService}, "scope": {"repository:team/app:pull,push", "repository:other/x:pull repository:team/rw:push,pull"}}
	resp, body := getToken(t, h, q, "Bearer "+att)
	a := decodeAnswer(t)(resp, body)
	// expires_in is whole seconds to the exp claim, which is whole seconds.
	if a.Token == "" || a.Token != a.AccessToken || a.ExpiresIn < 299 || a.ExpiresIn > 300 || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("answer: %+v %v", a, resp.Header)
	}
	issued, err := time.Parse(time.RFC3339, a.IssuedAt)
	if err != nil || issued.Sub(h.clock.Now()).Abs() > time.Second {
		t.Fatalf("issued_at %q: %v", a.IssuedAt, err)
	}
	c := verifyWithDistribution(t, h, a.Token, registryService)
	got := accessStrings(c)
	want := []string{"repository:team/app:pull", "repository:team/rw:pull,push"}
	if !slices.Equal(got, want) {
		t.Fatalf("access %v, want %v", got, want)
	}
	if c.Subject != "spiffe://example.org/tee/sample" || c.JWTID == "" || c.Expiration-c.IssuedAt != 300 || c.NotBefore != c.IssuedAt {
		t.Fatalf("claims %+v", c)
	}
	// A registry token carries no caller claims (they are for the broker).
	var raw map[string]any
	if err := json.Unmarshal(payload(t, a.Token), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"spiffe_id", "selectors", "tee", "tcb-status", "tee-pubkey"} {
		if _, ok := raw[k]; ok {
			t.Errorf("registry token carries %q", k)
		}
	}

	// Nothing granted is still a token, with an empty access list.
	resp, body = getToken(t, h, url.Values{"service": {registryService}, "scope": {"repository:other/x:pull,push"}}, "Bearer "+att)
	a = decodeAnswer(t)(resp, body)
	if err := json.Unmarshal(payload(t, a.Token), &raw); err != nil {
		t.Fatal(err)
	}
	if acc, ok := raw["access"].([]any); !ok || len(acc) != 0 {
		t.Fatalf("empty grant: access = %#v", raw["access"])
	}
	if c := verifyWithDistribution(t, h, a.Token, registryService); len(c.Access) != 0 {
		t.Fatalf("empty grant verified as %v", accessStrings(c))
	}
	// The token is not valid for another service.
	if _, err := mustToken(t, a.Token).Verify(dtoken.VerifyOptions{TrustedIssuers: []string{"https://trustgate.test"}, AcceptedAudiences: []string{"trustgate"}, TrustedKeys: jwksKeys(t, h)}); err == nil {
		t.Fatal("a registry.test token verified for service trustgate")
	}
}

func mustToken(t testing.TB, raw string) *dtoken.Token {
	tok, err := dtoken.NewToken(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func jwksKeys(t testing.TB, h *harness) map[string]crypto.PublicKey {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(h.opts.Tokens.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	keys := map[string]crypto.PublicKey{}
	for _, k := range set.Keys {
		keys[k.KeyID] = k.Key
	}
	return keys
}

// payload decodes a compact JWS payload without verifying it.
func payload(t testing.TB, raw string) []byte {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("not a compact JWS: %q", raw)
	}
	b, err := b64.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTokenServiceLifetimeAndExpiredCaller(t *testing.T) {
	h := tokenHarness(t)
	att := attestSample(t, h, teeKey(t))
	q := url.Values{"service": {registryService}, "scope": {"repository:team/app:pull"}}
	h.clock.Advance(4 * time.Minute)
	a := decodeAnswer(t)(getTokenOK(t, h, q, att))
	if a.ExpiresIn < 59 || a.ExpiresIn > 60 {
		t.Fatalf("expires_in %v: must not outlive the attestation token (60 s left)", a.ExpiresIn)
	}
	// (The broker's clock has moved on, so distribution, which reads the
	// real one, would refuse the nbf; read the claims directly.)
	var c struct {
		Exp int64 `json:"exp"`
	}
	if err := json.Unmarshal(payload(t, a.Token), &c); err != nil || c.Exp > h.clock.Now().Unix()+60 {
		t.Fatalf("exp %d beyond the caller's token (%v)", c.Exp, err)
	}
	h.clock.Advance(61 * time.Second)
	resp, body := getToken(t, h, q, "Bearer "+att)
	wantProblem(t, resp, body, 401, "TokenVerifierError", "expired")
	want := `Bearer realm="` + h.http.URL + `/token",service="` + registryService + `",error="invalid_token"`
	if got := resp.Header.Get("WWW-Authenticate"); got != want {
		t.Fatalf("challenge %q, want %q", got, want)
	}
}

func getTokenOK(t testing.TB, h *harness, q url.Values, att string) (*http.Response, []byte) {
	t.Helper()
	return getToken(t, h, q, "Bearer "+att)
}

func TestTokenServiceRefusals(t *testing.T) {
	h := tokenHarness(t)
	att := attestSample(t, h, teeKey(t))
	resp, body := getToken(t, h, url.Values{"service": {registryService}, "scope": {"repository:team/app:pull"}}, "")
	wantProblem(t, resp, body, 401, "TokenNotFound", "no credential")
	// The challenge names the service requested, not the broker's own.
	if got, want := resp.Header.Get("WWW-Authenticate"), `Bearer realm="`+h.http.URL+`/token",service="`+registryService+`"`; got != want {
		t.Fatalf("challenge %q, want %q", got, want)
	}
	resp, body = getToken(t, h, url.Values{"service": {registryService}}, "Digest foo")
	wantProblem(t, resp, body, 401, "TokenVerifierError", "Authorization must be")
	if got, want := resp.Header.Get("WWW-Authenticate"), `Bearer realm="`+h.http.URL+`/token",service="`+registryService+`",error="invalid_request"`; got != want {
		t.Fatalf("challenge %q, want %q", got, want)
	}
	// Without a service, or with an unknown one, it names the broker's own.
	resp, _ = getToken(t, h, url.Values{"scope": {"plugin:echo/a:get"}}, "")
	if got, want := resp.Header.Get("WWW-Authenticate"), `Bearer realm="`+h.http.URL+`/token",service="trustgate"`; got != want {
		t.Fatalf("challenge %q, want %q", got, want)
	}
	for _, tc := range []struct {
		query  string
		detail string
	}{
		{"scope=repository:Team/app:pull", "bad path component"},
		{"scope=repository:team/app:", "no actions"},
		{"scope=repository:team/app", "want type:name:actions"},
		{"scope=repo(sitory:team/app:pull", "unterminated class"},
		{"scope=repository:team/app:PULL", "bad action"},
		{"service=nope&scope=repository:team/app:pull", "unknown service"},
		{"service=registry.test&service=trustgate", "service appears 2 times"},
		{"scope=%zz", "query"},
		{"scope=" + strings.Repeat("repository:a:pull+", 33), "more than 32 scopes"},
	} {
		req, _ := http.NewRequest("GET", h.http.URL+"/token?"+tc.query, nil)
		req.Header.Set("Authorization", "Bearer "+att)
		resp, body := do(t, h, req)
		wantProblem(t, resp, body, 400, "BadRequest", tc.detail)
	}
	// Credentials that are not caller credentials.
	scoped := decodeAnswer(t)(getTokenOK(t, h, url.Values{"scope": {"plugin:echo/a:get"}}, att)).Token
	resp, body = getToken(t, h, nil, "Bearer "+scoped)
	wantProblem(t, resp, body, 401, "TokenVerifierError", "cannot be exchanged")
	resp, body = getToken(t, h, nil, "Bearer "+h.adminToken(t))
	wantProblem(t, resp, body, 401, "TokenVerifierError", "unknown key id")
	resp, body = getToken(t, h, nil, "Digest foo")
	wantProblem(t, resp, body, 401, "TokenVerifierError", "Authorization must be")
	// POST /token is an OAuth2 form: its errors are OAuth2's.
	for _, tc := range []struct {
		form url.Values
		code string
	}{
		{url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"x"}, "client_id": {"c"}}, "unsupported_grant_type"},
		{url.Values{"grant_type": {"client_credentials"}, "client_id": {"c"}}, "unsupported_grant_type"},
		{url.Values{"grant_type": {"password"}, "password": {att}}, "invalid_request"},
		{url.Values{"client_id": {"c"}}, "invalid_request"},
		{url.Values{"grant_type": {"password"}, "password": {att}, "client_id": {"c"}, "scope": {"repository::pull"}}, "invalid_scope"},
	} {
		resp, body := postToken(t, h, tc.form)
		var e struct{ Error, ErrorDescription string }
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode != 400 || !strings.Contains(string(body), `"error":"`+tc.code+`"`) {
			t.Errorf("POST %v: %d %s; want 400 %s", tc.form, resp.StatusCode, body, tc.code)
		}
	}
	resp, body = postToken(t, h, url.Values{"grant_type": {"password"}, "password": {"not-a-token"}, "client_id": {"c"}})
	if resp.StatusCode != 401 || !strings.Contains(string(body), `"error":"invalid_grant"`) {
		t.Fatalf("bad password: %d %s", resp.StatusCode, body)
	}
}

func postToken(t testing.TB, h *harness, form url.Values) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", h.http.URL+"/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(t, h, req)
}

func TestTokenServiceBasicAndOAuth2(t *testing.T) {
	h := tokenHarness(t)
	att := attestSample(t, h, teeKey(t))
	q := url.Values{"service": {registryService}, "scope": {"repository:team/app:pull"}}
	for _, user := range []string{"anything", "spiffe://example.org/tee/sample", ""} {
		req, _ := http.NewRequest("GET", h.http.URL+"/token?"+q.Encode(), nil)
		req.SetBasicAuth(user, att)
		a := decodeAnswer(t)(do(t, h, req))
		if got := accessStrings(verifyWithDistribution(t, h, a.Token, registryService)); !slices.Equal(got, []string{"repository:team/app:pull"}) {
			t.Fatalf("basic %q: access %v", user, got)
		}
	}
	req, _ := http.NewRequest("GET", h.http.URL+"/token?"+q.Encode(), nil)
	req.SetBasicAuth("spiffe://example.org/someone/else", att)
	resp, body := do(t, h, req)
	wantProblem(t, resp, body, 401, "TokenVerifierError", "not the credential's SPIFFE ID")

	resp, body = postToken(t, h, url.Values{"grant_type": {"password"}, "username": {"u"}, "password": {att}, "client_id": {"test"},
		"service": {registryService}, "scope": {"repository:team/app:pull,push repository:team/rw:push"}})
	a := decodeAnswer(t)(resp, body)
	if a.AccessToken == "" || a.Token != "" || a.TokenType != "Bearer" || a.Scope == nil || *a.Scope != "repository:team/app:pull repository:team/rw:push" {
		t.Fatalf("oauth2 answer %s", body)
	}
	if got := accessStrings(verifyWithDistribution(t, h, a.AccessToken, registryService)); !slices.Equal(got, []string{"repository:team/app:pull", "repository:team/rw:push"}) {
		t.Fatalf("oauth2 access %v", got)
	}
}

// svidHolder hands the token service the svid plugin that the harness
// builds later.
type svidHolder struct{ p *svid.Plugin }

func (s *svidHolder) Bundle() []byte { return s.p.Bundle() }

func TestTokenServiceJWTSVID(t *testing.T) {
	holder := &svidHolder{}
	h := newHarness(t, harnessOpts{policy: tokenPolicy,
		plugins: func(st store.Store, sealer *seal.Sealer) []plugin.Plugin {
			p, err := svid.New(context.Background(), svid.DefaultConfig(), td, st, sealer, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			holder.p = p
			return []plugin.Plugin{echoPlugin{}, p}
		},
		tokenService: &broker.TokenServiceOptions{Service: "trustgate", Services: []string{registryService}, SVIDs: holder, SVIDAudience: "trustgate-token"}})
	priv, pub := ecTEEKey(t)
	att := attestSample(t, h, pub)
	jwtSVID := func(aud string) string {
		body, _ := json.Marshal(svid.JWTRequest{SPIFFEID: "spiffe://example.org/tee/sample", Audience: []string{aud}})
		resp, b := call(t, h, "POST", "/kbs/v0/svid/jwt", att, body)
		if resp.StatusCode != 200 {
			t.Fatalf("jwt-svid: %d %s", resp.StatusCode, b)
		}
		obj, err := jose.ParseEncryptedJSON(string(b), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, []jose.ContentEncryption{jose.A256GCM})
		if err != nil {
			t.Fatal(err)
		}
		plain, err := obj.Decrypt(priv)
		if err != nil {
			t.Fatal(err)
		}
		var r svid.JWTResponse
		if err := json.Unmarshal(plain, &r); err != nil {
			t.Fatal(err)
		}
		return r.Token
	}
	sv := jwtSVID("trustgate-token")
	q := url.Values{"service": {registryService}, "scope": {"repository:team/rw:pull,push", "registry:catalog:*"}}
	a := decodeAnswer(t)(getToken(t, h, q, "Bearer "+sv))
	// The policy grants push to attestation tokens only, and the catalog
	// to JWT-SVIDs only.
	if got := accessStrings(verifyWithDistribution(t, h, a.Token, registryService)); !slices.Equal(got, []string{"registry:catalog:*", "repository:team/rw:pull"}) {
		t.Fatalf("jwt-svid access %v", got)
	}
	// Basic with the SVID as the password works too.
	req, _ := http.NewRequest("GET", h.http.URL+"/token?"+q.Encode(), nil)
	req.SetBasicAuth("spiffe://example.org/tee/sample", sv)
	decodeAnswer(t)(do(t, h, req))
	// An SVID for another audience is refused, and an SVID is no plugin
	// credential.
	resp, body := getToken(t, h, q, "Bearer "+jwtSVID("someone-else"))
	wantProblem(t, resp, body, 401, "TokenVerifierError", "audience")
	resp, body = call(t, h, "GET", "/kbs/v0/echo/a", sv, nil)
	wantProblem(t, resp, body, 401, "TokenVerifierError", "accepted only by the token service")
	// The same answer for an SVID the broker has never seen, which is in
	// no cache.
	resp, body = call(t, h, "GET", "/kbs/v0/echo/a", jwtSVID("trustgate-token"), nil)
	wantProblem(t, resp, body, 401, "TokenVerifierError", "accepted only by the token service")
}

func TestPluginChallengesAndScopedTokens(t *testing.T) {
	h := tokenHarness(t)
	realm := h.http.URL + "/token"
	resp, body := call(t, h, "GET", "/kbs/v0/echo/a", "", nil)
	wantProblem(t, resp, body, 401, "TokenNotFound", "")
	if got, want := resp.Header.Get("WWW-Authenticate"), `Bearer realm="`+realm+`",service="trustgate",scope="plugin:echo/a:get"`; got != want {
		t.Fatalf("challenge %q, want %q", got, want)
	}
	// A path no scope can name is challenged without a scope.
	resp, _ = call(t, h, "GET", "/kbs/v0/echo/Upper", "", nil)
	if got, want := resp.Header.Get("WWW-Authenticate"), `Bearer realm="`+realm+`",service="trustgate"`; got != want {
		t.Fatalf("challenge %q, want %q", got, want)
	}
	att := attestSample(t, h, teeKey(t))
	// Policy allows GET echo/a but not DELETE, nor GET echo/denied/x: those
	// actions are not granted, and the token says so.
	q := url.Values{"service": {"trustgate"}, "scope": {"plugin:echo/a:get,delete", "plugin:echo/denied/x:get", "plugin:nope/a:get"}}
	a := decodeAnswer(t)(getTokenOK(t, h, q, att))
	var c struct {
		Access []map[string]any `json:"access"`
		SPIFFE string           `json:"spiffe_id"`
	}
	if err := json.Unmarshal(payload(t, a.Token), &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Access) != 1 || c.Access[0]["name"] != "echo/a" || c.SPIFFE != "spiffe://example.org/tee/sample" {
		t.Fatalf("plugin token claims %s", payload(t, a.Token))
	}
	resp, body = call(t, h, "GET", "/kbs/v0/echo/a?q=1", a.Token, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"spiffe_id":"spiffe://example.org/tee/sample"`) {
		t.Fatalf("scoped GET: %d %s", resp.StatusCode, body)
	}
	// The same token for another path, or another method, is refused.
	for _, tc := range []struct{ method, path, scope string }{
		{"GET", "/kbs/v0/echo/b", "plugin:echo/b:get"},
		{"GET", "/kbs/v0/echo/a/b", "plugin:echo/a/b:get"},
		{"GET", "/kbs/v0/echo", "plugin:echo:get"},
		{"DELETE", "/kbs/v0/echo/a", "plugin:echo/a:delete"},
	} {
		resp, body := call(t, h, tc.method, tc.path, a.Token, nil)
		wantProblem(t, resp, body, 403, "InsufficientScope", "does not grant")
		if got, want := resp.Header.Get("WWW-Authenticate"), `Bearer realm="`+realm+`",service="trustgate",scope="`+tc.scope+`",error="insufficient_scope"`; got != want {
			t.Fatalf("%s %s: challenge %q, want %q", tc.method, tc.path, got, want)
		}
	}
	// A registry token is not a broker token.
	reg := decodeAnswer(t)(getTokenOK(t, h, url.Values{"service": {registryService}, "scope": {"plugin:echo/a:get"}}, att))
	resp, body = call(t, h, "GET", "/kbs/v0/echo/a", reg.Token, nil)
	wantProblem(t, resp, body, 401, "TokenVerifierError", "is for service")
	// A policy denial carries an insufficient_scope challenge too.
	resp, body = call(t, h, "GET", "/kbs/v0/echo/denied/x", att, nil)
	wantProblem(t, resp, body, 403, "PolicyDeny", "")
	if got, want := resp.Header.Get("WWW-Authenticate"), `Bearer realm="`+realm+`",service="trustgate",scope="plugin:echo/denied/x:get",error="insufficient_scope"`; got != want {
		t.Fatalf("challenge %q, want %q", got, want)
	}
	// The policy still decides at request time: after a policy update
	// that denies echo, the scoped token no longer works.
	if resp, body := setPolicy(t, h, "package policy\n\ndefault allow := false\n"); resp.StatusCode != 200 {
		t.Fatalf("set policy: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, h, "GET", "/kbs/v0/echo/a", a.Token, nil)
	wantProblem(t, resp, body, 403, "PolicyDeny", "")
	// And /token picks up the new policy at once (hot reload).
	a = decodeAnswer(t)(getTokenOK(t, h, q, att))
	if err := json.Unmarshal(payload(t, a.Token), &c); err != nil || len(c.Access) != 0 {
		t.Fatalf("after policy update: %s", payload(t, a.Token))
	}
}

// FuzzTokenQuery sends arbitrary queries to GET /token with a valid
// attestation token. The broker must answer 200 or 400 (never a 5xx or a
// panic), and a granted token may only hold actions that the query asked
// for, on resources it named, as the standard library and the scope
// grammar read the query independently of the handler.
func FuzzTokenQuery(f *testing.F) {
	h := tokenHarness(f)
	att := attestSample(f, h, teeKey(f))
	for _, seed := range []string{
		"service=registry.test&scope=repository:team/app:pull,push",
		"scope=plugin:echo/a:get,delete&scope=plugin:echo/b:get",
		"service=registry.test&scope=repository:team/rw:push+repository:other:pull",
		"scope=repository(plugin):team/x:pull",
		"scope=registry:catalog:*",
		"scope=repository:localhost:5000/team/a:pull",
		"service=&scope=",
		"scope=%3A%3A%3A",
		"scope=repository:team/app:pull&scope=repository:team/app:push",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, rawQuery string) {
		req, err := http.NewRequest("GET", "/token", nil)
		if err != nil {
			t.Skip()
		}
		req.URL.RawQuery = rawQuery
		req.Header.Set("Authorization", "Bearer "+att)
		rec := httptest.NewRecorder()
		h.srv.ServeHTTP(rec, req)
		switch rec.Code {
		case 400:
			return
		case 200:
		default:
			t.Fatalf("query %q: status %d: %s", rawQuery, rec.Code, rec.Body)
		}
		var a tokenAnswer
		if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
			t.Fatal(err)
		}
		var c struct {
			Aud    string `json:"aud"`
			Access []struct {
				Type, Class, Name string
				Actions           []string
			} `json:"access"`
		}
		if err := json.Unmarshal(payload(t, a.Token), &c); err != nil {
			t.Fatal(err)
		}
		q, err := url.ParseQuery(rawQuery)
		if err != nil {
			t.Fatalf("query %q answered 200 but does not parse: %v", rawQuery, err)
		}
		asked := map[string]bool{}
		for _, v := range q["scope"] {
			for _, f := range strings.Fields(v) {
				sc, err := auth.ParseScope(f)
				if err != nil {
					t.Fatalf("query %q answered 200 with a bad scope %q", rawQuery, f)
				}
				for _, act := range sc.Actions {
					asked[sc.Type+"("+sc.Class+"):"+sc.Name+":"+act] = true
				}
			}
		}
		if svc := q.Get("service"); c.Aud != svc && (svc != "" || c.Aud != "trustgate") {
			t.Fatalf("query %q: token for service %q", rawQuery, c.Aud)
		}
		for _, g := range c.Access {
			for _, act := range g.Actions {
				if !asked[g.Type+"("+g.Class+"):"+g.Name+":"+act] {
					t.Fatalf("query %q: granted %s:%s:%s, which it did not ask for", rawQuery, g.Type, g.Name, act)
				}
			}
		}
	})
}

// TestTokenServiceX5CServices: tokens for a service in x5c_services carry
// a certificate chain that distribution verifies with nothing but
// /.well-known/token-ca.pem as its rootcertbundle, and a thumbprint kid;
// tokens for the other services carry no chain, so that a registry with
// only the JWKS keeps accepting them.
func TestTokenServiceX5CServices(t *testing.T) {
	const v2 = "registry-v2.test"
	h := newHarness(t, harnessOpts{policy: strings.ReplaceAll(tokenPolicy, `input.service == "registry.test"`, `input.service in {"registry.test", "registry-v2.test"}`),
		tokenService: &broker.TokenServiceOptions{Service: "trustgate", Services: []string{registryService, v2}, X5CServices: []string{v2}}})
	att := attestSample(t, h, teeKey(t))
	resp, pemBody := call(t, h, "GET", "/.well-known/token-ca.pem", "", nil)
	roots := x509.NewCertPool()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-pem-file" || !roots.AppendCertsFromPEM(pemBody) {
		t.Fatalf("token-ca.pem: %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), pemBody)
	}
	header := func(tok string) map[string]any {
		t.Helper()
		raw, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
		var h map[string]any
		if err := json.Unmarshal(raw, &h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	scope := url.Values{"scope": {"repository:team/app:pull"}}
	scope.Set("service", v2)
	chained := decodeAnswer(t)(getTokenOK(t, h, scope, att)).Token
	if hd := header(chained); hd["x5c"] == nil || !regexp.MustCompile(`^([A-Z2-7]{4}:){11}[A-Z2-7]{4}$`).MatchString(fmt.Sprint(hd["kid"])) {
		t.Fatalf("token for %s: header %v, want x5c and a libtrust kid", v2, hd)
	}
	tok, err := dtoken.NewToken(chained, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := tok.Verify(dtoken.VerifyOptions{TrustedIssuers: []string{"https://trustgate.test"}, AcceptedAudiences: []string{v2}, Roots: roots})
	if err != nil || !slices.Equal(accessStrings(claims), []string{"repository:team/app:pull"}) {
		t.Fatalf("distribution with the CA bundle only: %v %v", err, claims)
	}
	scope.Set("service", registryService)
	plain := decodeAnswer(t)(getTokenOK(t, h, scope, att)).Token
	if hd := header(plain); hd["x5c"] != nil {
		t.Fatalf("token for %s (not in x5c_services) has x5c: %v", registryService, hd)
	}
	verifyWithDistribution(t, h, plain, registryService)
}
