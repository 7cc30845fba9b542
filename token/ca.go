package token

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"time"

	"github.com/trustgate/trustgate/store"
)

// KindCA is the store.Key kind of the token CA: the long-lived key that
// certifies each signing key, so that registries which trust a token
// service only through certificates (distribution v2.x's and Harbor's
// auth.token.rootcertbundle) can trust the rotating keys by one root.
const KindCA = "jwt-ca"

// certSkew is how far certificate validity reaches back, for clocks that
// run behind.
const certSkew = 5 * time.Minute

// KeyID is the libtrust fingerprint of a public key, the key ID that
// distribution v2.x (registry/auth/token) looks a token's "kid" up by among
// the keys of its rootcertbundle: the SHA-256 of the key's DER
// SubjectPublicKeyInfo, truncated to 240 bits, in unpadded base32, in 12
// groups of 4 separated by ':'.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("token: key id: %w", err)
	}
	sum := sha256.Sum256(der)
	s := strings.TrimRight(base32.StdEncoding.EncodeToString(sum[:30]), "=")
	var b strings.Builder
	for i := 0; i < len(s); i += 4 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(s[i:min(i+4, len(s))])
	}
	return b.String(), nil
}

// caKey is one loaded token CA.
type caKey struct {
	id   string
	cert *x509.Certificate
	priv *ecdsa.PrivateKey
}

// ensureCA returns the live token CAs from stored, oldest first, after
// deleting expired ones and creating the first CA, or a successor once the
// newest has less than a fifth of its lifetime left. A successor is
// published (RootCertificates) from then on, but certifies signing keys
// only when its predecessor cannot cover their whole lifetime.
func (a *Authority) ensureCA(ctx context.Context, now time.Time) ([]store.Key, error) {
	stored, err := a.opts.Keys.List(ctx, KindCA)
	if err != nil {
		return nil, fmt.Errorf("token: load CA: %w", err)
	}
	var live []store.Key
	for _, k := range stored {
		if !now.Before(k.NotAfter) {
			if err := a.opts.Keys.Delete(ctx, k.Kind, k.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, fmt.Errorf("token: delete expired CA %s: %w", k.ID, err)
			}
			a.opts.Log.Info("token CA expired and removed: drop it from registries' rootcertbundle", "id", k.ID)
			continue
		}
		live = append(live, k)
	}
	if n := len(live); n == 0 || !now.Before(live[n-1].NotAfter.Add(-a.opts.CALifetime/5)) {
		k, err := a.createCA(ctx, now)
		if err != nil {
			return nil, err
		}
		live = append(live, k)
	}
	return live, nil
}

func (a *Authority) createCA(ctx context.Context, now time.Time) (store.Key, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return store.Key{}, fmt.Errorf("token: generate CA key: %w", err)
	}
	id, err := KeyID(&priv.PublicKey)
	if err != nil {
		return store.Key{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"trustgate"}, CommonName: "trustgate token CA " + id[:14]},
		NotBefore:             now.Add(-certSkew),
		NotAfter:              now.Add(a.opts.CALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return store.Key{}, fmt.Errorf("token: CA certificate: %w", err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return store.Key{}, fmt.Errorf("token: encode CA key: %w", err)
	}
	sealed, err := a.opts.Sealer.Seal(pk, caAAD(id))
	if err != nil {
		return store.Key{}, fmt.Errorf("token: seal CA key: %w", err)
	}
	k := store.Key{Kind: KindCA, ID: id, Sealed: sealed, Public: der, NotBefore: tmpl.NotBefore, NotAfter: tmpl.NotAfter, CreatedAt: now}
	if err := a.opts.Keys.Create(ctx, k); err != nil {
		return store.Key{}, fmt.Errorf("token: store CA: %w", err)
	}
	a.opts.Log.Info("token CA created: give its certificate (GET /.well-known/token-ca.pem) to registries' auth.token.rootcertbundle",
		"id", id, "not_after", k.NotAfter)
	return k, nil
}

func caAAD(id string) []byte { return []byte(KindCA + "/" + id) }

func serial() *big.Int {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[0] &= 0x7f
	return new(big.Int).SetBytes(b[:])
}

// loadCAs opens the stored CAs.
func (a *Authority) loadCAs(stored []store.Key) ([]caKey, error) {
	out := make([]caKey, 0, len(stored))
	for _, k := range stored {
		cert, err := x509.ParseCertificate(k.Public)
		if err != nil {
			return nil, fmt.Errorf("token: CA %s: %w", k.ID, err)
		}
		der, err := a.opts.Sealer.Open(k.Sealed, caAAD(k.ID))
		if err != nil {
			return nil, fmt.Errorf("token: CA %s: %w", k.ID, err)
		}
		priv, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return nil, fmt.Errorf("token: CA %s: %w", k.ID, err)
		}
		ec, ok := priv.(*ecdsa.PrivateKey)
		if !ok || !ec.PublicKey.Equal(cert.PublicKey) {
			return nil, fmt.Errorf("token: CA %s: the sealed key does not match the certificate", k.ID)
		}
		out = append(out, caKey{id: k.ID, cert: cert, priv: ec})
	}
	return out, nil
}

// leafCert certifies a signing key for as long as a token it signs can be
// verified, by the oldest CA that covers that whole time. Certificates are
// kept across reloads while their CA is live.
func (a *Authority) leafCert(cas []caKey, k store.Key, pub *ecdsa.PublicKey) (*x509.Certificate, error) {
	notBefore := k.CreatedAt
	if k.NotBefore.Before(notBefore) {
		notBefore = k.NotBefore
	}
	notBefore = notBefore.Add(-certSkew)
	notAfter := k.NotAfter.Add(a.opts.MaxTokenTTL + certSkew)
	var ca *caKey
	for i := range cas {
		if !cas[i].cert.NotAfter.Before(notAfter) {
			ca = &cas[i]
			break
		}
	}
	if ca == nil {
		if len(cas) == 0 {
			return nil, errors.New("token: no CA")
		}
		ca = &cas[len(cas)-1]
		notAfter = ca.cert.NotAfter
	}
	if c := a.leaves[k.ID]; c != nil && bytes.Equal(c.RawIssuer, ca.cert.RawSubject) && c.CheckSignatureFrom(ca.cert) == nil {
		return c, nil
	}
	notBefore = maxTime(notBefore, ca.cert.NotBefore)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"trustgate"}, CommonName: "trustgate token signing key " + k.ID},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.priv)
	if err != nil {
		return nil, fmt.Errorf("token: certify key %s: %w", k.ID, err)
	}
	return x509.ParseCertificate(der)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// RootCertificates returns the live token CA certificates, PEM-encoded:
// the file to give a registry as auth.token.rootcertbundle. Scoped tokens
// signed with SignWithChain carry an x5c chain to one of them.
func (a *Authority) RootCertificates() []byte {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.roots
}

// ServeRootCertificates serves RootCertificates (GET
// /.well-known/token-ca.pem).
func (a *Authority) ServeRootCertificates(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(a.opts.Prepublish.Seconds()/2)))
	_, _ = w.Write(a.RootCertificates())
}

func encodeRoots(cas []caKey) []byte {
	var b bytes.Buffer
	for _, c := range cas {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})
	}
	return b.Bytes()
}
