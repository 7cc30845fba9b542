package k8spsat

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/store"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

const apiBearer = "broker-credential"

// fakeAPI is an API server answering TokenReview, Pod and Node requests
// with the real Kubernetes API types. Its TokenReview is audience-aware
// like kube-apiserver's: a token is authenticated only for a request whose
// audiences intersect the token's.
type fakeAPI struct {
	mu     sync.Mutex
	tokens map[string]fakeToken
	pods   map[string]*corev1.Pod
	nodes  map[string]*corev1.Node
	// ignoreAudiences makes TokenReview authenticate regardless of the
	// requested audiences, as an authenticator that is not audience-aware.
	ignoreAudiences bool
	hang            chan struct{} // when set, every request waits on it
	requests        []string
}

type fakeToken struct {
	user      authnv1.UserInfo
	audiences []string
}

func newFakeAPI() *fakeAPI {
	f := &fakeAPI{tokens: map[string]fakeToken{}, pods: map[string]*corev1.Pod{}, nodes: map[string]*corev1.Node{}}
	f.tokens["good"] = fakeToken{
		user: authnv1.UserInfo{
			Username: "system:serviceaccount:spire:spire-agent",
			UID:      "sa-uid",
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:spire", "system:authenticated"},
			Extra: map[string]authnv1.ExtraValue{
				extraPodName:                             {"spire-agent-x7k2p"},
				extraPodUID:                              {"pod-uid-1"},
				"authentication.kubernetes.io/node-name": {"node-a"},
			},
		},
		audiences: []string{"spire-server"},
	}
	f.pods["spire/spire-agent-x7k2p"] = &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "spire-agent-x7k2p", Namespace: "spire", UID: types.UID("pod-uid-1"), Labels: map[string]string{"app": "spire-agent", "secret": "no"}},
		Spec:       corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "spire-agent"},
		Status:     corev1.PodStatus{HostIP: "10.0.0.7", Phase: corev1.PodRunning},
	}
	f.nodes["node-a"] = &corev1.Node{
		TypeMeta:   metav1.TypeMeta{Kind: "Node", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", UID: types.UID("node-uid-a"), Labels: map[string]string{"topology.kubernetes.io/zone": "z1", "other": "x"}},
	}
	return f
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+apiBearer {
		writeStatus(w, http.StatusUnauthorized, metav1.StatusReasonUnauthorized, "Unauthorized")
		return
	}
	f.mu.Lock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	hang := f.hang
	f.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /apis/authentication.k8s.io/v1/tokenreviews", f.tokenReview)
	mux.HandleFunc("GET /api/v1/namespaces/{ns}/pods/{name}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		pod := f.pods[r.PathValue("ns")+"/"+r.PathValue("name")]
		f.mu.Unlock()
		if pod == nil {
			writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("pods %q not found", r.PathValue("name")))
			return
		}
		writeJSON(w, pod)
	})
	mux.HandleFunc("GET /api/v1/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		node := f.nodes[r.PathValue("name")]
		f.mu.Unlock()
		if node == nil {
			writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("nodes %q not found", r.PathValue("name")))
			return
		}
		writeJSON(w, node)
	})
	mux.ServeHTTP(w, r)
}

func (f *fakeAPI) tokenReview(w http.ResponseWriter, r *http.Request) {
	// Decode with the Kubernetes API machinery, as the API server would.
	var tr authnv1.TokenReview
	body, err := io.ReadAll(r.Body)
	if err == nil {
		_, _, err = scheme.Codecs.UniversalDeserializer().Decode(body, nil, &tr)
	}
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	f.mu.Lock()
	tok, ok := f.tokens[tr.Spec.Token]
	f.mu.Unlock()
	tr.TypeMeta = metav1.TypeMeta{Kind: "TokenReview", APIVersion: "authentication.k8s.io/v1"}
	switch {
	case !ok:
		tr.Status = authnv1.TokenReviewStatus{Error: "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}
	case f.ignoreAudiences:
		tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: tok.user, Audiences: tok.audiences}
	default:
		want := tr.Spec.Audiences
		if len(want) == 0 {
			want = []string{"https://kubernetes.default.svc"}
		}
		var both []string
		for _, a := range want {
			if slices.Contains(tok.audiences, a) {
				both = append(both, a)
			}
		}
		if len(both) == 0 {
			tr.Status = authnv1.TokenReviewStatus{Error: "[invalid bearer token, token audiences " + fmt.Sprint(tok.audiences) + " is invalid for the target audiences " + fmt.Sprint(want) + "]"}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: tok.user, Audiences: both}
		}
	}
	writeJSONCode(w, http.StatusCreated, &tr)
}

func writeJSON(w http.ResponseWriter, v any) { writeJSONCode(w, http.StatusOK, v) }

func writeJSONCode(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(&metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Message: msg, Reason: reason, Code: int32(code),
	})
}

// startAPI serves f over TLS and returns a cluster config pointing at it.
func startAPI(t *testing.T, f *fakeAPI) ClusterConfig {
	t.Helper()
	srv := httptest.NewTLSServer(f)
	t.Cleanup(func() {
		f.mu.Lock()
		if f.hang != nil {
			close(f.hang)
			f.hang = nil
		}
		f.mu.Unlock()
		srv.Close()
	})
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	writeFile(t, ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	tok := filepath.Join(dir, "token")
	writeFile(t, tok, []byte(apiBearer))
	return ClusterConfig{
		ServiceAccountAllowList: []string{"spire:spire-agent"},
		APIServerURL:            srv.URL,
		APIServerCAFile:         ca,
		BearerTokenFile:         tok,
		AllowedNodeLabelKeys:    []string{"topology.kubernetes.io/zone"},
		AllowedPodLabelKeys:     []string{"app"},
	}
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func evidence(cluster, token string) json.RawMessage {
	b, _ := json.Marshal(Evidence{Cluster: cluster, Token: token})
	return b
}

func mustNew(t testing.TB, cfg Config) *Attestor {
	t.Helper()
	a, err := New(cfg, td, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func selectorStrings(sel []store.Selector) []string {
	var out []string
	for _, s := range sel {
		out = append(out, s.Type+":"+s.Value)
	}
	return out
}

var ch = attest.Challenge{Nonce: "bm9uY2U=", ReportData: []byte{1}, Peer: "127.0.0.1:9"}

func TestTokenReviewAttestation(t *testing.T) {
	f := newFakeAPI()
	cc := startAPI(t, f)
	a := mustNew(t, Config{Clusters: map[string]ClusterConfig{"prod": cc}})
	res, err := a.Attest(context.Background(), ch, evidence("prod", "good"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://example.org/spire/agent/k8s_psat/prod/node-uid-a"; res.SPIFFEID != want {
		t.Errorf("SPIFFE ID %q, want %q", res.SPIFFEID, want)
	}
	want := []string{
		"k8s_psat:cluster:prod",
		"k8s_psat:agent_ns:spire",
		"k8s_psat:agent_sa:spire-agent",
		"k8s_psat:agent_pod_name:spire-agent-x7k2p",
		"k8s_psat:agent_pod_uid:pod-uid-1",
		"k8s_psat:agent_node_ip:10.0.0.7",
		"k8s_psat:agent_node_name:node-a",
		"k8s_psat:agent_node_uid:node-uid-a",
		"k8s_psat:agent_node_label:topology.kubernetes.io/zone:z1",
		"k8s_psat:agent_pod_label:app:spire-agent",
	}
	if got := selectorStrings(res.Selectors); !slices.Equal(got, want) {
		t.Errorf("selectors\n got %q\nwant %q", got, want)
	}
	wantReq := []string{
		"POST /apis/authentication.k8s.io/v1/tokenreviews",
		"GET /api/v1/namespaces/spire/pods/spire-agent-x7k2p",
		"GET /api/v1/nodes/node-a",
	}
	if !slices.Equal(f.requests, wantReq) {
		t.Errorf("requests %q, want %q", f.requests, wantReq)
	}

	// The pod-UID form of the ID.
	cc.UsePodUIDForAgentID = true
	a = mustNew(t, Config{Clusters: map[string]ClusterConfig{"prod": cc}})
	res, err = a.Attest(context.Background(), ch, evidence("prod", "good"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://example.org/spire/agent/k8s_psat/prod/pod/pod-uid-1"; res.SPIFFEID != want {
		t.Errorf("SPIFFE ID %q, want %q", res.SPIFFEID, want)
	}
}

func TestKubeConfigFile(t *testing.T) {
	f := newFakeAPI()
	cc := startAPI(t, f)
	caPEM, err := os.ReadFile(cc.APIServerCAFile)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: u
  user:
    token: %s
contexts:
- name: ctx
  context: {cluster: c, user: u}
current-context: ctx
`, cc.APIServerURL, base64.StdEncoding.EncodeToString(caPEM), apiBearer)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	writeFile(t, path, []byte(kubeconfig))
	a := mustNew(t, Config{Clusters: map[string]ClusterConfig{"prod": {
		ServiceAccountAllowList: []string{"spire:spire-agent"},
		KubeConfigFile:          path,
	}}})
	res, err := a.Attest(context.Background(), ch, evidence("prod", "good"))
	if err != nil {
		t.Fatal(err)
	}
	if res.SPIFFEID != "spiffe://example.org/spire/agent/k8s_psat/prod/node-uid-a" {
		t.Errorf("SPIFFE ID %q", res.SPIFFEID)
	}
}

func TestTokenReviewRejections(t *testing.T) {
	cases := []struct {
		name     string
		edit     func(*fakeAPI, *ClusterConfig)
		evidence json.RawMessage
		want     string
	}{
		{"unauthenticated token", nil, evidence("prod", "forged"), "not authenticated: [invalid bearer token"},
		{"wrong audience", func(_ *fakeAPI, c *ClusterConfig) { c.Audience = &[]string{"someone-else"} }, evidence("prod", "good"), "invalid for the target audiences"},
		{"authenticator ignores audience", func(f *fakeAPI, c *ClusterConfig) {
			f.ignoreAudiences = true
			c.Audience = &[]string{"someone-else"}
		}, evidence("prod", "good"), "do not include any of"},
		{"service account not allowed", func(_ *fakeAPI, c *ClusterConfig) { c.ServiceAccountAllowList = []string{"spire:other"} }, evidence("prod", "good"), "not in service_account_allow_list"},
		{"not a service account", func(f *fakeAPI, _ *ClusterConfig) {
			tok := f.tokens["good"]
			tok.user.Username = "system:node:node-a"
			f.tokens["good"] = tok
		}, evidence("prod", "good"), "not a service account"},
		{"malformed service account", func(f *fakeAPI, _ *ClusterConfig) {
			tok := f.tokens["good"]
			tok.user.Username = "system:serviceaccount:spire:a:b"
			f.tokens["good"] = tok
		}, evidence("prod", "good"), "is not system:serviceaccount:"},
		{"token not pod-bound", func(f *fakeAPI, _ *ClusterConfig) {
			tok := f.tokens["good"]
			tok.user.Extra = nil
			f.tokens["good"] = tok
		}, evidence("prod", "good"), "pod-name"},
		{"two pod UIDs", func(f *fakeAPI, _ *ClusterConfig) {
			tok := f.tokens["good"]
			tok.user.Extra = map[string]authnv1.ExtraValue{extraPodName: {"spire-agent-x7k2p"}, extraPodUID: {"a", "b"}}
			f.tokens["good"] = tok
		}, evidence("prod", "good"), "2 values for authentication.kubernetes.io/pod-uid"},
		{"pod UID mismatch", func(f *fakeAPI, _ *ClusterConfig) {
			f.pods["spire/spire-agent-x7k2p"].UID = "a-newer-pod"
		}, evidence("prod", "good"), "bound to pod UID"},
		{"pod missing", func(f *fakeAPI, _ *ClusterConfig) { delete(f.pods, "spire/spire-agent-x7k2p") }, evidence("prod", "good"), "pod spire/spire-agent-x7k2p not found"},
		{"pod unscheduled", func(f *fakeAPI, _ *ClusterConfig) { f.pods["spire/spire-agent-x7k2p"].Spec.NodeName = "" }, evidence("prod", "good"), "not scheduled"},
		{"node missing", func(f *fakeAPI, _ *ClusterConfig) { delete(f.nodes, "node-a") }, evidence("prod", "good"), "node node-a not found"},
		{"unknown cluster", nil, evidence("staging", "good"), "cluster \"staging\" is not configured"},
		{"missing cluster", nil, json.RawMessage(`{"token":"good"}`), "no cluster"},
		{"missing token", nil, json.RawMessage(`{"cluster":"prod"}`), "no token"},
		{"null", nil, json.RawMessage(`null`), "no cluster"},
		{"empty", nil, nil, "empty"},
		{"unknown field", nil, json.RawMessage(`{"cluster":"prod","token":"good","x":1}`), "unknown field"},
		{"trailing", nil, json.RawMessage(`{"cluster":"prod","token":"good"} 1`), "after the JSON"},
		{"wrong types", nil, json.RawMessage(`{"cluster":1,"token":["a"]}`), "decode"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI()
			cc := startAPI(t, f)
			if tc.edit != nil {
				tc.edit(f, &cc)
			}
			a := mustNew(t, Config{Clusters: map[string]ClusterConfig{"prod": cc}})
			_, err := a.Attest(context.Background(), ch, tc.evidence)
			if !errors.Is(err, attest.ErrRejected) {
				t.Fatalf("error %v does not wrap ErrRejected", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestServerErrorsAreNotRejections(t *testing.T) {
	t.Run("node without UID", func(t *testing.T) {
		f := newFakeAPI()
		f.nodes["node-a"].UID = ""
		a := mustNew(t, Config{Clusters: map[string]ClusterConfig{"prod": startAPI(t, f)}})
		_, err := a.Attest(context.Background(), ch, evidence("prod", "good"))
		if err == nil || errors.Is(err, attest.ErrRejected) || !strings.Contains(err.Error(), "no UID") {
			t.Fatalf("got %v, want a server error about the node UID", err)
		}
	})
	t.Run("broker credential refused", func(t *testing.T) {
		f := newFakeAPI()
		cc := startAPI(t, f)
		writeFile(t, cc.BearerTokenFile, []byte("wrong"))
		a := mustNew(t, Config{Clusters: map[string]ClusterConfig{"prod": cc}})
		_, err := a.Attest(context.Background(), ch, evidence("prod", "good"))
		if err == nil || errors.Is(err, attest.ErrRejected) {
			t.Fatalf("got %v, want a server error", err)
		}
	})
}

func TestHangingAPIServerTimesOut(t *testing.T) {
	f := newFakeAPI()
	f.hang = make(chan struct{})
	cc := startAPI(t, f)
	cc.APITimeout = "300ms"
	a := mustNew(t, Config{Clusters: map[string]ClusterConfig{"prod": cc}})
	done := make(chan error, 1)
	go func() {
		// The caller's context has no deadline: the attestor's must apply.
		_, err := a.Attest(context.Background(), ch, evidence("prod", "good"))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, attest.ErrRejected) {
			t.Fatalf("got %v, want a server error", err)
		}
		if !strings.Contains(err.Error(), "TokenReview") {
			t.Errorf("error %q does not say which call timed out", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Attest did not give up on a hanging API server")
	}
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Clusters: map[string]ClusterConfig{
		"bad name/x": {ServiceAccountAllowList: []string{"spire:agent"}, KubeConfigFile: filepath.Join(dir, "nope")},
		"a": {
			ServiceAccountAllowList: []string{"no-colon", "ns:"},
			APIServerURL:            "http://insecure",
			APITimeout:              "soon",
		},
		"b": {ServiceAccountAllowList: []string{"spire:agent"}},
		"c": {
			ServiceAccountAllowList: []string{"spire:agent"},
			Audience:                &[]string{},
			AllowedPodLabelKeys:     []string{"app"},
			Offline:                 &OfflineConfig{JWKSURL: "http://x"},
		},
	}}
	err := cfg.Validate()
	var p config.Problems
	if !errors.As(err, &p) {
		t.Fatalf("got %v, want config.Problems", err)
	}
	for _, want := range []string{
		`clusters.bad name/x: the cluster name`, "kube_config_file",
		`entry "no-colon"`, `entry "ns:"`, "api_timeout", "api_server_url",
		"clusters.b: set kube_config_file",
		"label selectors need the API server", "explicit audience", "issuer is empty", `jwks_url = "http://x"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("problems do not mention %q:\n%v", want, err)
		}
	}
	if err := (Config{}).Validate(); err == nil || !strings.Contains(err.Error(), "no clusters") {
		t.Errorf("empty config: %v", err)
	}
	if _, err := New(cfg, td, nil); err == nil {
		t.Error("New accepted an invalid config")
	}
}

func TestConfigDecodesFromTOML(t *testing.T) {
	var cfg Config
	err := config.Decode([]byte(`
[clusters.prod]
service_account_allow_list = ["spire:spire-agent"]
kube_config_file = "/etc/kube.conf"
allowed_node_label_keys = ["zone"]
api_timeout = "5s"

[clusters.edge]
service_account_allow_list = ["spire:spire-agent"]
audience = ["trustgate"]
use_pod_uid_for_agent_id = true

[clusters.edge.offline]
issuer = "https://kubernetes.default.svc"
jwks_file = "/etc/jwks.json"

[clusters.any]
service_account_allow_list = ["spire:spire-agent"]
audience = []
api_server_url = "https://k"
`), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	prod, edge, anyAud := cfg.Clusters["prod"], cfg.Clusters["edge"], cfg.Clusters["any"]
	if prod.KubeConfigFile != "/etc/kube.conf" || prod.APITimeout != "5s" || prod.Audience != nil || prod.Offline != nil {
		t.Errorf("prod decoded as %+v", prod)
	}
	if edge.Offline == nil || edge.Offline.JWKSFile != "/etc/jwks.json" || !edge.UsePodUIDForAgentID || edge.Audience == nil || (*edge.Audience)[0] != "trustgate" {
		t.Errorf("edge decoded as %+v", edge)
	}
	if anyAud.Audience == nil || len(*anyAud.Audience) != 0 {
		t.Errorf("audience = [] decoded as %v, want a set, empty list", anyAud.Audience)
	}
}
