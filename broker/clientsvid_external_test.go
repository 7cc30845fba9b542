package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
)

// x509SVIDPolicy lets the X.509-SVID caller spiffe://example.org/workload/a
// use the echo plugin and renew its SVID, and nobody else anything.
const x509SVIDPolicy = `package policy
allow if {
	input.credential == "x509-svid"
	input.claims.spiffe_id == "spiffe://example.org/workload/a"
	input.plugin in {"echo", "svid"}
}
`

// mtlsServer serves h's broker, with Options.ClientSVIDs set to the svid
// plugin, over TLS that requests but does not verify client certificates
// (the broker's own check is what is tested), and returns its URL.
func mtlsServer(t testing.TB, h *harness, ca *svid.Plugin) string {
	_, base := mtlsBroker(t, h, ca, nil)
	return base
}

// mtlsBroker is mtlsServer returning the broker too; configure, when set,
// adjusts the HTTP server before it starts.
func mtlsBroker(t testing.TB, h *harness, ca *svid.Plugin, configure func(*http.Server)) (*broker.Server, string) {
	t.Helper()
	opts := h.opts
	opts.Metrics = nil
	opts.ClientSVIDs = ca
	srv, err := broker.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv)
	hs.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	if configure != nil {
		configure(hs.Config)
	}
	hs.StartTLS()
	t.Cleanup(hs.Close)
	return srv, hs.URL
}

func svidClient(s *x509svid.SVID) *http.Client {
	c := &tls.Config{InsecureSkipVerify: true} // the test server's own certificate
	if s != nil {
		c.GetClientCertificate = tlsconfig.GetClientCertificate(s)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: c}, Timeout: 10 * time.Second}
}

func issueSVID(t *testing.T, ca *svid.Plugin, path string) *x509svid.SVID {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := spiffeid.RequireFromPath(td, path)
	chain, err := ca.IssueServing(context.Background(), svid.ServingRequest{Key: &key.PublicKey, ID: id, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

func mdo(t *testing.T, hc *http.Client, method, u string, body io.Reader) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, u, body)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestX509SVIDCaller(t *testing.T) {
	var ca *svid.Plugin
	h := newHarness(t, harnessOpts{policy: x509SVIDPolicy, plugins: func(st store.Store, sealer *seal.Sealer) []plugin.Plugin {
		p, err := svid.New(context.Background(), svid.DefaultConfig(), td, st, sealer, nil, h0now)
		if err != nil {
			t.Fatal(err)
		}
		ca = p
		return []plugin.Plugin{echoPlugin{}, p}
	}})
	base := mtlsServer(t, h, ca)
	a := issueSVID(t, ca, "/workload/a")

	// The SVID authenticates: the plugin sees its SPIFFE ID.
	status, body := mdo(t, svidClient(a), "GET", base+"/kbs/v0/echo/x", nil)
	var echoed struct {
		SPIFFEID string `json:"spiffe_id"`
	}
	_ = json.Unmarshal([]byte(body), &echoed)
	if status != 200 || echoed.SPIFFEID != a.ID.String() {
		t.Fatalf("SVID caller: %d %s", status, body)
	}

	// It renews its own SVID over the same mutually authenticated channel,
	// answered in the clear (no tee-pubkey to encrypt to).
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{a.ID.URL()}}, key)
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})
	status, body = mdo(t, svidClient(a), "POST", base+"/kbs/v0/svid/x509", strings.NewReader(string(csr)))
	var renewed svid.X509Response
	if status != 200 || json.Unmarshal([]byte(body), &renewed) != nil || renewed.SPIFFEID != a.ID.String() {
		t.Fatalf("renewal over mTLS: %d %s", status, body)
	}

	// Another SPIFFE ID of the trust domain is authenticated, then denied by the policy.
	b := issueSVID(t, ca, "/workload/b")
	if status, body := mdo(t, svidClient(b), "GET", base+"/kbs/v0/echo/x", nil); status != 403 || !strings.Contains(body, b.ID.String()) {
		t.Fatalf("other SVID: %d %s", status, body)
	}
	// No certificate, no caller.
	if status, body := mdo(t, svidClient(nil), "GET", base+"/kbs/v0/echo/x", nil); status != 401 {
		t.Fatalf("no certificate: %d %s", status, body)
	}
	// A chain from a CA outside the bundle, for the allowed ID, is refused.
	if status, body := mdo(t, svidClient(foreign(t, a.ID)), "GET", base+"/kbs/v0/echo/x", nil); status != 401 || !strings.Contains(body, "client certificate") {
		t.Fatalf("foreign chain: %d %s", status, body)
	}
	// Once expired, the (cached) SVID no longer authenticates.
	h.clock.Advance(2 * time.Hour)
	if status, body := mdo(t, svidClient(a), "GET", base+"/kbs/v0/echo/x", nil); status != 401 {
		t.Fatalf("expired SVID: %d %s", status, body)
	}
}

// h0now is the svid plugin's clock: real time, so that issued SVIDs are
// valid when the harness clock (which starts at real time) checks them.
var h0now = time.Now

func foreign(t *testing.T, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "foreign"}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{id.URL()}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	leaf, _ := x509.ParseCertificate(der)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf, caCert}, PrivateKey: key}
}
