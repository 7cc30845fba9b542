package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/attest/reportdata"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/token"
)

// ProtocolVersion is the KBS protocol version the broker speaks.
const ProtocolVersion = "0.4.0"

// SessionCookie is the RCAR session cookie's name.
const SessionCookie = "kbs-session-id"

// Extra-params keys, Trustee's (kbs/src/attestation/mod.rs).
const (
	extraSupportedHashes = "supported-hash-algorithms"
	extraSelectedHash    = "selected-hash-algorithm"
)

// hashPreference is the order the broker picks report-data hashes in;
// sha384 first, Trustee's default (kbs/src/attestation/coco/builtin.rs).
var hashPreference = []string{"sha384", "sha512", "sha256"}

const (
	maxAuthBody   = 64 << 10
	maxAttestBody = 1 << 20
	nonceBytes    = 32
)

// authRequest is KBS protocol's Request.
type authRequest struct {
	Version     *string         `json:"version"`
	TEE         *string         `json:"tee"`
	ExtraParams json.RawMessage `json:"extra-params"`
}

// challenge is KBS protocol's Challenge.
type challenge struct {
	Nonce       string            `json:"nonce"`
	ExtraParams map[string]string `json:"extra-params"`
}

// attestation is KBS protocol's Attestation.
type attestation struct {
	InitData    json.RawMessage `json:"init-data"`
	RuntimeData *struct {
		Nonce     *string         `json:"nonce"`
		TEEPubKey json.RawMessage `json:"tee-pubkey"`
	} `json:"runtime-data"`
	TEEEvidence *struct {
		PrimaryEvidence    json.RawMessage `json:"primary_evidence"`
		AdditionalEvidence *string         `json:"additional_evidence"`
	} `json:"tee-evidence"`
}

// rcarError is a caller's RCAR failure, answered 401 like Trustee.
type rcarError struct {
	typ    string
	detail string
}

func (e *rcarError) Error() string { return e.detail }

func rejectf(format string, args ...any) error {
	return &rcarError{typ: ProblemAttestation, detail: fmt.Sprintf(format, args...)}
}

func readJSON(r *http.Request, limit int64, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &rcarError{typ: ProblemSerde, detail: fmt.Sprintf("request body exceeds %d bytes", limit)}
		}
		return &rcarError{typ: ProblemSerde, detail: fmt.Sprintf("read request body: %v", err)}
	}
	if err := json.Unmarshal(body, v); err != nil {
		return &rcarError{typ: ProblemSerde, detail: fmt.Sprintf("request body is not the expected JSON: %v", err)}
	}
	return nil
}

// parseAuth validates an auth request body and returns the TEE and the
// selected hash algorithm.
func (s *Server) parseAuth(req *authRequest) (tee, hashAlg string, err error) {
	switch {
	case req.Version == nil:
		return "", "", rejectf("request has no \"version\": this server speaks KBS protocol %s", ProtocolVersion)
	case *req.Version != ProtocolVersion:
		return "", "", rejectf("KBS Client Protocol Version Mismatch: expect =%s while the request is %.40q", ProtocolVersion, *req.Version)
	case req.TEE == nil:
		return "", "", rejectf("request has no \"tee\"")
	}
	tee = *req.TEE
	if _, ok := s.attestors[tee]; !ok {
		return "", "", rejectf("tee %.40q is not enabled here; enabled: %s", tee, strings.Join(s.attestorNames, ", "))
	}
	hashAlg = hashPreference[0]
	// extra-params is "" or absent in most clients, else an object.
	ep := bytes.TrimSpace(req.ExtraParams)
	if len(ep) == 0 || string(ep) == "null" || string(ep) == `""` {
		return tee, hashAlg, nil
	}
	var params struct {
		Supported []string `json:"supported-hash-algorithms"`
		Metadata  *struct {
			Primary *struct {
				TEE string `json:"tee"`
			} `json:"primary_tee"`
		} `json:"tee-metadata"`
	}
	if err := json.Unmarshal(ep, &params); err != nil {
		return "", "", &rcarError{typ: ProblemSerde, detail: fmt.Sprintf("extra-params: want \"\" or an object: %v", err)}
	}
	if m := params.Metadata; m != nil && m.Primary != nil && m.Primary.TEE != tee {
		return "", "", rejectf("extra-params.tee-metadata.primary_tee.tee %.40q differs from tee %q", m.Primary.TEE, tee)
	}
	if params.Supported != nil {
		i := slices.IndexFunc(hashPreference, func(h string) bool { return slices.Contains(params.Supported, h) })
		if i < 0 {
			return "", "", rejectf("none of the %s is supported here; this server offers %s", extraSupportedHashes, strings.Join(hashPreference, ", "))
		}
		hashAlg = hashPreference[i]
	}
	return tee, hashAlg, nil
}

func (s *Server) auth(w http.ResponseWriter, r *http.Request) {
	var req authRequest
	if err := readJSON(r, maxAuthBody, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	tee, hashAlg, err := s.parseAuth(&req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var raw [16 + nonceBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		s.fail(w, r, fmt.Errorf("session id: %w", err))
		return
	}
	ch := challenge{Nonce: base64.StdEncoding.EncodeToString(raw[16:]), ExtraParams: map[string]string{extraSelectedHash: hashAlg}}
	extra, err := json.Marshal(ch.ExtraParams)
	if err != nil {
		s.fail(w, r, fmt.Errorf("encode extra-params: %w", err))
		return
	}
	now := s.now()
	sess := store.Session{ID: hex.EncodeToString(raw[:16]), TEE: tee, Nonce: ch.Nonce, ExtraParams: extra, CreatedAt: now, ExpiresAt: now.Add(s.opts.SessionTTL)}
	if err := s.store.Sessions().Create(r.Context(), sess); err != nil {
		s.fail(w, r, fmt.Errorf("create session: %w", err))
		return
	}
	s.setCookie(w, r, sess)
	writeJSON(w, http.StatusOK, ch)
}

func (s *Server) setCookie(w http.ResponseWriter, r *http.Request, sess store.Session) {
	http.SetCookie(w, &http.Cookie{
		Name:     SessionCookie,
		Value:    sess.ID,
		Path:     "/kbs/v0",
		Expires:  sess.ExpiresAt,
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteStrictMode,
	})
}

// ReportData computes the report data that binds evidence to an RCAR
// exchange; see reportdata.Compute, which clients share.
func ReportData(hashAlg string, teePubKey json.RawMessage, nonce, additionalEvidence string) ([]byte, error) {
	return reportdata.Compute(hashAlg, teePubKey, nonce, additionalEvidence)
}

// parseAttestation validates an attest body's shape before any state
// changes.
func parseAttestation(a *attestation) error {
	switch {
	case a.RuntimeData == nil:
		return rejectf("attestation has no \"runtime-data\"")
	case a.RuntimeData.Nonce == nil:
		return rejectf("attestation has no \"runtime-data.nonce\"")
	case len(a.RuntimeData.TEEPubKey) == 0 || string(a.RuntimeData.TEEPubKey) == "null":
		return rejectf("attestation has no \"runtime-data.tee-pubkey\"")
	case a.TEEEvidence == nil:
		return rejectf("attestation has no \"tee-evidence\"")
	case len(a.TEEEvidence.PrimaryEvidence) == 0:
		return rejectf("attestation has no \"tee-evidence.primary_evidence\"")
	case a.TEEEvidence.AdditionalEvidence == nil:
		return rejectf("attestation has no \"tee-evidence.additional_evidence\" (use \"\" for none)")
	case *a.TEEEvidence.AdditionalEvidence != "":
		return rejectf("additional_evidence is not supported by this server: send \"\"")
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(a.RuntimeData.TEEPubKey); err != nil {
		return rejectf("runtime-data.tee-pubkey is not a JWK: %v", err)
	}
	if !jwk.IsPublic() {
		return rejectf("runtime-data.tee-pubkey must be a public key")
	}
	return nil
}

func (s *Server) attest(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie(SessionCookie)
	if err != nil || c.Value == "" {
		s.fail(w, r, rejectf("no %s cookie: POST /kbs/v0/auth first", SessionCookie))
		return
	}
	var req attestation
	if err := readJSON(r, maxAttestBody, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := parseAttestation(&req); err != nil {
		s.fail(w, r, err)
		return
	}
	ctx := r.Context()
	now := s.now()
	// Consume first: a fresh attestation is then one round trip here and
	// one for SetClaims. Only when that fails may the session be one that
	// attested already, which is answered its own claims again.
	sess, err := s.store.Sessions().ConsumeNonce(ctx, c.Value, *req.RuntimeData.Nonce, now)
	if err != nil && s.reattest(w, r, c.Value, now) {
		return
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.fail(w, r, rejectf("no session matches this cookie and runtime-data.nonce"))
		return
	case errors.Is(err, store.ErrConsumed):
		s.fail(w, r, rejectf("this session's nonce was already used: start again at /kbs/v0/auth"))
		return
	case errors.Is(err, store.ErrExpired):
		s.fail(w, r, rejectf("session expired: start again at /kbs/v0/auth"))
		return
	case err != nil:
		s.fail(w, r, fmt.Errorf("consume nonce: %w", err))
		return
	}
	noteAttestor(r, sess.TEE)
	a, ok := s.attestors[sess.TEE]
	if !ok {
		s.fail(w, r, rejectf("tee %q of this session is no longer enabled", sess.TEE))
		return
	}
	var extra map[string]string
	if err := json.Unmarshal(sess.ExtraParams, &extra); err != nil {
		s.fail(w, r, fmt.Errorf("session %s extra-params: %w", sess.ID, err))
		return
	}
	hashAlg := extra[extraSelectedHash]
	rd, err := ReportData(hashAlg, req.RuntimeData.TEEPubKey, sess.Nonce, *req.TEEEvidence.AdditionalEvidence)
	if err != nil {
		s.fail(w, r, rejectf("runtime-data: %v", err))
		return
	}
	actx, cancel := context.WithTimeout(ctx, s.opts.AttestTimeout)
	res, err := a.Attest(actx, attest.Challenge{Nonce: sess.Nonce, ReportData: rd, HashAlgorithm: hashAlg, Peer: r.RemoteAddr}, req.TEEEvidence.PrimaryEvidence)
	cancel()
	if errors.Is(err, attest.ErrRejected) {
		s.fail(w, r, rejectf("RCAR handshake Attest failed: %v", err))
		return
	}
	if err != nil {
		s.fail(w, r, fmt.Errorf("attestor %s: %w", sess.TEE, err))
		return
	}
	if res.SPIFFEID == "" {
		s.fail(w, r, fmt.Errorf("attestor %s returned no SPIFFE ID", sess.TEE))
		return
	}
	aliases, err := s.nodeAliases(ctx, res.Selectors)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var jti [16]byte
	_, _ = rand.Read(jti[:])
	claims := token.Attestation{
		Claims: jwt.Claims{
			Issuer:    s.opts.Issuer,
			Subject:   res.SPIFFEID,
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			Expiry:    jwt.NewNumericDate(now.Add(s.opts.TokenTTL)),
			ID:        hex.EncodeToString(jti[:]),
		},
		SPIFFEID:  res.SPIFFEID,
		Selectors: selectorStrings(res.Selectors),
		Aliases:   aliases,
		TEE:       sess.TEE,
		TCB:       res.Claims,
		TEEPubKey: req.RuntimeData.TEEPubKey,
	}
	tok, err := s.opts.Tokens.Sign(claims)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// The session keeps the token's claims, so that its id stays a
	// credential until it expires, as in Trustee (kbs/src/http/attest.rs).
	doc, err := json.Marshal(claims)
	if err != nil {
		s.fail(w, r, fmt.Errorf("encode claims: %w", err))
		return
	}
	if err := s.store.Sessions().SetClaims(ctx, sess.ID, doc); err != nil {
		s.fail(w, r, fmt.Errorf("session %s: %w", sess.ID, err))
		return
	}
	s.log.Info("attested", "tee", sess.TEE, "spiffe_id", res.SPIFFEID, "peer", r.RemoteAddr, "session", sess.ID)
	s.setCookie(w, r, sess)
	writeJSON(w, http.StatusOK, map[string]string{"token": tok})
}

// reattest answers an attest on a session that already attested with the
// session's token, as Trustee does: its claims (the same "jti" and
// lifetime), signed again. It reports whether it answered.
func (s *Server) reattest(w http.ResponseWriter, r *http.Request, id string, now time.Time) bool {
	sess, err := s.store.Sessions().Get(r.Context(), id)
	if err != nil || len(sess.Claims) == 0 {
		// No session, or one that has not attested: the caller's
		// ConsumeNonce error says which.
		return false
	}
	if !now.Before(sess.ExpiresAt) {
		s.fail(w, r, rejectf("session expired: start again at /kbs/v0/auth"))
		return true
	}
	e, err := s.sessionEntry(sess)
	if err != nil {
		s.fail(w, r, err)
		return true
	}
	if !e.valid(now) {
		s.fail(w, r, rejectf("this session's attestation has expired: start again at /kbs/v0/auth"))
		return true
	}
	tok, err := s.opts.Tokens.Sign(json.RawMessage(sess.Claims))
	if err != nil {
		s.fail(w, r, err)
		return true
	}
	s.setCookie(w, r, sess)
	writeJSON(w, http.StatusOK, map[string]string{"token": tok})
	return true
}

func selectorStrings(sel []store.Selector) []string {
	out := make([]string, len(sel))
	for i, v := range sel {
		out[i] = v.Type + ":" + v.Value
	}
	return out
}

// fail answers err: an rcarError as Trustee does (401), anything else as
// the server's own failure (500, logged, detail withheld).
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var re *rcarError
	if errors.As(err, &re) {
		s.log.Info("rcar rejected", "path", r.URL.Path, "peer", r.RemoteAddr, "reason", re.detail)
		writeProblem(w, http.StatusUnauthorized, re.typ, re.detail)
		return
	}
	s.log.Error("request failed", "path", r.URL.Path, "peer", r.RemoteAddr, "err", err)
	writeProblem(w, http.StatusInternalServerError, ProblemInternal, "internal error; see the server log at "+time.Now().UTC().Format(time.RFC3339))
}
