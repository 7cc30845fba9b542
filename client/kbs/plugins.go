package kbs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// NebulaRequest asks the nebula-ca plugin for a node certificate
// (docs/plugin-nebula-ca.md).
type NebulaRequest struct {
	// Name is the certificate name (required).
	Name string
	// IPs are the overlay addresses, "addr/bits" or bare (required).
	IPs []string
	// Groups and Subnets are optional.
	Groups, Subnets []string
	// Duration is the lifetime; zero means the broker's default.
	Duration time.Duration
	// Version is the certificate format, 1 or 2; zero means the default.
	Version int
}

func (r NebulaRequest) query() (url.Values, error) {
	if r.Name == "" || len(r.IPs) == 0 {
		return nil, errors.New("kbs: nebula request needs a name and at least one ip")
	}
	q := url.Values{"name": {r.Name}, "ip": {strings.Join(r.IPs, ",")}}
	if len(r.Groups) > 0 {
		q.Set("groups", strings.Join(r.Groups, ","))
	}
	if len(r.Subnets) > 0 {
		q.Set("subnets", strings.Join(r.Subnets, ","))
	}
	if r.Duration != 0 {
		q.Set("duration", r.Duration.String())
	}
	if r.Version != 0 {
		q.Set("version", strconv.Itoa(r.Version))
	}
	return q, nil
}

// NebulaCredential is a nebula-ca answer: PEM files as nebula reads them.
type NebulaCredential struct {
	// NodeCrt is the node certificate (host.crt).
	NodeCrt []byte
	// NodeKey is the node's private key (host.key); empty when the node
	// sent its own public key.
	NodeKey []byte
	// CACrt holds every CA the node should trust (ca.crt).
	CACrt []byte
}

// byteArray decodes the plugin's JSON arrays of byte values (serde's
// Vec<u8>, Trustee's encoding).
type byteArray []byte

func (b *byteArray) UnmarshalJSON(d []byte) error {
	var v []uint8
	if err := json.Unmarshal(d, &v); err != nil {
		return err
	}
	*b = v
	return nil
}

// parseNebula decodes a nebula-ca answer.
func parseNebula(b []byte) (NebulaCredential, error) {
	var raw struct {
		NodeCrt *byteArray `json:"node_crt"`
		NodeKey *byteArray `json:"node_key"`
		CACrt   *byteArray `json:"ca_crt"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return NebulaCredential{}, fmt.Errorf("kbs: nebula-ca answer: %w", err)
	}
	var c NebulaCredential
	if raw.CACrt == nil || len(*raw.CACrt) == 0 {
		return c, errors.New("kbs: nebula-ca answer has no ca_crt")
	}
	c.CACrt = *raw.CACrt
	if raw.NodeCrt != nil {
		c.NodeCrt = *raw.NodeCrt
	}
	if raw.NodeKey != nil {
		c.NodeKey = *raw.NodeKey
	}
	return c, nil
}

// NebulaCredential asks the broker to make a node key pair and certificate
// (GET /kbs/v0/nebula-ca/credential; the answer is encrypted to the TEE
// key).
func (c *Client) NebulaCredential(ctx context.Context, r NebulaRequest) (NebulaCredential, error) {
	q, err := r.query()
	if err != nil {
		return NebulaCredential{}, err
	}
	resp, err := c.Do(ctx, Request{Plugin: "nebula-ca", Path: "credential", Query: q, Decrypt: true})
	if err != nil {
		return NebulaCredential{}, err
	}
	cred, err := parseNebula(resp.Body)
	if err == nil && (len(cred.NodeCrt) == 0 || len(cred.NodeKey) == 0) {
		err = errors.New("kbs: nebula-ca answer lacks node_crt or node_key")
	}
	return cred, err
}

// NebulaSign has the broker certify the node's own public key (PEM, as
// nebula-cert keygen writes it): POST /kbs/v0/nebula-ca/credential. The
// private key never leaves the node; NodeKey of the answer is empty.
func (c *Client) NebulaSign(ctx context.Context, r NebulaRequest, publicKeyPEM []byte) (NebulaCredential, error) {
	q, err := r.query()
	if err != nil {
		return NebulaCredential{}, err
	}
	body, err := json.Marshal(map[string]string{"public_key": string(publicKeyPEM)})
	if err != nil {
		return NebulaCredential{}, fmt.Errorf("kbs: nebula request: %w", err)
	}
	resp, err := c.Do(ctx, Request{Method: http.MethodPost, Plugin: "nebula-ca", Path: "credential", Query: q, Body: body, ContentType: "application/json"})
	if err != nil {
		return NebulaCredential{}, err
	}
	cred, err := parseNebula(resp.Body)
	if err == nil && len(cred.NodeCrt) == 0 {
		err = errors.New("kbs: nebula-ca answer lacks node_crt")
	}
	return cred, err
}

// NebulaCA returns the CAs the node should trust now (GET
// /kbs/v0/nebula-ca/ca, public and not encrypted), PEM.
func (c *Client) NebulaCA(ctx context.Context) ([]byte, error) {
	resp, err := c.Do(ctx, Request{Plugin: "nebula-ca", Path: "ca"})
	if err != nil {
		return nil, err
	}
	cred, err := parseNebula(resp.Body)
	return cred.CACrt, err
}

// X509SVID is an X.509-SVID from the svid plugin.
type X509SVID struct {
	// SPIFFEID is the identity the SVID carries.
	SPIFFEID string `json:"spiffe_id"`
	// Chain is the leaf then the intermediate, PEM each.
	Chain []string `json:"svid"`
	// ExpiresAt is the leaf's NotAfter, Unix seconds.
	ExpiresAt int64 `json:"expires_at"`
}

// X509SVID sends a PKCS#10 CSR (DER or PEM) to POST /kbs/v0/svid/x509 and
// returns the SVID. spiffeID may be empty when the CSR names the ID.
func (c *Client) X509SVID(ctx context.Context, csr []byte, spiffeID string) (X509SVID, error) {
	var q url.Values
	if spiffeID != "" {
		q = url.Values{"spiffe_id": {spiffeID}}
	}
	resp, err := c.Do(ctx, Request{Method: http.MethodPost, Plugin: "svid", Path: "x509", Query: q, Body: csr, ContentType: "application/pkcs10", Decrypt: true})
	if err != nil {
		return X509SVID{}, err
	}
	return parseX509SVID(resp.Body)
}

// parseX509SVID decodes an svid x509 answer.
func parseX509SVID(b []byte) (X509SVID, error) {
	var out X509SVID
	if err := json.Unmarshal(b, &out); err != nil {
		return X509SVID{}, fmt.Errorf("kbs: svid x509 answer: %w", err)
	}
	if len(out.Chain) == 0 || out.SPIFFEID == "" {
		return X509SVID{}, errors.New("kbs: svid x509 answer holds no certificate or no SPIFFE ID")
	}
	return out, nil
}

// JWTSVID is a JWT-SVID from the svid plugin.
type JWTSVID struct {
	// Token is the JWT-SVID.
	Token string `json:"token"`
	// SPIFFEID is its subject.
	SPIFFEID string `json:"spiffe_id"`
	// ExpiresAt is its "exp", Unix seconds.
	ExpiresAt int64 `json:"expires_at"`
}

// JWTSVID asks POST /kbs/v0/svid/jwt for a JWT-SVID for spiffeID and the
// audience.
func (c *Client) JWTSVID(ctx context.Context, spiffeID string, audience []string) (JWTSVID, error) {
	body, err := json.Marshal(map[string]any{"spiffe_id": spiffeID, "audience": audience})
	if err != nil {
		return JWTSVID{}, fmt.Errorf("kbs: svid jwt request: %w", err)
	}
	resp, err := c.Do(ctx, Request{Method: http.MethodPost, Plugin: "svid", Path: "jwt", Body: body, ContentType: "application/json", Decrypt: true})
	if err != nil {
		return JWTSVID{}, err
	}
	return parseJWTSVID(resp.Body)
}

// parseJWTSVID decodes an svid jwt answer.
func parseJWTSVID(b []byte) (JWTSVID, error) {
	var out JWTSVID
	if err := json.Unmarshal(b, &out); err != nil {
		return JWTSVID{}, fmt.Errorf("kbs: svid jwt answer: %w", err)
	}
	if out.Token == "" {
		return JWTSVID{}, errors.New("kbs: svid jwt answer holds no token")
	}
	return out, nil
}

// SVIDBundle returns the trust bundle (GET /kbs/v0/svid/bundle) in SPIFFE
// bundle format; parse it with go-spiffe's spiffebundle.Parse.
func (c *Client) SVIDBundle(ctx context.Context) ([]byte, error) {
	resp, err := c.Do(ctx, Request{Plugin: "svid", Path: "bundle"})
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}
