package svid

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/store"
)

// Request limits.
const (
	// MaxCSRSize bounds a CSR body; an RSA-8192 CSR with many SANs fits.
	MaxCSRSize = 16 << 10
	// MaxJWTRequestSize bounds a JWT-SVID request body.
	MaxJWTRequestSize = 16 << 10
	// MaxAudiences bounds the audience list of a JWT-SVID.
	MaxAudiences = 16
	// maxAudienceLen bounds one audience value.
	maxAudienceLen = 512
)

// X509Response is the answer of POST /kbs/v0/svid/x509.
type X509Response struct {
	// SPIFFEID is the identity the SVID carries.
	SPIFFEID string `json:"spiffe_id"`
	// SVID is the certificate chain in PEM, one certificate per element:
	// the leaf first, then the intermediate that signed it. The root is
	// in the bundle.
	SVID []string `json:"svid"`
	// ExpiresAt is the leaf's NotAfter, in Unix seconds.
	ExpiresAt int64 `json:"expires_at"`
}

// JWTRequest is the body of POST /kbs/v0/svid/jwt.
type JWTRequest struct {
	// SPIFFEID is the identity the token is for.
	SPIFFEID string `json:"spiffe_id"`
	// Audience is the token's "aud", one to MaxAudiences values.
	Audience []string `json:"audience"`
}

// JWTResponse is the answer of POST /kbs/v0/svid/jwt.
type JWTResponse struct {
	// Token is the JWT-SVID, a compact JWS.
	Token string `json:"token"`
	// SPIFFEID is the token's subject.
	SPIFFEID string `json:"spiffe_id"`
	// ExpiresAt is the token's "exp", in Unix seconds.
	ExpiresAt int64 `json:"expires_at"`
}

func badRequest(format string, args ...any) error {
	return plugin.Errorf(http.StatusBadRequest, format, args...)
}

// ParseCSR parses a PKCS#10 certificate request, PEM ("CERTIFICATE
// REQUEST") or DER, checks its self-signature, and checks that its key is
// one an SVID may carry (ECDSA P-256/P-384/P-521, RSA of 2048 to 8192 bits,
// or Ed25519) and that it names at most one URI. Errors are *plugin.Error
// with status 400.
func ParseCSR(body []byte) (*x509.CertificateRequest, error) {
	if len(body) > MaxCSRSize {
		return nil, badRequest("CSR is %d bytes, more than %d", len(body), MaxCSRSize)
	}
	der := body
	if trimmed := bytes.TrimSpace(body); bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		block, rest := pem.Decode(trimmed)
		if block == nil {
			return nil, badRequest("CSR: malformed PEM")
		}
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, badRequest("CSR: PEM block is %q, want \"CERTIFICATE REQUEST\"", block.Type)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, badRequest("CSR: want exactly one PEM block")
		}
		der = block.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, badRequest("CSR: not a PKCS#10 request in PEM or DER: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, badRequest("CSR: signature does not verify: %v", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if c := k.Curve; c != elliptic.P256() && c != elliptic.P384() && c != elliptic.P521() {
			return nil, badRequest("CSR: ECDSA curve %s is not allowed: want P-256, P-384 or P-521", c.Params().Name)
		}
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return nil, badRequest("CSR: RSA key of %d bits: want 2048 to 8192", n)
		}
	case ed25519.PublicKey:
	default:
		return nil, badRequest("CSR: %T keys are not allowed: want ECDSA, RSA or Ed25519", k)
	}
	if len(csr.URIs) > 1 {
		return nil, badRequest("CSR names %d URIs: an X.509-SVID has exactly one", len(csr.URIs))
	}
	return csr, nil
}

// x509Target decides the SPIFFE ID of an X.509-SVID request: the
// spiffe_id query parameter, the CSR's URI SAN, or both when they agree.
func (p *Plugin) x509Target(q url.Values, csr *x509.CertificateRequest) (spiffeid.ID, error) {
	var fromQuery, fromCSR spiffeid.ID
	switch v := q["spiffe_id"]; len(v) {
	case 0:
	case 1:
		id, err := spiffeid.FromString(v[0])
		if err != nil {
			return spiffeid.ID{}, badRequest("spiffe_id %q: %v", v[0], err)
		}
		fromQuery = id
	default:
		return spiffeid.ID{}, badRequest("spiffe_id is given %d times", len(v))
	}
	if len(csr.URIs) == 1 {
		id, err := spiffeid.FromURI(csr.URIs[0])
		if err != nil {
			return spiffeid.ID{}, badRequest("CSR URI SAN %q is not a SPIFFE ID: %v", csr.URIs[0], err)
		}
		fromCSR = id
	}
	switch {
	case fromQuery.IsZero() && fromCSR.IsZero():
		return spiffeid.ID{}, badRequest("no SPIFFE ID requested: give ?spiffe_id= or a URI SAN in the CSR")
	case fromQuery.IsZero():
		return fromCSR, nil
	case !fromCSR.IsZero() && fromCSR != fromQuery:
		return spiffeid.ID{}, badRequest("CSR URI SAN %s differs from spiffe_id %s", fromCSR, fromQuery)
	}
	return fromQuery, nil
}

// grant returns the entry under which caller may hold id: the zero entry
// (server defaults) when id is the caller's own SPIFFE ID, else the first
// entry for id whose parent is the caller or one of its node aliases.
// Anything else is a 403.
func (p *Plugin) grant(ctx context.Context, caller plugin.Caller, id spiffeid.ID) (store.Entry, error) {
	if caller.Admin || caller.SPIFFEID == "" {
		return store.Entry{}, plugin.Errorf(http.StatusForbidden, "SVIDs are issued to attested callers only")
	}
	if !id.MemberOf(p.td) {
		return store.Entry{}, plugin.Errorf(http.StatusForbidden, "%s is not in trust domain %s", id, p.td)
	}
	if id.String() == caller.SPIFFEID {
		return store.Entry{}, nil
	}
	entries, err := p.entries.get(ctx, p.store.Entries(), id.String(), p.now())
	if err != nil {
		return store.Entry{}, err
	}
	parents := map[string]bool{caller.SPIFFEID: true}
	for _, a := range caller.Aliases {
		parents[a] = true
	}
	// Entries come ordered by ID, so replicas pick the same one.
	for _, e := range entries {
		if parents[e.ParentID] {
			return e, nil
		}
	}
	return store.Entry{}, plugin.Errorf(http.StatusForbidden,
		"%s may not hold %s: no registration entry for it has the caller or one of its node aliases as parent", caller.SPIFFEID, id)
}

// ttlOf picks the entry's TTL, else the default, capped at the maximum.
func ttlOf(entry, def, most time.Duration) time.Duration {
	d := def
	if entry > 0 {
		d = entry
	}
	return min(d, most)
}

func (p *Plugin) issueX509(ctx context.Context, req *plugin.Request) (*plugin.Response, error) {
	csr, err := ParseCSR(req.Body)
	if err != nil {
		return nil, err
	}
	id, err := p.x509Target(req.Query, csr)
	if err != nil {
		return nil, err
	}
	entry, err := p.grant(ctx, req.Caller, id)
	if err != nil {
		return nil, err
	}
	now := p.now()
	ca, err := p.currentIntermediate(ctx, now)
	if err != nil {
		return nil, err
	}
	leaf, err := p.signLeaf(csr, id, entry, ca, now)
	if err != nil {
		return nil, err
	}
	out := X509Response{SPIFFEID: id.String(), ExpiresAt: leaf.NotAfter.Unix(), SVID: []string{
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})),
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})),
	}}
	return jsonResponse(out)
}

// signLeaf makes the X.509-SVID: one URI SAN, not a CA, digitalSignature,
// for TLS clients and servers, never outliving its intermediate.
func (p *Plugin) signLeaf(csr *x509.CertificateRequest, id spiffeid.ID, entry store.Entry, ca authority, now time.Time) (*x509.Certificate, error) {
	serial, err := serialNumber()
	if err != nil {
		return nil, fmt.Errorf("svid: %w", err)
	}
	notAfter := now.Add(ttlOf(entry.X509SVIDTTL, p.cfg.X509SVIDTTL.Duration, p.cfg.MaxX509SVIDTTL.Duration))
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	usage := x509.KeyUsageDigitalSignature
	if _, isRSA := csr.PublicKey.(*rsa.PublicKey); isRSA {
		usage |= x509.KeyUsageKeyEncipherment
	}
	subject := pkix.Name{Organization: []string{"trustgate"}}
	if len(entry.DNSNames) > 0 {
		subject.CommonName = entry.DNSNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              entry.DNSNames,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("svid: sign X.509-SVID for %s with intermediate %s: %w", id, ca.id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("svid: parse issued SVID: %w", err)
	}
	return leaf, nil
}

// ParseJWTRequest reads a JWT-SVID request from the query (spiffe_id, and
// audience once per value) or from a JSON body (JWTRequest), not both. The
// query form lets the broker's policy see what is asked for. Errors are
// *plugin.Error with status 400.
func ParseJWTRequest(q url.Values, body []byte) (spiffeid.ID, []string, error) {
	var r JWTRequest
	inQuery := q.Has("spiffe_id") || q.Has("audience")
	switch {
	case len(bytes.TrimSpace(body)) > 0 && inQuery:
		return spiffeid.ID{}, nil, badRequest("give spiffe_id and audience in the query or in the body, not both")
	case inQuery:
		if len(q["spiffe_id"]) != 1 {
			return spiffeid.ID{}, nil, badRequest("spiffe_id is given %d times, want once", len(q["spiffe_id"]))
		}
		r.SPIFFEID, r.Audience = q.Get("spiffe_id"), q["audience"]
	default:
		if len(body) > MaxJWTRequestSize {
			return spiffeid.ID{}, nil, badRequest("request is %d bytes, more than %d", len(body), MaxJWTRequestSize)
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			return spiffeid.ID{}, nil, badRequest("request body: want {\"spiffe_id\": ..., \"audience\": [...]}: %v", err)
		}
		if dec.More() {
			return spiffeid.ID{}, nil, badRequest("request body: trailing data after the JSON object")
		}
	}
	id, err := spiffeid.FromString(r.SPIFFEID)
	if err != nil {
		return spiffeid.ID{}, nil, badRequest("spiffe_id %q: %v", r.SPIFFEID, err)
	}
	if len(r.Audience) == 0 || len(r.Audience) > MaxAudiences {
		return spiffeid.ID{}, nil, badRequest("audience has %d values: want 1 to %d", len(r.Audience), MaxAudiences)
	}
	for _, a := range r.Audience {
		if a == "" || len(a) > maxAudienceLen {
			return spiffeid.ID{}, nil, badRequest("audience %q: want 1 to %d bytes", a, maxAudienceLen)
		}
	}
	return id, r.Audience, nil
}

func (p *Plugin) issueJWT(ctx context.Context, req *plugin.Request) (*plugin.Response, error) {
	id, aud, err := ParseJWTRequest(req.Query, req.Body)
	if err != nil {
		return nil, err
	}
	entry, err := p.grant(ctx, req.Caller, id)
	if err != nil {
		return nil, err
	}
	tok, exp, err := p.SignJWT(ctx, id, aud, entry.JWTSVIDTTL)
	if err != nil {
		return nil, err
	}
	return jsonResponse(JWTResponse{Token: tok, SPIFFEID: id.String(), ExpiresAt: exp.Unix()})
}

func jsonResponse(v any) (*plugin.Response, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("svid: encode answer: %w", err)
	}
	return &plugin.Response{ContentType: "application/json", Body: body}, nil
}
