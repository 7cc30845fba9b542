package k8spsat

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/trustgate/trustgate/attest"
)

const issuer = "https://kubernetes.default.svc.cluster.local"

// signingKey is an issuer key with its key ID.
type signingKey struct {
	kid string
	key *ecdsa.PrivateKey
}

func newSigningKey(t testing.TB, kid string) signingKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{kid: kid, key: k}
}

func jwks(t testing.TB, keys ...signingKey) []byte {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: &k.key.PublicKey, KeyID: k.kid, Algorithm: string(jose.ES256), Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// psatClaimsFor are the claims kube-apiserver puts in a projected token
// for the spire-agent pod, valid now.
func psatClaimsFor() map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": issuer,
		"aud": []string{"spire-server"},
		"sub": "system:serviceaccount:spire:spire-agent",
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      "spire",
			"pod":            map[string]any{"name": "spire-agent-x7k2p", "uid": "pod-uid-1"},
			"node":           map[string]any{"name": "node-a", "uid": "node-uid-a"},
			"serviceaccount": map[string]any{"name": "spire-agent", "uid": "sa-uid"},
		},
	}
}

func sign(t testing.TB, k signingKey, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if k.kid != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), k.kid)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k.key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func offlineCluster(t testing.TB, keys ...signingKey) ClusterConfig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeFile(t, path, jwks(t, keys...))
	return ClusterConfig{
		ServiceAccountAllowList: []string{"spire:spire-agent"},
		Offline:                 &OfflineConfig{Issuer: issuer, JWKSFile: path},
	}
}

func TestOfflineAttestation(t *testing.T) {
	k := newSigningKey(t, "k1")
	a := mustNew(t, Config{Clusters: map[string]ClusterConfig{"edge": offlineCluster(t, k)}})
	res, err := a.Attest(context.Background(), ch, evidence("edge", sign(t, k, psatClaimsFor())))
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://example.org/spire/agent/k8s_psat/edge/node-uid-a"; res.SPIFFEID != want {
		t.Errorf("SPIFFE ID %q, want %q", res.SPIFFEID, want)
	}
	want := []string{
		"k8s_psat:cluster:edge",
		"k8s_psat:agent_ns:spire",
		"k8s_psat:agent_sa:spire-agent",
		"k8s_psat:agent_pod_name:spire-agent-x7k2p",
		"k8s_psat:agent_pod_uid:pod-uid-1",
		"k8s_psat:agent_node_name:node-a",
		"k8s_psat:agent_node_uid:node-uid-a",
	}
	if got := selectorStrings(res.Selectors); !slices.Equal(got, want) {
		t.Errorf("selectors\n got %q\nwant %q", got, want)
	}
}

func TestOfflineRejections(t *testing.T) {
	k := newSigningKey(t, "k1")
	impostor := newSigningKey(t, "k1") // same key ID, different key
	with := func(edit func(map[string]any)) map[string]any {
		c := psatClaimsFor()
		edit(c)
		return c
	}
	k8s := func(c map[string]any) map[string]any { return c["kubernetes.io"].(map[string]any) }
	hs256, err := jwt.Signed(mustSigner(t, jose.SigningKey{Algorithm: jose.HS256, Key: []byte("0123456789abcdef0123456789abcdef")})).Claims(psatClaimsFor()).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		cfg   func(*ClusterConfig)
		token string
		want  string
	}{
		{"expired", nil, sign(t, k, with(func(c map[string]any) {
			c["exp"] = time.Now().Add(-time.Hour).Unix()
			c["nbf"] = time.Now().Add(-2 * time.Hour).Unix()
			c["iat"] = time.Now().Add(-2 * time.Hour).Unix()
		})), "expired"},
		{"not yet valid", nil, sign(t, k, with(func(c map[string]any) { c["nbf"] = time.Now().Add(time.Hour).Unix() })), "not valid yet"},
		{"no exp", nil, sign(t, k, with(func(c map[string]any) { delete(c, "exp") })), "no exp"},
		{"wrong issuer", nil, sign(t, k, with(func(c map[string]any) { c["iss"] = "https://evil.example" })), "issuer"},
		{"wrong key", nil, sign(t, impostor, psatClaimsFor()), "does not verify"},
		{"unknown key ID", nil, sign(t, newSigningKey(t, "k9"), psatClaimsFor()), `names key "k9"`},
		{"HMAC token", nil, hs256, "parse token"},
		{"wrong audience", func(c *ClusterConfig) { c.Audience = &[]string{"trustgate"} }, sign(t, k, psatClaimsFor()), "audience"},
		{"service account not allowed", func(c *ClusterConfig) { c.ServiceAccountAllowList = []string{"spire:other"} }, sign(t, k, psatClaimsFor()), "not in service_account_allow_list"},
		{"subject disagrees with claims", nil, sign(t, k, with(func(c map[string]any) { c["sub"] = "system:serviceaccount:spire:other" })), "disagrees"},
		{"no kubernetes.io claims", nil, sign(t, k, with(func(c map[string]any) { delete(c, "kubernetes.io") })), "disagrees"},
		{"not pod-bound", nil, sign(t, k, with(func(c map[string]any) { delete(k8s(c), "pod") })), "not bound to a pod"},
		{"no node claim", nil, sign(t, k, with(func(c map[string]any) { delete(k8s(c), "node") })), "node uid"},
		{"not a JWT", nil, "not-a-jwt", "parse token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cc := offlineCluster(t, k)
			if tc.cfg != nil {
				tc.cfg(&cc)
			}
			a := mustNew(t, Config{Clusters: map[string]ClusterConfig{"edge": cc}})
			_, err := a.Attest(context.Background(), ch, evidence("edge", tc.token))
			if !errors.Is(err, attest.ErrRejected) {
				t.Fatalf("error %v does not wrap ErrRejected", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}

	// Without the node claim, the pod-UID form of the ID still works.
	cc := offlineCluster(t, k)
	cc.UsePodUIDForAgentID = true
	a := mustNew(t, Config{Clusters: map[string]ClusterConfig{"edge": cc}})
	res, err := a.Attest(context.Background(), ch, evidence("edge", sign(t, k, with(func(c map[string]any) { delete(k8s(c), "node") }))))
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://example.org/spire/agent/k8s_psat/edge/pod/pod-uid-1"; res.SPIFFEID != want {
		t.Errorf("SPIFFE ID %q, want %q", res.SPIFFEID, want)
	}
}

func mustSigner(t testing.TB, k jose.SigningKey) jose.Signer {
	t.Helper()
	s, err := jose.NewSigner(k, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jwksServer serves a key set that the test may replace, over TLS.
type jwksServer struct {
	mu      sync.Mutex
	body    []byte
	fetches int
	down    bool
}

func (s *jwksServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fetches++
	if s.down {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	_, _ = w.Write(s.body)
}

func (s *jwksServer) set(body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body = body
}

func TestOfflineJWKSURLRotation(t *testing.T) {
	k1, k2 := newSigningKey(t, "k1"), newSigningKey(t, "k2")
	js := &jwksServer{body: jwks(t, k1)}
	srv := httptest.NewTLSServer(js)
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	writeFile(t, ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	cc := ClusterConfig{
		ServiceAccountAllowList: []string{"spire:spire-agent"},
		Offline:                 &OfflineConfig{Issuer: issuer, JWKSURL: srv.URL + "/openid/v1/jwks", JWKSCAFile: ca},
	}
	a := mustNew(t, Config{Clusters: map[string]ClusterConfig{"edge": cc}})
	if _, err := a.Attest(context.Background(), ch, evidence("edge", sign(t, k1, psatClaimsFor()))); err != nil {
		t.Fatal(err)
	}
	// The issuer rotates to k2. Within the re-fetch interval an unknown
	// key ID is not re-fetched...
	js.set(jwks(t, k1, k2))
	tok2 := sign(t, k2, psatClaimsFor())
	if _, err := a.Attest(context.Background(), ch, evidence("edge", tok2)); !errors.Is(err, attest.ErrRejected) {
		t.Fatalf("got %v, want a rejection before the re-fetch interval passed", err)
	}
	// ...after it, the unknown key ID triggers a re-fetch.
	a.clusters["edge"].offline.keys.minRefetch = 0
	if _, err := a.Attest(context.Background(), ch, evidence("edge", tok2)); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	js.mu.Lock()
	fetches := js.fetches
	js.mu.Unlock()
	if fetches != 2 {
		t.Errorf("%d fetches, want 2", fetches)
	}
	// An issuer that goes down keeps the keys already fetched working.
	js.mu.Lock()
	js.down = true
	js.mu.Unlock()
	if _, err := a.Attest(context.Background(), ch, evidence("edge", sign(t, newSigningKey(t, "k3"), psatClaimsFor()))); !errors.Is(err, attest.ErrRejected) {
		t.Fatalf("unknown key with issuer down: got %v, want a rejection", err)
	}
	if _, err := a.Attest(context.Background(), ch, evidence("edge", tok2)); err != nil {
		t.Fatalf("known key with issuer down: %v", err)
	}
}

func TestOfflineJWKSUnavailableIsServerError(t *testing.T) {
	js := &jwksServer{down: true}
	srv := httptest.NewTLSServer(js)
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	writeFile(t, ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	a := mustNew(t, Config{Clusters: map[string]ClusterConfig{"edge": {
		ServiceAccountAllowList: []string{"spire:spire-agent"},
		Offline:                 &OfflineConfig{Issuer: issuer, JWKSURL: srv.URL, JWKSCAFile: ca},
	}}})
	_, err := a.Attest(context.Background(), ch, evidence("edge", sign(t, newSigningKey(t, "k1"), psatClaimsFor())))
	if err == nil || errors.Is(err, attest.ErrRejected) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("got %v, want a server error naming the 503", err)
	}
}

func TestOfflineJWKSFileProblems(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.json")
	writeFile(t, empty, []byte(`{"keys":[]}`))
	bad := filepath.Join(dir, "bad.json")
	writeFile(t, bad, []byte(`{"keys":[{"kty":"EC"}]}`))
	for path, want := range map[string]string{empty: "no keys", bad: "decode JWKS", filepath.Join(dir, "missing"): "no such file"} {
		err := Config{Clusters: map[string]ClusterConfig{"edge": {
			ServiceAccountAllowList: []string{"spire:spire-agent"},
			Offline:                 &OfflineConfig{Issuer: issuer, JWKSFile: path},
		}}}.Validate()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want a problem mentioning %q", filepath.Base(path), err, want)
		}
	}
}
