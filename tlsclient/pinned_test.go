package tlsclient_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/tlsclient"
)

// testCA is a root that issues serving certificates with a SPIFFE ID.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestCA(t *testing.T) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return testCA{cert, key}
}

// serve starts an HTTPS server whose certificate carries id, issued by ca.
func (ca testCA) serve(t *testing.T, id string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{u}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestPinnedAfterInsecureBootstrap: with insecure_bootstrap, the first
// contact is not verified; once the bundle from it is pinned, only a broker
// whose certificate chains to it with the server's SPIFFE ID is accepted,
// so an impersonator after the bootstrap is refused.
func TestPinnedAfterInsecureBootstrap(t *testing.T) {
	serverID := spiffeid.RequireFromString("spiffe://example.org/spire/server")
	broker, other := newTestCA(t), newTestCA(t)
	real := broker.serve(t, serverID.String())
	impostor := other.serve(t, serverID.String())
	workload := broker.serve(t, "spiffe://example.org/workload")

	var pinned atomic.Pointer[[]*x509.Certificate]
	roots := func() []*x509.Certificate {
		if p := pinned.Load(); p != nil {
			return *p
		}
		return nil
	}
	hc, err := tlsclient.HTTPClient(tlsclient.Options{InsecureBootstrap: true, ServerID: serverID, Pinned: roots})
	if err != nil {
		t.Fatal(err)
	}
	get := func(u string) error {
		hc.CloseIdleConnections() // a handshake per call
		resp, err := hc.Get(u)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	// The first contact: nothing pinned, nothing verified.
	for _, u := range []string{real, impostor} {
		if err := get(u); err != nil {
			t.Fatalf("bootstrap contact with %s: %v", u, err)
		}
	}
	pinned.Store(&[]*x509.Certificate{broker.cert})
	if err := get(real); err != nil {
		t.Fatalf("the broker, after pinning: %v", err)
	}
	if err := get(impostor); err == nil || !strings.Contains(err.Error(), "pinned at bootstrap") {
		t.Fatalf("an impostor after pinning: %v", err)
	}
	if err := get(workload); err == nil {
		t.Fatal("a certificate of the pinned CA with another SPIFFE ID passed as the broker")
	}
	for _, o := range []tlsclient.Options{
		{Pinned: roots, ServerID: serverID},
		{Pinned: roots, InsecureBootstrap: true},
	} {
		if _, err := tlsclient.Config(o); err == nil {
			t.Fatalf("Config(%+v) accepted", o)
		}
	}
}
