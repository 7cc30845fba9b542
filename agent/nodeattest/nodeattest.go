// Package nodeattest gives the node agent its own X.509-SVID: node
// attestation with the configured attestor (RCAR through client/kbs), then
// an SVID for a key made here, kept on disk (0600) so that a restart does
// not attest again, and renewed at half its remaining lifetime over mTLS
// with the current SVID. An expired SVID is replaced by a new attestation
// only when the attestor can prove the node again (a join token cannot).
package nodeattest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/agent/brokerclient"
	"github.com/trustgate/trustgate/client/kbs"
)

// File names in the data directory.
const (
	CertFile = "agent_svid.pem"
	KeyFile  = "agent_svid.key"
)

// Config configures a Manager.
type Config struct {
	// DataDir holds the SVID and key; created 0700.
	DataDir string
	// Broker is the agent API client (mTLS with this Manager as its SVID
	// source).
	Broker *brokerclient.Client
	// Bootstrap is a client for the attestation and the first SVID: it
	// verifies the broker and presents no certificate.
	Bootstrap *http.Client
	// BrokerURL is the broker's base URL, for RCAR.
	BrokerURL string
	// Attester proves the node; nil when it cannot be built now (a join
	// token already consumed and absent).
	Attester func() (kbs.Attester, error)
	// CanReattest says whether Attester can prove the node again once its
	// first SVID expired.
	CanReattest bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// OnRotate, when set, is called after every new SVID.
	OnRotate func()
	// RetryMin and RetryMax bound the backoff of failed renewals; defaults
	// 1 s and 30 s.
	RetryMin, RetryMax time.Duration
}

// Manager holds the agent's SVID. It implements x509svid.Source.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu   sync.RWMutex
	svid *x509svid.SVID
	// renewAt is half the SVID's remaining lifetime from when this Manager
	// got it. Not from NotBefore: the broker backdates that (by a minute,
	// for clock skew), which for a short TTL lies before the issuance, and
	// the half-life would then always be past.
	renewAt time.Time
}

// New returns a Manager with the SVID found in the data directory, if any
// (Load), and no network call.
func New(cfg Config) (*Manager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(30*time.Second, cfg.RetryMin)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	m := &Manager{cfg: cfg, log: cfg.Logger}
	s, err := x509svid.Load(filepath.Join(cfg.DataDir, CertFile), filepath.Join(cfg.DataDir, KeyFile))
	switch {
	case err == nil:
		m.set(s, time.Now())
		m.log.Info("agent SVID loaded from disk", "spiffe_id", s.ID.String(), "expires_at", s.Certificates[0].NotAfter)
	case errors.Is(err, os.ErrNotExist):
	default:
		m.log.Warn("agent SVID on disk is unusable", "err", err)
	}
	return m, nil
}

// GetX509SVID implements x509svid.Source: the current SVID.
func (m *Manager) GetX509SVID() (*x509svid.SVID, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.svid == nil {
		return nil, errors.New("the agent has no SVID yet")
	}
	return m.svid, nil
}

// Current returns the SVID, nil before the first one.
func (m *Manager) Current() *x509svid.SVID {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.svid
}

// set makes s the current SVID, obtained at now.
func (m *Manager) set(s *x509svid.SVID, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.svid = s
	m.renewAt = now.Add(s.Certificates[0].NotAfter.Sub(now) / 2)
}

// due returns the current SVID and when to renew it.
func (m *Manager) due() (*x509svid.SVID, time.Time) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.svid, m.renewAt
}

func (m *Manager) valid(now time.Time) bool {
	s := m.Current()
	return s != nil && now.Before(s.Certificates[0].NotAfter)
}

// Start makes sure the agent has a valid SVID: the one on disk if it has
// not expired, otherwise from a node attestation. It retries until ctx ends.
func (m *Manager) Start(ctx context.Context) error {
	if m.valid(time.Now()) {
		return nil
	}
	first := m.Current() == nil
	if !first && !m.cfg.CanReattest {
		m.log.Error("the agent SVID has expired and a join token cannot attest again: give the agent a new join token (and remove the old SVID from data_dir)")
	}
	delay := m.cfg.RetryMin
	for {
		err := m.attest(ctx)
		if err == nil {
			return nil
		}
		m.log.Warn("node attestation failed; retrying", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, m.cfg.RetryMax)
	}
}

// attest runs RCAR and gets a first SVID with the attestation token.
func (m *Manager) attest(ctx context.Context) error {
	if m.Current() != nil && !m.cfg.CanReattest {
		return errors.New("the join token was consumed: a new one is needed")
	}
	a, err := m.cfg.Attester()
	if err != nil {
		return err
	}
	kc, err := kbs.New(m.cfg.BrokerURL, kbs.WithHTTPClient(m.cfg.Bootstrap))
	if err != nil {
		return err
	}
	tok, err := kc.Attest(ctx, a)
	if err != nil {
		return fmt.Errorf("attestation: %w", err)
	}
	if err := m.firstSVID(ctx, tok); err != nil {
		return err
	}
	m.log.Info("node attested", "spiffe_id", m.Current().ID.String())
	return nil
}

// firstSVID gets the first SVID with the attestation token tok. The broker
// spends the token on the first key it certifies, so a failure short of a
// refusal (a lost answer) is retried with the same key: a new attestation
// could not replace a consumed join token.
func (m *Manager) firstSVID(ctx context.Context, tok string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	delay := m.cfg.RetryMin
	for try := 1; ; try++ {
		err = m.renew(ctx, m.cfg.Bootstrap, tok, key)
		if err == nil || brokerclient.IsDenied(err) || try == firstSVIDTries {
			return err
		}
		m.log.Warn("first agent SVID failed; retrying with the same token and key", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, m.cfg.RetryMax)
	}
}

// firstSVIDTries bounds the tries of the first SVID request with one
// attestation token.
const firstSVIDTries = 4

// renew gets a new SVID for key, or for a new key when key is nil; bearer
// empty means mTLS.
func (m *Manager) renew(ctx context.Context, hc *http.Client, bearer string, key *ecdsa.PrivateKey) error {
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return err
		}
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return err
	}
	got, err := m.cfg.Broker.NewSVID(ctx, hc, bearer, csr)
	if err != nil {
		return err
	}
	if !publicKeyEqual(got.Chain[0].PublicKey, key.Public()) {
		return errors.New("agent SVID: the broker certified another key")
	}
	s := &x509svid.SVID{ID: got.ID, Certificates: got.Chain, PrivateKey: key}
	if err := m.save(s); err != nil {
		return err
	}
	m.set(s, time.Now())
	if m.cfg.OnRotate != nil {
		m.cfg.OnRotate()
	}
	return nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

// save writes the SVID and key atomically, 0600.
func (m *Manager) save(s *x509svid.SVID) error {
	certs, key, err := s.Marshal()
	if err != nil {
		return err
	}
	// The key first: a chain on disk always has its key.
	if err := writeFile(filepath.Join(m.cfg.DataDir, KeyFile), key); err != nil {
		return err
	}
	return writeFile(filepath.Join(m.cfg.DataDir, CertFile), certs)
}

func writeFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// Run renews the SVID at half its remaining lifetime (counted from when it
// was obtained) until ctx ends. When the SVID expired (the broker was away
// too long), it attests again if it can.
func (m *Manager) Run(ctx context.Context) error {
	delay := m.cfg.RetryMin
	for {
		s, at := m.due()
		leaf := s.Certificates[0]
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(at)):
		}
		var err error
		if time.Now().Before(leaf.NotAfter) {
			err = m.renew(ctx, nil, "", nil)
		} else if m.cfg.CanReattest {
			err = m.attest(ctx)
		} else {
			m.log.Error("the agent SVID expired while the broker was unreachable; a join token cannot attest again: give the agent a new join token")
			err = errors.New("agent SVID expired")
		}
		if err == nil {
			delay = m.cfg.RetryMin
			m.log.Info("agent SVID renewed", "expires_at", m.Current().Certificates[0].NotAfter)
			continue
		}
		if brokerclient.IsDenied(err) {
			m.log.Error("the broker refuses the agent (evicted?)", "err", err)
		} else {
			m.log.Warn("agent SVID renewal failed; retrying", "err", err, "in", delay)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, m.cfg.RetryMax)
	}
}
