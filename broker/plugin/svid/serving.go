package svid

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/store"
)

// ServingRequest asks for the broker's own TLS serving certificate.
type ServingRequest struct {
	// Key is the certificate's public key.
	Key crypto.PublicKey
	// ID is the SPIFFE ID the certificate carries as its URI SAN.
	ID spiffeid.ID
	// DNSNames and IPs are the names clients reach the broker by.
	DNSNames []string
	IPs      []net.IP
	// TTL is the wanted lifetime; the signing intermediate's end caps it.
	TTL time.Duration
}

// IssueServing signs the broker's TLS serving certificate with the current
// intermediate: an X.509-SVID for req.ID that also names req.DNSNames and
// req.IPs, for TLS servers and clients, so that it verifies both against
// the bundle's roots as a SPIFFE peer and by host name. It returns the leaf
// and the intermediate, the chain a TLS server presents.
func (p *Plugin) IssueServing(ctx context.Context, req ServingRequest) ([]*x509.Certificate, error) {
	if !req.ID.MemberOf(p.td) {
		return nil, fmt.Errorf("svid: serving certificate for %s: not in trust domain %s", req.ID, p.td)
	}
	if req.TTL <= 0 {
		return nil, errors.New("svid: serving certificate: TTL must be positive")
	}
	now := p.now()
	ca, err := p.currentIntermediate(ctx, now)
	if err != nil {
		return nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, fmt.Errorf("svid: %w", err)
	}
	notAfter := now.Add(req.TTL)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	usage := x509.KeyUsageDigitalSignature
	if _, isRSA := req.Key.(*rsa.PublicKey); isRSA {
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"trustgate"}, CommonName: "trustgate server"},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		URIs:                  []*url.URL{req.ID.URL()},
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPs,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, req.Key, ca.key)
	if err != nil {
		return nil, fmt.Errorf("svid: sign serving certificate with intermediate %s: %w", ca.id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("svid: parse serving certificate: %w", err)
	}
	return []*x509.Certificate{leaf, ca.cert}, nil
}

// X509Bundle returns the X.509 roots of the trust domain now in the bundle:
// what X.509-SVIDs and the serving certificate chain to.
func (p *Plugin) X509Bundle() *x509bundle.Bundle {
	st := p.state.Load()
	roots := make([]*x509.Certificate, len(st.roots))
	for i, r := range st.roots {
		roots[i] = r.cert
	}
	return x509bundle.FromX509Authorities(p.td, roots)
}

// GetX509BundleForTrustDomain implements x509bundle.Source with the current
// roots, for the plugin's own trust domain only.
func (p *Plugin) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != p.td {
		return nil, fmt.Errorf("svid: no bundle for trust domain %q", td)
	}
	return p.X509Bundle(), nil
}

// StoredX509Bundle reads the roots of the trust domain from st without
// opening any private key: the bundle a running broker serves, for export
// (`trustgate server bundle show`). Roots whose certificates have expired
// at now are left out. It fails when the store holds no root yet.
func StoredX509Bundle(ctx context.Context, st store.Store, td spiffeid.TrustDomain, now time.Time) (*x509bundle.Bundle, error) {
	keys, err := st.Keys().List(ctx, KindRoot)
	if err != nil {
		return nil, fmt.Errorf("svid: list root keys: %w", err)
	}
	b := x509bundle.New(td)
	for _, k := range keys {
		cert, err := x509.ParseCertificate(k.Public)
		if err != nil {
			return nil, fmt.Errorf("svid: root %s: %w", k.ID, err)
		}
		if now.Before(cert.NotAfter) {
			b.AddX509Authority(cert)
		}
	}
	if b.Empty() {
		return nil, errors.New("svid: the store holds no root CA yet: start the server once with TLS mode \"ca\" or the svid plugin enabled")
	}
	return b, nil
}
