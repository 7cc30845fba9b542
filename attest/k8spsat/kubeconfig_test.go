package k8spsat

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// certAuthAPI serves f to callers presenting a certificate from ca with
// the common name "broker", as kube-apiserver's x509 authenticator does,
// and to bearer-token callers as before.
func certAuthAPI(t *testing.T, f *fakeAPI, ca *x509.Certificate) *httptest.Server {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && r.TLS.PeerCertificates[0].Subject.CommonName == "broker" {
			r.Header.Set("Authorization", "Bearer "+apiBearer)
		}
		f.ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// clientCert returns a CA and a PEM client certificate and key it signed
// for "broker".
func clientCert(t *testing.T) (*x509.Certificate, []byte, []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kube-ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "broker"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

func serverCAPEM(srv *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

// kubeconfigCluster attests with a kubeconfig file holding text, written
// with the named files beside it.
func kubeconfigCluster(t *testing.T, text string, files map[string][]byte) (*Attestor, error) {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		writeFile(t, filepath.Join(dir, name), data)
	}
	path := filepath.Join(dir, "kubeconfig")
	writeFile(t, path, []byte(text))
	return New(Config{Clusters: map[string]ClusterConfig{"prod": {
		ServiceAccountAllowList: []string{"spire:spire-agent"},
		KubeConfigFile:          path,
	}}}, td, nil)
}

func TestKubeConfigClientCertificateAndRelativeFiles(t *testing.T) {
	ca, certPEM, keyPEM := clientCert(t)
	srv := certAuthAPI(t, newFakeAPI(), ca)
	// Relative file names are relative to the kubeconfig file, as in
	// kubectl; the credential is the client certificate alone.
	a, err := kubeconfigCluster(t, fmt.Sprintf(`apiVersion: v1
kind: Config
preferences: {}
clusters:
- name: c
  cluster: {server: %q, certificate-authority: ca.pem}
users:
- name: u
  user: {client-certificate: broker.pem, client-key: broker.key}
contexts:
- name: other
  context: {cluster: missing, user: missing}
- name: ctx
  context: {cluster: c, user: u}
current-context: ctx
`, srv.URL), map[string][]byte{"ca.pem": serverCAPEM(srv), "broker.pem": certPEM, "broker.key": keyPEM})
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Attest(context.Background(), ch, evidence("prod", "good"))
	if err != nil {
		t.Fatal(err)
	}
	if res.SPIFFEID != "spiffe://example.org/spire/agent/k8s_psat/prod/node-uid-a" {
		t.Errorf("SPIFFE ID %q", res.SPIFFEID)
	}

	// Control: without the client certificate the API server refuses the
	// broker, and that is the broker's problem, not the caller's.
	a, err = kubeconfigCluster(t, fmt.Sprintf(`clusters: [{name: c, cluster: {server: %q, certificate-authority: ca.pem}}]
users: [{name: u, user: {token: wrong}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}]
current-context: ctx
`, srv.URL), map[string][]byte{"ca.pem": serverCAPEM(srv)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Attest(context.Background(), ch, evidence("prod", "good")); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("got %v, want the API server's 401", err)
	}
}

func TestKubeConfigTokenFileIsReadPerRequest(t *testing.T) {
	srv := httptest.NewTLSServer(newFakeAPI())
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	writeFile(t, tok, []byte("expired\n"))
	a, err := kubeconfigCluster(t, fmt.Sprintf(`clusters: [{name: c, cluster: {server: %q, certificate-authority: ca.pem}}]
users: [{name: u, user: {tokenFile: %q}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}]
current-context: ctx
`, srv.URL, tok), map[string][]byte{"ca.pem": serverCAPEM(srv)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Attest(context.Background(), ch, evidence("prod", "good")); err == nil {
		t.Fatal("attested with a refused broker credential")
	}
	writeFile(t, tok, []byte(apiBearer+"\n")) // rotated
	if _, err := a.Attest(context.Background(), ch, evidence("prod", "good")); err != nil {
		t.Fatalf("after rotating the token file: %v", err)
	}
}

func TestKubeConfigRefusals(t *testing.T) {
	const head = "clusters: [{name: c, cluster: {server: \"https://k\"}}]\ncontexts: [{name: ctx, context: {cluster: c, user: u}}]\ncurrent-context: ctx\n"
	for name, tc := range map[string]struct{ text, want string }{
		"exec interactive":   {head + "users: [{name: u, user: {exec: {command: sh, apiVersion: client.authentication.k8s.io/v1, interactiveMode: Always}}}]", "needs interactiveMode Always, but the broker runs without a terminal"},
		"exec no mode":       {head + "users: [{name: u, user: {exec: {command: sh, apiVersion: client.authentication.k8s.io/v1}}}]", "interactiveMode must be set"},
		"exec bad mode":      {head + "users: [{name: u, user: {exec: {command: sh, apiVersion: client.authentication.k8s.io/v1, interactiveMode: Sometimes}}}]", "invalid interactiveMode"},
		"exec v1alpha1":      {head + "users: [{name: u, user: {exec: {command: sh, apiVersion: client.authentication.k8s.io/v1alpha1}}}]", `apiVersion "client.authentication.k8s.io/v1alpha1"`},
		"exec no command":    {head + "users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1beta1}}}]", "command is empty"},
		"exec bad env":       {head + "users: [{name: u, user: {exec: {command: sh, apiVersion: client.authentication.k8s.io/v1beta1, env: [{value: x}]}}}]", "invalid env name"},
		"exec not found":     {head + "users: [{name: u, user: {exec: {command: trustgate-no-such-plugin, apiVersion: client.authentication.k8s.io/v1beta1, installHint: \"install it with: apt install x\"}}}]", "trustgate-no-such-plugin\": executable file not found in $PATH: install it with: apt install x"},
		"exec and token":     {head + "users: [{name: u, user: {token: t, exec: {command: sh, apiVersion: client.authentication.k8s.io/v1beta1}}}]", "keep one"},
		"auth provider":      {head + "users: [{name: u, user: {auth-provider: {name: oidc}}}]", "auth-provider credential plugin, which client-go removed"},
		"basic auth":         {head + "users: [{name: u, user: {username: a, password: b}}]", "basic authentication"},
		"impersonation":      {head + "users: [{name: u, user: {token: t, as: admin}}]", "impersonation"},
		"no credentials":     {head + "users: [{name: u, user: {}}]", "has no credentials"},
		"key without cert":   {head + "users: [{name: u, user: {client-key-data: YQ==}}]", "both a client certificate and its key"},
		"both file and data": {head + "users: [{name: u, user: {token: t, client-certificate: a, client-certificate-data: YQ==, client-key-data: YQ==}}]", "both client-certificate and client-certificate-data"},
		"undefined user":     {head + "users: [{name: v, user: {token: t}}]", `names user "u"`},
		"no current context": {"clusters: [{name: c, cluster: {server: \"https://k\"}}]\nusers: [{name: u, user: {token: t}}]\n", "no current-context"},
		"unknown context":    {"current-context: nope\n", `current-context "nope" is not among`},
		"undefined cluster":  {"contexts: [{name: ctx, context: {cluster: c}}]\ncurrent-context: ctx\n", `names cluster "c"`},
		"insecure": {"clusters: [{name: c, cluster: {server: \"https://k\", insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: t}}]\n" +
			"contexts: [{name: ctx, context: {cluster: c, user: u}}]\ncurrent-context: ctx\n", "insecure-skip-tls-verify"},
		"plain http": {"clusters: [{name: c, cluster: {server: \"http://k\"}}]\nusers: [{name: u, user: {token: t}}]\n" +
			"contexts: [{name: ctx, context: {cluster: c, user: u}}]\ncurrent-context: ctx\n", "want an https URL"},
		"bad CA data": {"clusters: [{name: c, cluster: {server: \"https://k\", certificate-authority-data: \"!!\"}}]\nusers: [{name: u, user: {token: t}}]\n" +
			"contexts: [{name: ctx, context: {cluster: c, user: u}}]\ncurrent-context: ctx\n", "certificate-authority-data"},
		"not yaml": {"clusters: [", "parse"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := kubeconfigCluster(t, tc.text, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "kube_config_file") {
				t.Errorf("error %q does not name the setting", err)
			}
		})
	}
	// Controls: the same head with a token, or with a plugin that needs no
	// terminal, is accepted.
	for _, user := range []string{"{token: t}", "{exec: {command: sh, apiVersion: client.authentication.k8s.io/v1, interactiveMode: IfAvailable}}"} {
		if _, err := kubeconfigCluster(t, head+"users: [{name: u, user: "+user+"}]", nil); err != nil {
			t.Fatalf("a valid kubeconfig was refused: %v", err)
		}
	}
}

func TestAPIPathSegmentsAreNames(t *testing.T) {
	c, err := newAPIClient("https://k", &tls.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", ".", "..", "a/b"} {
		if _, err := c.getNode(context.Background(), name); err == nil || !strings.Contains(err.Error(), "invalid name") {
			t.Errorf("getNode(%q): %v, want an invalid name", name, err)
		}
	}
}
