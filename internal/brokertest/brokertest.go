// Package brokertest starts a real trustgate broker in process, built from
// its configuration as `trustgate server` builds it, with every attestor
// and plugin a client exercises: sample, join_token, x509pop (a generated
// CA), k8s_psat (offline, a generated issuer key), resource, nebula-ca and
// svid. It is for tests of broker clients.
package brokertest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/trustgate/trustgate/attest/k8spsat"
	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store/sqlite"
)

// TrustDomain is the broker's trust domain.
const TrustDomain = "example.org"

// PSATCluster and PSATIssuer name the offline k8s_psat cluster.
const (
	PSATCluster = "edge"
	PSATIssuer  = "https://kubernetes.default.svc.cluster.local"
)

// NebulaNetwork is the nebula CA's overlay network.
const NebulaNetwork = "10.42.0.0/16"

// Broker is a running broker.
type Broker struct {
	// URL is the broker's base URL.
	URL string
	// HTTP is a client that trusts the broker (its TLS certificate, when
	// served over TLS).
	HTTP *http.Client
	// CAFile is the PEM file of the broker's TLS certificate, when TLS.
	CAFile string
	// Dir is a private temporary directory.
	Dir string

	adminKey  *ecdsa.PrivateKey
	popCA     *x509.Certificate
	popCAKey  *ecdsa.PrivateKey
	psatKey   *ecdsa.PrivateKey
	admClient *broker.AdminClient
}

// Options shape the broker.
type Options struct {
	// TLS serves HTTPS with an httptest certificate.
	TLS bool
	// RequireClientCert (with TLS) requires a client certificate that
	// chains to the x509pop CA, such as an X509PopLeaf.
	RequireClientCert bool
}

// Start starts a broker that lives until the test ends. Its policy allows
// every attested caller.
func Start(t testing.TB, o Options) *Broker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir := t.TempDir()
	b := &Broker{Dir: dir}
	cfg := broker.DefaultConfig()
	cfg.TrustDomain = TrustDomain
	cfg.Store.Path = filepath.Join(dir, "trustgate.db")
	cfg.Keys.SealKeyFile = filepath.Join(dir, "seal.key")
	if err := seal.GenerateKeyFile(cfg.Keys.SealKeyFile); err != nil {
		t.Fatal(err)
	}
	b.adminKey = mustKey(t)
	cfg.Admin = broker.AdminConfig{PublicKeyFile: filepath.Join(dir, "admin.pub")}
	der, _ := x509.MarshalPKIXPublicKey(&b.adminKey.PublicKey)
	writeFile(t, cfg.Admin.PublicKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	cfg.RateLimit.PerSecond, cfg.RateLimit.GlobalPerSecond = 0, 0

	cfg.Attestors.Sample.Enabled = true
	cfg.Attestors.JoinToken.Enabled = true

	// x509pop: a CA whose leaves attest.
	b.popCAKey = mustKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x509pop test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &b.popCAKey.PublicKey, b.popCAKey)
	if err != nil {
		t.Fatal(err)
	}
	b.popCA, _ = x509.ParseCertificate(caDER)
	caPath := filepath.Join(dir, "x509pop-ca.pem")
	writeFile(t, caPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	cfg.Attestors.X509Pop.Enabled = true
	cfg.Attestors.X509Pop.CABundlePaths = []string{caPath}

	// k8s_psat, offline: a service-account issuer key.
	b.psatKey = mustKey(t)
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &b.psatKey.PublicKey, KeyID: "sa-1", Algorithm: string(jose.ES256), Use: "sig"}}}
	jwks, _ := json.Marshal(set)
	jwksPath := filepath.Join(dir, "jwks.json")
	writeFile(t, jwksPath, jwks)
	cfg.Attestors.K8sPSAT.Enabled = true
	cfg.Attestors.K8sPSAT.Clusters = map[string]k8spsat.ClusterConfig{PSATCluster: {
		ServiceAccountAllowList: []string{"spire:spire-agent"},
		Offline:                 &k8spsat.OfflineConfig{Issuer: PSATIssuer, JWKSFile: jwksPath},
	}}

	cfg.Plugins.NebulaCA.Enabled = true
	cfg.Plugins.NebulaCA.CANetworks = []string{NebulaNetwork}
	cfg.Plugins.SVID.Enabled = true
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(ctx, cfg.Store.Path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv, err := broker.FromConfig(ctx, cfg, st, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Run(ctx)
	var hs *httptest.Server
	if o.TLS {
		hs = httptest.NewUnstartedServer(srv)
		if o.RequireClientCert {
			pool := x509.NewCertPool()
			pool.AddCert(b.popCA)
			hs.TLS = &tls.Config{ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
		}
		hs.Config.ErrorLog = log.New(io.Discard, "", 0)
		hs.StartTLS()
		b.CAFile = filepath.Join(dir, "broker-ca.pem")
		writeFile(t, b.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: hs.Certificate().Raw}))
	} else {
		hs = httptest.NewServer(srv)
	}
	t.Cleanup(hs.Close)
	b.URL, b.HTTP = hs.URL, hs.Client()
	if o.RequireClientCert {
		certFile, keyFile, _ := b.X509PopLeaf(t, "test-admin-client")
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		tr := hs.Client().Transport.(*http.Transport).Clone()
		tr.TLSClientConfig.Certificates = []tls.Certificate{pair}
		b.HTTP = &http.Client{Transport: tr}
	}
	b.admClient = &broker.AdminClient{Server: hs.URL, Token: b.AdminToken(t), HTTP: hs.Client()}
	b.SetPolicy(t, "package policy\ndefault allow := true\n")
	return b
}

// AdminToken is a fresh admin token.
func (b *Broker) AdminToken(t testing.TB) string {
	t.Helper()
	tok, err := broker.SignAdminToken(b.adminKey, "test-admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// SetPolicy replaces the resource policy with rego.
func (b *Broker) SetPolicy(t testing.TB, rego string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"policy": base64.RawURLEncoding.EncodeToString([]byte(rego))})
	b.admin(t, http.MethodPost, "/kbs/v0/resource-policy", body)
}

// PutResource stores value at resource/<path> ("repo/type/tag").
func (b *Broker) PutResource(t testing.TB, path string, value []byte) {
	t.Helper()
	b.admin(t, http.MethodPost, "/kbs/v0/resource/"+path, value)
}

func (b *Broker) admin(t testing.TB, method, path string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(method, b.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+b.AdminToken(t))
	resp, err := b.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, out)
	}
}

// JoinToken creates a join token valid for a minute.
func (b *Broker) JoinToken(t testing.TB) string {
	t.Helper()
	jt, err := b.admClient.CreateJoinToken(context.Background(), broker.JoinTokenRequest{TTL: 60})
	if err != nil {
		t.Fatal(err)
	}
	return jt.Token
}

// CreateEntry registers spiffeID under parentID with selectors.
func (b *Broker) CreateEntry(t testing.TB, spiffeID, parentID string, selectors ...broker.Selector) {
	t.Helper()
	if _, err := b.admClient.CreateEntry(context.Background(), broker.Entry{SPIFFEID: spiffeID, ParentID: parentID, Selectors: selectors}); err != nil {
		t.Fatal(err)
	}
}

// X509PopLeaf issues a leaf certificate with common name cn under the
// x509pop CA and writes it and its key (PKCS#8) to PEM files in Dir.
func (b *Broker) X509PopLeaf(t testing.TB, cn string) (certFile, keyFile string, leaf *x509.Certificate) {
	t.Helper()
	k := mustKey(t)
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, b.popCA, &k.PublicKey, b.popCAKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ = x509.ParseCertificate(der)
	kder, _ := x509.MarshalPKCS8PrivateKey(k)
	certFile, keyFile = filepath.Join(b.Dir, cn+".crt"), filepath.Join(b.Dir, cn+".key")
	writeFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	return certFile, keyFile, leaf
}

// PSATTokenFile writes a projected service-account token for the
// spire:spire-agent service account on node nodeUID, as kube-apiserver
// signs it, and returns the file.
func (b *Broker) PSATTokenFile(t testing.TB, nodeUID string) string {
	t.Helper()
	now := time.Now()
	claims := map[string]any{
		"iss": PSATIssuer, "aud": []string{"spire-server"}, "sub": "system:serviceaccount:spire:spire-agent",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      "spire",
			"pod":            map[string]any{"name": "spire-agent-x7k2p", "uid": "pod-uid-1"},
			"node":           map[string]any{"name": "node-a", "uid": nodeUID},
			"serviceaccount": map[string]any{"name": "spire-agent", "uid": "sa-uid"},
		},
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: b.psatKey}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "sa-1"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(b.Dir, "psat-"+nodeUID+".jwt")
	writeFile(t, path, []byte(tok))
	return path
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
