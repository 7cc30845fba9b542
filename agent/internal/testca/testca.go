// Package testca is a local SPIFFE CA for the agent's tests: it implements
// cache.Issuer with crypto/x509 and go-jose, as the broker will over the
// network.
package testca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/trustgate/trustgate/agent/cache"
)

// CA signs X.509-SVIDs and JWT-SVIDs for one trust domain.
type CA struct {
	TD     spiffeid.TrustDomain
	Root   *x509.Certificate
	key    crypto.Signer
	jwtKey *ecdsa.PrivateKey
	kid    string

	mu   sync.Mutex
	ttl  time.Duration
	fail error

	// Signed counts X.509-SVIDs signed; Batches counts SignX509SVIDs calls;
	// Minted counts JWT-SVIDs minted.
	Signed, Batches, Minted atomic.Int64
}

// New returns a CA for td whose SVIDs live for ttl.
func New(td spiffeid.TrustDomain, ttl time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	jk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &CA{TD: td, Root: root, key: key, jwtKey: jk, kid: "test-kid", ttl: ttl}, nil
}

// SetTTL changes the lifetime of SVIDs signed from now on.
func (ca *CA) SetTTL(ttl time.Duration) {
	ca.mu.Lock()
	ca.ttl = ttl
	ca.mu.Unlock()
}

// SetFailure makes every call fail with err until it is set to nil.
func (ca *CA) SetFailure(err error) {
	ca.mu.Lock()
	ca.fail = err
	ca.mu.Unlock()
}

func (ca *CA) state() (time.Duration, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.ttl, ca.fail
}

// Bundle returns the CA's trust bundle with its X.509 and JWT authorities.
func (ca *CA) Bundle() *spiffebundle.Bundle {
	b := spiffebundle.New(ca.TD)
	b.AddX509Authority(ca.Root)
	if err := b.AddJWTAuthority(ca.kid, ca.jwtKey.Public()); err != nil {
		panic(err)
	}
	return b
}

// SignX509SVIDs implements cache.Issuer.
func (ca *CA) SignX509SVIDs(_ context.Context, reqs []cache.X509Request) ([]cache.X509Result, error) {
	ttl, fail := ca.state()
	if fail != nil {
		return nil, fail
	}
	ca.Batches.Add(1)
	out := make([]cache.X509Result, 0, len(reqs))
	for _, r := range reqs {
		chain, err := ca.sign(r, ttl)
		out = append(out, cache.X509Result{EntryID: r.EntryID, Chain: chain, Err: err})
	}
	return out, nil
}

var serial atomic.Int64

func (ca *CA) sign(r cache.X509Request, ttl time.Duration) ([]*x509.Certificate, error) {
	csr, err := x509.ParseCertificateRequest(r.CSR)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, err
	}
	if r.SPIFFEID.TrustDomain() != ca.TD {
		return nil, errors.New("foreign trust domain")
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1) + 1),
		URIs:                  []*url.URL{r.SPIFFEID.URL()},
		NotBefore:             now,
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Root, csr.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca.Signed.Add(1)
	return []*x509.Certificate{leaf}, nil
}

// MintJWTSVID implements cache.Issuer.
func (ca *CA) MintJWTSVID(_ context.Context, _ string, id spiffeid.ID, audience []string) (string, error) {
	ttl, fail := ca.state()
	if fail != nil {
		return "", fail
	}
	if len(audience) == 0 {
		return "", errors.New("no audience")
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: ca.jwtKey},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", ca.kid))
	if err != nil {
		return "", fmt.Errorf("signer: %w", err)
	}
	now := time.Now()
	tok, err := jwt.Signed(sig).Claims(jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(audience),
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(ttl)),
	}).Serialize()
	if err != nil {
		return "", err
	}
	ca.Minted.Add(1)
	return tok, nil
}
