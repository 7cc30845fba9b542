// Package brokerclient is the node agent's client of the broker's agent API
// (agentapi/wire): the agent's own SVID, the authorized entries with long
// poll, the trust bundle, and workload SVIDs. Client implements cache.Issuer.
package brokerclient

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/agent/cache"
	"github.com/trustgate/trustgate/agentapi/wire"
	"github.com/trustgate/trustgate/client/kbs"
)

// maxBody bounds an answer read from the broker (1,000 entries with long
// selectors, or a batch of 500 chains, fit well within it).
const maxBody = 64 << 20

// requestMargin is added to a long poll's wait for the HTTP deadline: the
// broker holds the request up to wait and writes within 10 s more.
const requestMargin = 15 * time.Second

// Client calls the broker's agent API over an HTTP client that presents the
// agent's SVID (mTLS). It is safe for concurrent use.
type Client struct {
	base    string
	hc      *http.Client
	timeout time.Duration
}

// New returns a client of the broker at baseURL; hc must present the agent's
// SVID (tlsclient.Options.SVID) and have no overall Timeout (each call sets
// its own deadline).
func New(baseURL string, hc *http.Client) *Client {
	return &Client{base: strings.TrimSuffix(baseURL, "/"), hc: hc, timeout: 30 * time.Second}
}

// StatusError is a non-2xx answer of the broker.
type StatusError struct {
	Status int
	Detail string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("broker answered %d: %s", e.Status, e.Detail)
}

// IsDenied says whether err is the broker refusing the agent (401 or 403):
// the agent is evicted, unknown, or its SVID is no longer accepted.
func IsDenied(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && (se.Status == http.StatusForbidden || se.Status == http.StatusUnauthorized)
}

// do sends one JSON request and decodes the answer into out.
func (c *Client) do(ctx context.Context, hc *http.Client, method, path, bearer string, in, out any, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		detail := kbs.ParseError(resp.StatusCode, resp.Header, b).Detail
		return fmt.Errorf("%s %s: %w", method, path, &StatusError{Status: resp.StatusCode, Detail: detail})
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// AgentSVID is the agent's own X.509-SVID as the broker issued it.
type AgentSVID struct {
	ID    spiffeid.ID
	Chain []*x509.Certificate
}

// NewSVID asks for the agent's SVID for csr. With a bearer (the attestation
// token) it goes through hc, a client that need not present a certificate;
// without, through the client's own mTLS client (renewal).
func (c *Client) NewSVID(ctx context.Context, hc *http.Client, bearer string, csr []byte) (AgentSVID, error) {
	if hc == nil {
		hc = c.hc
	}
	var out wire.SVIDResponse
	if err := c.do(ctx, hc, http.MethodPost, wire.PathSVID, bearer, wire.SVIDRequest{CSR: csr}, &out, c.timeout); err != nil {
		return AgentSVID{}, err
	}
	id, err := spiffeid.FromString(out.SPIFFEID)
	if err != nil {
		return AgentSVID{}, fmt.Errorf("agent SVID: spiffe_id: %w", err)
	}
	chain, err := parseChain(out.Chain)
	if err != nil {
		return AgentSVID{}, fmt.Errorf("agent SVID: %w", err)
	}
	return AgentSVID{ID: id, Chain: chain}, nil
}

func parseChain(ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, errors.New("empty chain")
	}
	chain := make([]*x509.Certificate, 0, len(ders))
	for i, d := range ders {
		cert, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("chain[%d]: %w", i, err)
		}
		chain = append(chain, cert)
	}
	return chain, nil
}

// Entries returns the authorized entries. With revision >= 0 and wait > 0 the
// broker holds the request until they change or wait passes.
func (c *Client) Entries(ctx context.Context, revision int64, wait time.Duration) (int64, []cache.Entry, error) {
	q := url.Values{}
	if revision >= 0 {
		q.Set(wire.QueryRevision, strconv.FormatInt(revision, 10))
	}
	if wait > 0 {
		q.Set(wire.QueryWait, wait.String())
	}
	path := wire.PathEntries
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out wire.Entries
	if err := c.do(ctx, c.hc, http.MethodGet, path, "", nil, &out, wait+requestMargin); err != nil {
		return 0, nil, err
	}
	entries := make([]cache.Entry, 0, len(out.Entries))
	for _, e := range out.Entries {
		ce := cache.Entry{ID: e.ID, SPIFFEID: e.SPIFFEID, ParentID: e.ParentID,
			X509SVIDTTL: time.Duration(e.X509SVIDTTL) * time.Second, JWTSVIDTTL: time.Duration(e.JWTSVIDTTL) * time.Second,
			DNSNames: e.DNSNames}
		if e.CreatedAt != 0 {
			ce.CreatedAt = time.Unix(e.CreatedAt, 0)
		}
		for _, s := range e.Selectors {
			ce.Selectors = append(ce.Selectors, cache.Selector{Type: s.Type, Value: s.Value})
		}
		entries = append(entries, ce)
	}
	return out.Revision, entries, nil
}

// Bundle returns the trust domain's bundle and its refresh hint.
func (c *Client) Bundle(ctx context.Context) (*spiffebundle.Bundle, time.Duration, error) {
	var out wire.Bundle
	if err := c.do(ctx, c.hc, http.MethodGet, wire.PathBundle, "", nil, &out, c.timeout); err != nil {
		return nil, 0, err
	}
	b, err := ParseBundle(out)
	if err != nil {
		return nil, 0, err
	}
	return b, time.Duration(out.RefreshHintSeconds) * time.Second, nil
}

// ParseBundle converts the broker's bundle into go-spiffe's.
func ParseBundle(w wire.Bundle) (*spiffebundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(w.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("bundle: trust_domain: %w", err)
	}
	b := spiffebundle.New(td)
	if len(w.X509Authorities) == 0 {
		return nil, errors.New("bundle: no X.509 authority")
	}
	for i, d := range w.X509Authorities {
		cert, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("bundle: x509_authorities[%d]: %w", i, err)
		}
		b.AddX509Authority(cert)
	}
	for kid, d := range w.JWTAuthorities {
		pub, err := x509.ParsePKIXPublicKey(d)
		if err != nil {
			return nil, fmt.Errorf("bundle: jwt_authorities[%q]: %w", kid, err)
		}
		if err := b.AddJWTAuthority(kid, pub.(crypto.PublicKey)); err != nil {
			return nil, fmt.Errorf("bundle: jwt_authorities[%q]: %w", kid, err)
		}
	}
	if w.RefreshHintSeconds > 0 {
		b.SetRefreshHint(time.Duration(w.RefreshHintSeconds) * time.Second)
	}
	b.SetSequenceNumber(w.Sequence)
	return b, nil
}

// SignX509SVIDs implements cache.Issuer with one POST of the batch.
func (c *Client) SignX509SVIDs(ctx context.Context, reqs []cache.X509Request) ([]cache.X509Result, error) {
	in := wire.X509Request{Requests: make([]wire.X509CSR, len(reqs))}
	for i, r := range reqs {
		in.Requests[i] = wire.X509CSR{EntryID: r.EntryID, CSR: r.CSR}
	}
	var out wire.X509Response
	if err := c.do(ctx, c.hc, http.MethodPost, wire.PathX509, "", in, &out, c.timeout); err != nil {
		return nil, err
	}
	res := make([]cache.X509Result, 0, len(out.Results))
	for _, r := range out.Results {
		cr := cache.X509Result{EntryID: r.EntryID}
		if r.Error != "" {
			cr.Err = errors.New(r.Error)
		} else if cr.Chain, cr.Err = parseChain(r.Chain); cr.Err != nil {
			cr.Err = fmt.Errorf("entry %s: %w", r.EntryID, cr.Err)
		}
		res = append(res, cr)
	}
	return res, nil
}

// MintJWTSVID implements cache.Issuer.
func (c *Client) MintJWTSVID(ctx context.Context, entryID string, _ spiffeid.ID, audience []string) (string, error) {
	var out wire.JWTResponse
	if err := c.do(ctx, c.hc, http.MethodPost, wire.PathJWT, "", wire.JWTRequest{EntryID: entryID, Audience: audience}, &out, c.timeout); err != nil {
		return "", err
	}
	return out.Token, nil
}

var _ cache.Issuer = (*Client)(nil)
