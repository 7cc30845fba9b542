package svid

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/store"
)

// SignX509 signs an X.509-SVID for id over the key of csr (whose
// self-signature the caller has checked, see ParseCSR) with the current
// intermediate, and returns the leaf and the intermediate. The caller has
// decided that id may be issued: the broker's agent API calls it for an
// agent's own ID and for the entries it authorized. ttl (0: the default)
// is capped by the configured maximum and the intermediate's end.
func (p *Plugin) SignX509(ctx context.Context, csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration, dnsNames []string) ([]*x509.Certificate, error) {
	if !id.MemberOf(p.td) {
		return nil, fmt.Errorf("svid: %s is not in trust domain %s", id, p.td)
	}
	now := p.now()
	ca, err := p.currentIntermediate(ctx, now)
	if err != nil {
		return nil, err
	}
	leaf, err := p.signLeaf(csr, id, store.Entry{X509SVIDTTL: ttl, DNSNames: dnsNames}, ca, now)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, ca.cert}, nil
}

// SignJWT mints a JWT-SVID for id and audience with the current JWT key,
// and returns it and its expiry. ttl (0: the default) is capped by the
// configured maximum. The caller has decided that id may be issued.
func (p *Plugin) SignJWT(ctx context.Context, id spiffeid.ID, audience []string, ttl time.Duration) (string, time.Time, error) {
	if !id.MemberOf(p.td) {
		return "", time.Time{}, fmt.Errorf("svid: %s is not in trust domain %s", id, p.td)
	}
	now := p.now()
	st, err := p.load(ctx, now)
	if err != nil {
		return "", time.Time{}, err
	}
	key, ok := signingJWTKey(st.jwt, now)
	if !ok {
		return "", time.Time{}, errors.New("svid: no current JWT key (is rotation running?)")
	}
	exp := now.Add(ttlOf(ttl, p.cfg.JWTSVIDTTL.Duration, p.cfg.MaxJWTSVIDTTL.Duration)).Truncate(time.Second)
	claims := jwt.Claims{Subject: id.String(), Audience: jwt.Audience(audience), Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(now)}
	tok, err := jwt.Signed(key.signer).Claims(claims).Serialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("svid: sign JWT-SVID for %s: %w", id, err)
	}
	return tok, exp, nil
}

// BundleContents is the trust bundle as values, for APIs that serve it in
// their own format.
type BundleContents struct {
	// TrustDomain is the bundle's trust domain.
	TrustDomain spiffeid.TrustDomain
	// X509Authorities are the roots.
	X509Authorities []*x509.Certificate
	// JWTAuthorities are the JWT-SVID keys by key ID.
	JWTAuthorities map[string]crypto.PublicKey
	// RefreshHint is how often relying parties should fetch it again.
	RefreshHint time.Duration
	// Sequence grows whenever the bundle changes.
	Sequence uint64
}

// Contents returns the current trust bundle.
func (p *Plugin) Contents() BundleContents {
	st := p.state.Load()
	out := BundleContents{TrustDomain: p.td, JWTAuthorities: make(map[string]crypto.PublicKey, len(st.jwt)),
		RefreshHint: p.cfg.BundleRefreshHint.Duration, Sequence: st.sequence}
	for _, r := range st.roots {
		out.X509Authorities = append(out.X509Authorities, r.cert)
	}
	for _, k := range st.jwt {
		out.JWTAuthorities[k.kid] = k.public
	}
	return out
}
