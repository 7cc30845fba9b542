package agentapi

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/agentapi/wire"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/store"
)

// Body limits: a CSR is at most svid.MaxCSRSize, 4/3 larger in base64.
const (
	maxSVIDBody = 2*svid.MaxCSRSize + 1024
	maxX509Body = wire.MaxX509Requests * (2*svid.MaxCSRSize + 256)
	maxJWTBody  = 64 << 10
	// maxAudienceLen bounds one audience value.
	maxAudienceLen = 512
)

// sampleTEE is the development attestor whose tokens all carry one SPIFFE
// ID (spiffe://<td>/tee/sample); see agentID.
const sampleTEE = "sample"

// agentID is the agent ID an attestation proves: the token's SPIFFE ID
// when it is an agent ID (the join_token, x509pop and k8s_psat attestors
// make them), or, for the development "sample" TEE only,
// spiffe://<td>/spire/agent/sample/<svn>, from its sample:svn selector.
// Every other attestation is no node attestation: 403.
func (a *API) agentID(att Attestation) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(att.SPIFFEID)
	if err != nil {
		return spiffeid.ID{}, problem(http.StatusForbidden, "attestation token: spiffe_id %q: %v", att.SPIFFEID, err)
	}
	if a.isAgentID(id) {
		return id, nil
	}
	if att.TEE == sampleTEE {
		for _, s := range att.Selectors {
			if svn, ok := strings.CutPrefix(s, "sample:svn:"); ok {
				if sid, err := spiffeid.FromSegments(a.td, "spire", "agent", sampleTEE, svn); err == nil {
					return sid, nil
				}
			}
		}
	}
	return spiffeid.ID{}, problem(http.StatusForbidden, "%s (attested by %q) is not an agent ID: attest with a node attestor (join_token, x509pop, k8s_psat)", id, att.TEE)
}

func selectorsOf(list []string) []store.Selector {
	out := make([]store.Selector, 0, len(list))
	for _, s := range list {
		if t, v, ok := strings.Cut(s, ":"); ok {
			out = append(out, store.Selector{Type: t, Value: v})
		}
	}
	return out
}

func ders(chain []*x509.Certificate) [][]byte {
	out := make([][]byte, len(chain))
	for i, c := range chain {
		out[i] = c.Raw
	}
	return out
}

// serveSVID answers POST /agent/v1/svid: the agent's first SVID, with an
// attestation token, or its renewal, over mTLS with the current one.
func (a *API) serveSVID(w http.ResponseWriter, r *http.Request) {
	var req wire.SVIDRequest
	if err := readJSON(r, maxSVIDBody, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	csr, err := parseCSR(req.CSR)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ctx := r.Context()
	if raw, ok := bearer(r); ok {
		a.serveFirstSVID(w, r, csr, raw)
		return
	}
	ag, leaf, err := a.authAgent(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	id := spiffeid.RequireFromString(ag.SPIFFEID)
	chain, err := a.svid.SignX509(ctx, csr, id, 0, nil)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	err = a.store.Agents().Renew(ctx, ag.SPIFFEID, leaf.SerialNumber.String(), chain[0].SerialNumber.String(), chain[0].NotAfter, a.now())
	switch {
	case errors.Is(err, store.ErrEvicted):
		a.fail(w, r, problem(http.StatusForbidden, "agent %s is evicted", id))
		return
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
		a.fail(w, r, problem(http.StatusForbidden, "agent %s: this SVID was replaced meanwhile", id))
		return
	case err != nil:
		a.fail(w, r, fmt.Errorf("renew agent %s: %w", id, err))
		return
	}
	writeJSON(w, wire.SVIDResponse{SPIFFEID: id.String(), Chain: ders(chain), ExpiresAt: chain[0].NotAfter.Unix()})
}

// serveFirstSVID answers POST /agent/v1/svid with an attestation token
// (raw): the agent's first SVID, for csr's key.
func (a *API) serveFirstSVID(w http.ResponseWriter, r *http.Request, csr *x509.CertificateRequest, raw string) {
	ctx := r.Context()
	att, err := a.opts.VerifyAttestation(raw)
	if err != nil {
		a.fail(w, r, problem(http.StatusUnauthorized, "attestation token: %v", err))
		return
	}
	id, err := a.agentID(att)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// The token is spent on one key and answered once: a replay (a
	// token read from a log, say) with another key gets nothing, and
	// the same request again, the agent retrying after a lost answer,
	// gets the same SVID without changing the agent's record.
	if att.TokenID == "" {
		a.fail(w, r, problem(http.StatusUnauthorized, "attestation token has no jti"))
		return
	}
	answer, err := a.store.Agents().SpendToken(ctx, att.TokenID, keyDigest(csr), att.ExpiresAt)
	if errors.Is(err, store.ErrConsumed) {
		a.log.Warn("attestation token replayed with another key", "spiffe_id", id.String(), "peer", r.RemoteAddr)
		a.fail(w, r, problem(http.StatusUnauthorized, "attestation token was already spent on another key: attest again"))
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("spend attestation token: %w", err))
		return
	}
	if cur, err := a.store.Agents().Get(ctx, id.String()); err == nil && cur.Evicted {
		a.fail(w, r, problem(http.StatusForbidden, "agent %s is evicted", id))
		return
	}
	if answer != nil {
		writeJSON(w, json.RawMessage(answer))
		return
	}
	chain, err := a.svid.SignX509(ctx, csr, id, 0, nil)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	now := a.now()
	_, err = a.store.Agents().Attest(ctx, store.Agent{SPIFFEID: id.String(), Attestor: att.TEE, Selectors: selectorsOf(att.Selectors),
		SerialNumber: chain[0].SerialNumber.String(), ExpiresAt: chain[0].NotAfter, CreatedAt: now, UpdatedAt: now})
	if errors.Is(err, store.ErrEvicted) {
		a.fail(w, r, problem(http.StatusForbidden, "agent %s is evicted", id))
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("record agent %s: %w", id, err))
		return
	}
	out, err := json.Marshal(wire.SVIDResponse{SPIFFEID: id.String(), Chain: ders(chain), ExpiresAt: chain[0].NotAfter.Unix()})
	if err != nil {
		a.fail(w, r, fmt.Errorf("encode the agent SVID: %w", err))
		return
	}
	if err := a.store.Agents().TokenAnswered(ctx, att.TokenID, out); err != nil {
		a.fail(w, r, fmt.Errorf("record the answer to token of %s: %w", id, err))
		return
	}
	a.log.Info("agent attested", "spiffe_id", id.String(), "attestor", att.TEE, "serial", chain[0].SerialNumber.String())
	writeJSON(w, json.RawMessage(out))
}

// bearer returns the Authorization: Bearer credential, if any.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "bearer ") {
		return "", false
	}
	tok := strings.TrimSpace(h[7:])
	return tok, tok != ""
}

// parseCSR parses a DER CSR as the svid plugin does (signature, key type,
// at most one URI), with a problem for a bad one.
func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, problem(http.StatusBadRequest, "csr is missing")
	}
	csr, err := svid.ParseCSR(der)
	if err != nil {
		return nil, problem(http.StatusBadRequest, "%v", err)
	}
	return csr, nil
}

// keyDigest names a CSR's public key: the SHA-256 of its
// SubjectPublicKeyInfo, hex.
func keyDigest(csr *x509.CertificateRequest) string {
	sum := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// checkCSRID refuses a CSR whose URI SAN names another ID than the entry.
func checkCSRID(csr *x509.CertificateRequest, entryID string) error {
	if len(csr.URIs) == 1 && csr.URIs[0].String() != entryID {
		return fmt.Errorf("CSR URI SAN %s is not the entry's SPIFFE ID %s", csr.URIs[0], entryID)
	}
	return nil
}

// serveX509 answers POST /agent/v1/x509: one X.509-SVID per CSR, for
// entries the agent is authorized for, results in request order.
func (a *API) serveX509(w http.ResponseWriter, r *http.Request) {
	ag, _, err := a.authAgent(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req wire.X509Request
	if err := readJSON(r, maxX509Body, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if n := len(req.Requests); n == 0 || n > wire.MaxX509Requests {
		a.fail(w, r, problem(http.StatusBadRequest, "%d requests: want 1 to %d", n, wire.MaxX509Requests))
		return
	}
	ctx := r.Context()
	list, err := a.authorized(ctx, ag)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	byID := make(map[string]store.Entry, len(list))
	for _, e := range list {
		byID[e.ID] = e
	}
	out := wire.X509Response{Results: make([]wire.X509Result, len(req.Requests))}
	for i, q := range req.Requests {
		res := &out.Results[i]
		res.EntryID = q.EntryID
		e, ok := byID[q.EntryID]
		if !ok {
			res.Error = fmt.Sprintf("entry %q is not authorized for agent %s", q.EntryID, ag.SPIFFEID)
			continue
		}
		csr, err := parseCSR(q.CSR)
		if err != nil {
			res.Error = err.Error()
			continue
		}
		if err := checkCSRID(csr, e.SPIFFEID); err != nil {
			res.Error = err.Error()
			continue
		}
		id, err := spiffeid.FromString(e.SPIFFEID)
		if err != nil {
			res.Error = fmt.Sprintf("entry %s: %v", e.ID, err)
			continue
		}
		chain, err := a.svid.SignX509(ctx, csr, id, e.X509SVIDTTL, e.DNSNames)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		res.Chain, res.ExpiresAt = ders(chain), chain[0].NotAfter.Unix()
	}
	writeJSON(w, out)
}

// serveJWT answers POST /agent/v1/jwt: a JWT-SVID for an authorized entry.
func (a *API) serveJWT(w http.ResponseWriter, r *http.Request) {
	ag, _, err := a.authAgent(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req wire.JWTRequest
	if err := readJSON(r, maxJWTBody, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if n := len(req.Audience); n == 0 || n > wire.MaxAudiences {
		a.fail(w, r, problem(http.StatusBadRequest, "audience has %d values: want 1 to %d", n, wire.MaxAudiences))
		return
	}
	for _, aud := range req.Audience {
		if aud == "" || len(aud) > maxAudienceLen {
			a.fail(w, r, problem(http.StatusBadRequest, "audience %.40q: want 1 to %d bytes", aud, maxAudienceLen))
			return
		}
	}
	ctx := r.Context()
	list, err := a.authorized(ctx, ag)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	for _, e := range list {
		if e.ID != req.EntryID {
			continue
		}
		id, err := spiffeid.FromString(e.SPIFFEID)
		if err != nil {
			a.fail(w, r, fmt.Errorf("entry %s: %w", e.ID, err))
			return
		}
		tok, exp, err := a.svid.SignJWT(ctx, id, req.Audience, e.JWTSVIDTTL)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		writeJSON(w, wire.JWTResponse{Token: tok, ExpiresAt: exp.Unix()})
		return
	}
	a.fail(w, r, problem(http.StatusForbidden, "entry %q is not authorized for agent %s", req.EntryID, ag.SPIFFEID))
}

// serveBundle answers GET /agent/v1/bundle.
func (a *API) serveBundle(w http.ResponseWriter, r *http.Request) {
	if _, _, err := a.authAgent(r); err != nil {
		a.fail(w, r, err)
		return
	}
	c := a.svid.Contents()
	out := wire.Bundle{TrustDomain: c.TrustDomain.Name(), X509Authorities: ders(c.X509Authorities),
		JWTAuthorities: make(map[string][]byte, len(c.JWTAuthorities)), RefreshHintSeconds: int64(c.RefreshHint / time.Second), Sequence: c.Sequence}
	for kid, k := range c.JWTAuthorities {
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			a.fail(w, r, fmt.Errorf("bundle: JWT key %s: %w", kid, err))
			return
		}
		out.JWTAuthorities[kid] = der
	}
	writeJSON(w, out)
}
