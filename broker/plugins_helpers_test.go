package broker_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/resource"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
)

var b64 = base64.RawURLEncoding

// echoPlugin answers what it was asked. GET, POST and DELETE need
// attestation; PUT needs an admin. Nothing is encrypted.
type echoPlugin struct{}

func (echoPlugin) Name() string { return "echo" }
func (echoPlugin) Access(m string) plugin.Access {
	switch m {
	case "GET", "POST", "DELETE":
		return plugin.Attested
	case "PUT":
		return plugin.Admin
	}
	return plugin.Denied
}
func (echoPlugin) Encrypt(string) bool { return false }
func (echoPlugin) Handle(_ context.Context, r *plugin.Request) (*plugin.Response, error) {
	if r.Query.Get("fail") == "teapot" {
		return nil, plugin.Errorf(http.StatusTeapot, "asked to fail")
	}
	body, err := json.Marshal(map[string]any{"method": r.Method, "path": r.Path, "query": r.Query, "body": string(r.Body),
		"subject": r.Caller.Subject, "admin": r.Caller.Admin, "spiffe_id": r.Caller.SPIFFEID})
	return &plugin.Response{Body: body}, err
}

func withResourceAndEcho(st store.Store, sealer *seal.Sealer) []plugin.Plugin {
	rp, err := resource.New(resource.Options{Resources: st.Resources(), Sealer: sealer})
	if err != nil {
		panic(err)
	}
	return []plugin.Plugin{rp, echoPlugin{}}
}

// ecTEEKey is a P-256 key pair and its public JWK as a Trustee client sends
// it in runtime-data.
func ecTEEKey(t testing.TB) (*ecdsa.PrivateKey, map[string]string) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := k.PublicKey.Bytes()
	return k, map[string]string{"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": b64.EncodeToString(b[1:33]), "y": b64.EncodeToString(b[33:65])}
}

func rsaTEEKey(t testing.TB) (*rsa.PrivateKey, map[string]string) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k, map[string]string{"kty": "RSA", "alg": "RSA-OAEP-256", "n": b64.EncodeToString(k.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(k.E)).Bytes())}
}

// attestSample runs RCAR with the sample TEE and returns the token.
func attestSample(t testing.TB, h *harness, pub map[string]string) string {
	t.Helper()
	c := h.client()
	ch, _, err := c.Auth("sample", "")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Attest(sampleAttestation(t, ch, pub))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// call makes one request with an optional bearer token.
func call(t testing.TB, h *harness, method, path, tok string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.http.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := h.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func wantProblem(t testing.TB, resp *http.Response, body []byte, status int, typ, detail string) {
	t.Helper()
	var p struct {
		Type   string `json:"type"`
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("status %d, body %q: not problem JSON: %v", resp.StatusCode, body, err)
	}
	if resp.StatusCode != status || p.Status != status || resp.Header.Get("Content-Type") != "application/problem+json" ||
		!strings.HasSuffix(p.Type, "/"+typ) || !strings.Contains(p.Detail, detail) {
		t.Fatalf("got %d %s %+v; want %d %s containing %q", resp.StatusCode, resp.Header.Get("Content-Type"), p, status, typ, detail)
	}
}

func setPolicy(t testing.TB, h *harness, text string) (*http.Response, []byte) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"policy": b64.EncodeToString([]byte(text))})
	return call(t, h, "POST", "/kbs/v0/resource-policy", h.adminToken(t), body)
}

const allowEchoGet = `package policy

default allow := false

allow if {
	input.plugin == "echo"
	input.method == "GET"
}

allow if {
	input.plugin == "resource"
	input.method == "GET"
	input.claims.tee == "sample"
	input.claims["tcb-status"].svn == "1"
}

reason := sprintf("%s %s for %s", [input.method, input.plugin, input.claims.spiffe_id]) if allow
`

// flattenedJWE is RFC 7516's flattened JSON serialization.
type flattenedJWE struct {
	Protected    string `json:"protected"`
	EncryptedKey string `json:"encrypted_key"`
	IV           string `json:"iv"`
	Ciphertext   string `json:"ciphertext"`
	Tag          string `json:"tag"`
}
