package broker

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
)

// servingTLS is the broker's TLS side: the serving certificate, from files
// reloaded when they change or issued by the broker's CA and renewed
// half-way through its life, the optional verification of client
// X.509-SVIDs, and the bundle file.
type servingTLS struct {
	log  *slog.Logger
	now  func() time.Time
	cert atomic.Pointer[tls.Certificate]

	// Mode "files".
	certFile, keyFile string
	certPEM, keyPEM   []byte
	interval          time.Duration

	// Mode "ca", client certificates and the bundle file.
	ca         *svid.Plugin
	rotateCA   bool // the svid plugin is not served, so its Run is not called
	id         spiffeid.ID
	dns        []string
	ips        []net.IP
	ttl        time.Duration
	renewAt    time.Time // half the issued certificate's remaining life; run's goroutine only
	bundleFile string
	bundlePEM  []byte
	clientSVID bool
}

// newServingTLS prepares cfg's TLS settings: it loads the certificate files
// or issues the first certificate, and writes the bundle file. ca is the
// broker's CA when cfg needs one; served says whether the svid plugin is
// served (and so rotates its CA itself).
func newServingTLS(ctx context.Context, cfg Config, serverID spiffeid.ID, ca *svid.Plugin, served bool, log *slog.Logger) (*servingTLS, error) {
	t := &servingTLS{log: log.With("component", "tls"), now: time.Now, ca: ca, rotateCA: ca != nil && !served,
		certFile: cfg.TLS.CertFile, keyFile: cfg.TLS.KeyFile, interval: cfg.TLS.ReloadInterval.Duration,
		id: serverID, ttl: cfg.TLS.CertTTL.Duration, bundleFile: cfg.TLS.BundleFile, clientSVID: cfg.TLS.ClientCerts}
	t.dns, t.ips = cfg.servingNames()
	switch cfg.TLS.Mode {
	case TLSModeFiles:
		if err := t.reloadFiles(); err != nil {
			return nil, err
		}
	case TLSModeCA:
		t.interval = min(max(t.ttl/16, time.Second), time.Minute)
		if err := t.issue(ctx); err != nil {
			return nil, err
		}
	}
	if t.ca != nil && t.interval == 0 {
		t.interval = time.Minute
	}
	if err := t.writeBundle(); err != nil {
		return nil, err
	}
	return t, nil
}

// config is the server's tls.Config. The certificate is read on every
// handshake, so that a reload or renewal applies to new connections.
func (t *servingTLS) config() *tls.Config {
	c := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return t.cert.Load(), nil
		},
	}
	if t.clientSVID && t.ca != nil {
		// Certificates are optional; one that is sent must be an
		// X.509-SVID chained to the current bundle, or the handshake fails.
		c.ClientAuth = tls.RequestClientCert
		c.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil
			}
			id, _, err := x509svid.ParseAndVerify(raw, t.ca)
			if err != nil {
				t.log.Warn("client certificate refused", "reason", err.Error())
				return fmt.Errorf("client certificate: %w", err)
			}
			t.log.Debug("client certificate verified", "spiffe_id", id.String())
			return nil
		}
	}
	return c
}

// run keeps the certificate and the bundle file current until ctx ends.
func (t *servingTLS) run(ctx context.Context) {
	if t.interval <= 0 {
		return
	}
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if t.rotateCA {
			if err := t.ca.Rotate(ctx); err != nil {
				t.log.Error("CA rotation failed; current keys keep signing", "err", err)
			}
		}
		switch {
		case t.certFile != "":
			if err := t.reloadFiles(); err != nil {
				t.log.Error("certificate files not reloaded; the previous certificate is still served", "err", err)
			}
		case t.ca != nil && t.due():
			if err := t.issue(ctx); err != nil {
				t.log.Error("serving certificate not renewed; the current one is still served", "err", err)
			}
		}
		if err := t.writeBundle(); err != nil {
			t.log.Error("bundle file not written", "err", err)
		}
	}
}

// reloadFiles loads the certificate files when their content changed.
func (t *servingTLS) reloadFiles() error {
	certPEM, err := os.ReadFile(t.certFile)
	if err != nil {
		return fmt.Errorf("tls.cert_file: %w", err)
	}
	keyPEM, err := os.ReadFile(t.keyFile)
	if err != nil {
		return fmt.Errorf("tls.key_file: %w", err)
	}
	if bytes.Equal(certPEM, t.certPEM) && bytes.Equal(keyPEM, t.keyPEM) {
		return nil
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("tls.cert_file %s and tls.key_file %s: %w", t.certFile, t.keyFile, err)
	}
	first := t.certPEM == nil
	t.certPEM, t.keyPEM = certPEM, keyPEM
	t.cert.Store(&pair)
	if !first {
		t.log.Info("serving certificate reloaded", "cert_file", t.certFile, "subject", pair.Leaf.Subject.String(), "not_after", pair.Leaf.NotAfter)
	}
	return nil
}

// due reports whether the CA-issued certificate is half-way through the
// life it had when issued. Not counted from NotBefore: the CA backdates
// that by a minute, which for a short cert_ttl makes every check due.
func (t *servingTLS) due() bool {
	return t.cert.Load() == nil || !t.now().Before(t.renewAt)
}

// issue makes a new key and has the CA sign a serving certificate for it.
func (t *servingTLS) issue(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("tls: serving key: %w", err)
	}
	chain, err := t.ca.IssueServing(ctx, svid.ServingRequest{Key: &key.PublicKey, ID: t.id, DNSNames: t.dns, IPs: t.ips, TTL: t.ttl})
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, cert := range chain {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	now := t.now()
	t.renewAt = now.Add(chain[0].NotAfter.Sub(now) / 2)
	t.cert.Store(c)
	t.log.Info("serving certificate issued", "spiffe_id", t.id.String(), "dns", t.dns, "not_after", chain[0].NotAfter)
	return nil
}

// writeBundle writes the current bundle to the bundle file when it changed,
// atomically, mode 0644: it is public.
func (t *servingTLS) writeBundle() error {
	if t.bundleFile == "" || t.ca == nil {
		return nil
	}
	var buf bytes.Buffer
	for _, c := range t.ca.X509Bundle().X509Authorities() {
		if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
			return fmt.Errorf("tls.bundle_file: %w", err)
		}
	}
	if bytes.Equal(buf.Bytes(), t.bundlePEM) {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(t.bundleFile), ".bundle-*")
	if err != nil {
		return fmt.Errorf("tls.bundle_file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(buf.Bytes())
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), 0o644)); err != nil {
		return fmt.Errorf("tls.bundle_file: %w", err)
	}
	if err := os.Rename(tmp.Name(), t.bundleFile); err != nil {
		return fmt.Errorf("tls.bundle_file: %w", err)
	}
	t.bundlePEM = buf.Bytes()
	t.log.Info("trust bundle written", "path", t.bundleFile, "roots", len(t.ca.X509Bundle().X509Authorities()))
	return nil
}

// setupTLS builds the TLS side of cfg: the broker's CA when cfg needs it
// (the served svid plugin's, or one built from [plugins.svid] and rotated
// here), and the source that verifies client X.509-SVIDs. It returns nil
// for a cleartext broker that writes no bundle.
func setupTLS(ctx context.Context, cfg Config, td spiffeid.TrustDomain, st store.Store, sealer *seal.Sealer, plugins []plugin.Plugin, log *slog.Logger) (*servingTLS, x509bundle.Source, error) {
	if cfg.TLS.Mode == TLSModeOff && cfg.TLS.BundleFile == "" {
		return nil, nil, nil
	}
	var ca *svid.Plugin
	for _, p := range plugins {
		if sp, ok := p.(*svid.Plugin); ok {
			ca = sp
		}
	}
	served := ca != nil
	if ca == nil && cfg.TLS.needsCA() {
		var err error
		if ca, err = svid.New(ctx, cfg.Plugins.SVID.Config, td, st, sealer, log.With("plugin", "svid", "served", false), nil); err != nil {
			return nil, nil, fmt.Errorf("tls: the broker's CA: %w", err)
		}
	}
	serverID, err := spiffeid.FromSegments(td, "spire", "server")
	if err != nil {
		return nil, nil, fmt.Errorf("tls: %w", err)
	}
	t, err := newServingTLS(ctx, cfg, serverID, ca, served, log)
	if err != nil {
		return nil, nil, err
	}
	if cfg.TLS.Mode == TLSModeOff || !cfg.TLS.ClientCerts {
		return t, nil, nil
	}
	return t, ca, nil
}

// TLSConfig is the configuration to serve the broker's listener with, or
// nil when it serves cleartext (tls.mode = "off").
func (s *Server) TLSConfig() *tls.Config {
	if s.tls == nil || s.tls.cert.Load() == nil {
		return nil
	}
	return s.tls.config()
}
