// Package tlsclient builds the TLS configuration of a trustgate broker's
// clients: agents, the CLI and health checks.
//
// A client trusts the broker through its trust bundle, the PEM roots of the
// broker's CA (the server's tls.bundle_file, or `trustgate server bundle
// show`), given as TrustBundlePath. It then verifies the broker's
// certificate by host name against those roots, as curl --cacert does, or,
// with ServerID, by the broker's SPIFFE ID as SPIRE's agents do. With
// InsecureBootstrap it verifies nothing, and says so loudly. A client that
// holds an X.509-SVID presents it with SVID: the broker then authenticates
// the caller as that SPIFFE ID, without a token.
package tlsclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Options say how a client verifies the broker and what it presents.
type Options struct {
	// TrustBundlePath is a PEM file of the broker's trust bundle. Empty:
	// the system roots (a broker serving a publicly trusted certificate).
	TrustBundlePath string
	// TrustBundle are roots already loaded, used with or instead of
	// TrustBundlePath.
	TrustBundle []*x509.Certificate
	// InsecureBootstrap skips verifying the broker's certificate. It is
	// logged at WARN on every Config call. It excludes TrustBundlePath.
	// With Pinned and ServerID, it only covers the first contact.
	InsecureBootstrap bool
	// Pinned, with InsecureBootstrap and ServerID, returns the trust
	// bundle the client got from the broker at its first contact: once it
	// returns roots, every handshake verifies the broker against them by
	// ServerID, as SPIRE's agents do after an insecure bootstrap. While it
	// returns none, the broker is not verified.
	Pinned func() []*x509.Certificate
	// ServerID, when set, verifies the broker by this SPIFFE ID (usually
	// spiffe://<trust domain>/spire/server) instead of by host name. It
	// needs TrustBundlePath.
	ServerID spiffeid.ID
	// SVID, when set, is presented as the client certificate.
	SVID x509svid.Source
	// Log receives the insecure_bootstrap warning (default slog.Default).
	Log *slog.Logger
}

// LoadBundle reads a PEM trust bundle: one or more CERTIFICATE blocks.
func LoadBundle(path string) ([]*x509.Certificate, error) {
	b, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString("bundle.invalid"), path)
	if err != nil {
		return nil, fmt.Errorf("trust bundle %s: %w", path, err)
	}
	if b.Empty() {
		return nil, fmt.Errorf("trust bundle %s: no certificate", path)
	}
	return b.X509Authorities(), nil
}

// Config returns the client TLS configuration o describes.
func Config(o Options) (*tls.Config, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	roots := o.TrustBundle
	if o.TrustBundlePath != "" {
		loaded, err := LoadBundle(o.TrustBundlePath)
		if err != nil {
			return nil, err
		}
		roots = append(roots[:len(roots):len(roots)], loaded...)
	}
	switch {
	case o.InsecureBootstrap && len(roots) > 0:
		return nil, errors.New("tlsclient: insecure_bootstrap and trust_bundle_path are exclusive: drop insecure_bootstrap")
	case o.Pinned != nil && (!o.InsecureBootstrap || o.ServerID.IsZero()):
		return nil, errors.New("tlsclient: Pinned needs InsecureBootstrap and ServerID")
	case !o.ServerID.IsZero() && len(roots) == 0 && o.Pinned == nil:
		return nil, errors.New("tlsclient: verifying the broker by SPIFFE ID needs trust_bundle_path")
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case o.Pinned != nil:
		o.Log.Warn("INSECURE BOOTSTRAP: the broker's certificate is NOT verified until the first trust bundle is received from it (trust on first use); anyone on the network path at that moment can impersonate it. Set trust_bundle_path to the broker's bundle (trustgate server bundle show) instead")
		c.InsecureSkipVerify = true // verified below, once pinned
		verify := tlsconfig.VerifyPeerCertificate(pinnedSource{o.Pinned}, tlsconfig.AuthorizeID(o.ServerID))
		c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			if len(o.Pinned()) == 0 {
				return nil // the first contact: nothing to verify against yet
			}
			if err := verify(raw, chains); err != nil {
				return fmt.Errorf("the broker does not match the trust bundle pinned at bootstrap: %w", err)
			}
			return nil
		}
	case o.InsecureBootstrap:
		o.Log.Warn("INSECURE BOOTSTRAP: the broker's certificate is NOT verified; anyone on the network path can impersonate it. Set trust_bundle_path to the broker's bundle (trustgate server bundle show) instead")
		c.InsecureSkipVerify = true
	case !o.ServerID.IsZero():
		b := x509bundle.FromX509Authorities(o.ServerID.TrustDomain(), roots)
		tlsconfig.HookTLSClientConfig(c, b, tlsconfig.AuthorizeID(o.ServerID))
	case len(roots) > 0:
		c.RootCAs = x509.NewCertPool()
		for _, r := range roots {
			c.RootCAs.AddCert(r)
		}
	}
	if o.SVID != nil {
		c.GetClientCertificate = tlsconfig.GetClientCertificate(o.SVID)
	}
	return c, nil
}

// pinnedSource is Options.Pinned as a bundle source for any trust domain.
type pinnedSource struct{ roots func() []*x509.Certificate }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (p pinnedSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return x509bundle.FromX509Authorities(td, p.roots()), nil
}

// HTTPClient returns an HTTP client with Config(o), a 30 s overall
// deadline, and no cookie jar.
func HTTPClient(o Options) (*http.Client, error) {
	c, err := Config(o)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = c
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, nil
}
