package broker

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/client/auth"
	"github.com/trustgate/trustgate/policy"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/token"
)

// credKind is what kind of credential a caller presented. Kinds are bits,
// so that an endpoint can accept a set of them.
type credKind uint8

const (
	// credAttestation is the attestation token from POST /kbs/v0/attest.
	credAttestation credKind = 1 << iota
	// credScoped is a scoped token from the token service, for the
	// broker's own service.
	credScoped
	// credSVID is a JWT-SVID from the svid plugin (token service only).
	credSVID
	// credX509SVID is an X.509-SVID presented as a TLS client certificate.
	credX509SVID
)

// String is the kind as the policy input's "credential" names it.
func (k credKind) String() string {
	switch k {
	case credAttestation:
		return "attestation"
	case credScoped:
		return "scoped"
	case credSVID:
		return "jwt-svid"
	case credX509SVID:
		return "x509-svid"
	}
	return "unknown"
}

// callerEntry is a verified credential, ready for the policy and for
// encryption.
type callerEntry struct {
	kind      credKind
	caller    plugin.Caller
	claims    policy.Claims
	teeKey    jose.Recipient
	teeKeyErr error
	notBefore time.Time
	expiry    time.Time
	// tokenID is the token's "jti".
	tokenID string
	// access is what a scoped token grants.
	access []auth.Scope
}

// valid reports whether the token is inside its validity window at now,
// with the bounds go-jose's ValidateWithLeeway applies at zero leeway.
func (e *callerEntry) valid(now time.Time) bool {
	return !now.Before(e.notBefore) && !now.After(e.expiry)
}

// tokenCache remembers verified attestation tokens by their SHA-256, so
// that a caller's repeated requests cost a hash and a map lookup instead of
// an ECDSA verification and a JSON decode each. An entry is used only
// inside its token's validity window. The cache is bounded: when full, it
// drops expired entries and then arbitrary ones.
type tokenCache struct {
	mu  sync.RWMutex
	m   map[[sha256.Size]byte]*callerEntry
	max int
}

func newTokenCache(size int) *tokenCache {
	return &tokenCache{m: make(map[[sha256.Size]byte]*callerEntry), max: size}
}

func (c *tokenCache) get(k [sha256.Size]byte) *callerEntry {
	c.mu.RLock()
	e := c.m[k]
	c.mu.RUnlock()
	return e
}

func (c *tokenCache) put(k [sha256.Size]byte, e *callerEntry, now time.Time) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		for k, v := range c.m {
			if !v.valid(now) {
				delete(c.m, k)
			}
		}
		// Map order is unspecified: this drops an arbitrary eighth.
		for k := range c.m {
			if len(c.m) < c.max-c.max/8 {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[k] = e
}

// authAttested authenticates a caller of a plugin endpoint: the
// attestation token or a scoped token for the broker's own service, as a
// bearer token; else an X.509-SVID client certificate chained to the
// broker's bundle; else the attested session that the kbs-session-id
// cookie names.
func (s *Server) authAttested(r *http.Request) (*callerEntry, *authFailure) {
	var e *callerEntry
	var f *authFailure
	switch raw, ok := bearer(r); {
	case ok:
		e, f = s.verifyCaller(raw, credAttestation|credScoped)
	case r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && s.opts.ClientSVIDs != nil:
		e, f = s.verifyClientSVID(r.TLS.PeerCertificates)
	default:
		e, f = s.sessionCaller(r)
	}
	if f != nil {
		return nil, f
	}
	if f := s.refuseEvicted(r.Context(), e.caller.SPIFFEID); f != nil {
		return nil, f
	}
	return e, nil
}

// refuseEvicted fails a caller that is an agent evicted through the agent
// API (trustgate agent evict), whatever credential it still holds: an
// evicted agent gets nothing more from the broker. Only agent IDs
// (spiffe://<td>/spire/agent/...) cost a store lookup.
func (s *Server) refuseEvicted(ctx context.Context, spiffeID string) *authFailure {
	if !strings.HasPrefix(spiffeID, s.agentPrefix) {
		return nil
	}
	ag, err := s.store.Agents().Get(ctx, spiffeID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		s.log.Error("request failed", "err", fmt.Errorf("get agent %s: %w", spiffeID, err))
		return &authFailure{status: http.StatusInternalServerError, typ: ProblemInternal, detail: "internal error: the agent could not be read; see the server log"}
	case ag.Evicted:
		return &authFailure{status: http.StatusForbidden, typ: ProblemPolicyDeny, detail: "agent " + spiffeID + " is evicted"}
	}
	return nil
}

// sessionCaller authenticates a caller by its kbs-session-id. As in
// Trustee, the session id stays a credential while the session lives, so
// that clients that keep the id from /kbs/v0/auth (Trustee's curl scripts)
// are recognised. The session holds the claims of the token it was
// issued, not the token: a store reader learns no bearer token.
func (s *Server) sessionCaller(r *http.Request) (*callerEntry, *authFailure) {
	c, err := r.Cookie(SessionCookie)
	if err != nil || c.Value == "" {
		return nil, &authFailure{status: http.StatusUnauthorized, typ: ProblemTokenNotFound,
			detail: "no attestation token: send Authorization: Bearer <token from POST /kbs/v0/attest>"}
	}
	invalid := func(detail string) *authFailure {
		return &authFailure{status: http.StatusUnauthorized, typ: ProblemTokenNotFound, detail: detail, errCode: "invalid_token"}
	}
	now := s.now()
	sess, err := s.store.Sessions().Get(r.Context(), c.Value)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, invalid("the " + SessionCookie + " cookie names no session: start again at POST /kbs/v0/auth")
	case err != nil:
		s.log.Error("request failed", "path", r.URL.Path, "peer", r.RemoteAddr, "err", fmt.Errorf("get session: %w", err))
		return nil, &authFailure{status: http.StatusInternalServerError, typ: ProblemInternal, detail: "internal error: the session could not be read; see the server log"}
	case !now.Before(sess.ExpiresAt):
		return nil, invalid("the " + SessionCookie + " session expired: start again at POST /kbs/v0/auth")
	case len(sess.Claims) == 0:
		return nil, invalid("the " + SessionCookie + " cookie names a session that has not attested: POST /kbs/v0/attest first")
	}
	e, err := s.sessionEntry(sess)
	if err != nil {
		s.log.Error("request failed", "path", r.URL.Path, "peer", r.RemoteAddr, "err", err)
		return nil, &authFailure{status: http.StatusInternalServerError, typ: ProblemInternal, detail: "internal error: the session could not be read; see the server log"}
	}
	if !e.valid(now) {
		return nil, invalid("the attestation of this " + SessionCookie + " session has expired: start again at POST /kbs/v0/auth")
	}
	return e, nil
}

// sessionEntry is the caller of an attested session, from the claims the
// session keeps.
func (s *Server) sessionEntry(sess store.Session) (*callerEntry, error) {
	var c brokerClaims
	if err := json.Unmarshal(sess.Claims, &c); err != nil {
		return nil, fmt.Errorf("session %s claims: %w", sess.ID, err)
	}
	if c.Access != nil || len(c.Audience) != 0 || c.Expiry == nil {
		return nil, fmt.Errorf("session %s claims are not an attestation token's", sess.ID)
	}
	return s.brokerEntry(c.Claims, c)
}

// verifyCaller verifies a bearer credential of one of the allowed kinds.
// Verified credentials are cached by SHA-256 until they expire.
func (s *Server) verifyCaller(raw string, allowed credKind) (*callerEntry, *authFailure) {
	now := s.now()
	key := sha256.Sum256([]byte(raw))
	e := s.tokens.get(key)
	if e == nil || !e.valid(now) {
		var err error
		e, err = s.verifyBrokerToken(raw)
		// A JWT-SVID is recognised wherever it is presented, so that the
		// answer where it is not accepted says so, whatever the cache holds.
		if errors.Is(err, token.ErrUnknownKey) && s.ts != nil && s.ts.svids != nil {
			e, err = s.ts.svids.verify(raw)
		}
		if err != nil {
			return nil, &authFailure{status: http.StatusUnauthorized, typ: ProblemTokenInvalid, detail: err.Error(), errCode: "invalid_token"}
		}
		s.tokens.put(key, e, now)
	}
	if e.kind&allowed == 0 {
		detail := "a " + e.kind.String() + " credential is not accepted here"
		switch e.kind {
		case credScoped:
			detail = "a scoped token cannot be exchanged for another: present the attestation token or a JWT-SVID"
		case credSVID:
			detail = "a JWT-SVID is accepted only by the token service: exchange it at /token for a scoped token"
		}
		return nil, &authFailure{status: http.StatusUnauthorized, typ: ProblemTokenInvalid, detail: detail, errCode: "invalid_token"}
	}
	return e, nil
}

// brokerClaims decodes either token the broker signs: an attestation token
// (no "aud") or a scoped token ("aud" and "access").
type brokerClaims struct {
	token.Attestation
	Access *[]token.Access `json:"access"`
}

// verifyBrokerToken verifies a token signed by the broker's keys: an
// attestation token, or a scoped token whose audience is the broker's own
// service.
func (s *Server) verifyBrokerToken(raw string) (*callerEntry, error) {
	var c brokerClaims
	std, err := s.opts.Tokens.Verify(raw, s.opts.Issuer, &c)
	if err != nil {
		return nil, fmt.Errorf("attestation token: %w", err)
	}
	return s.brokerEntry(std, c)
}

// brokerEntry is the caller of verified broker claims.
func (s *Server) brokerEntry(std jwt.Claims, c brokerClaims) (*callerEntry, error) {
	att := c.Attestation
	e := &callerEntry{
		kind: credAttestation,
		caller: plugin.Caller{Subject: std.Subject, SPIFFEID: att.SPIFFEID, Selectors: att.Selectors, Aliases: att.Aliases,
			TEE: att.TEE, TCB: att.TCB, TEEPubKey: att.TEEPubKey},
		claims: policy.Claims{Subject: std.Subject, SPIFFEID: att.SPIFFEID, Selectors: att.Selectors, Aliases: att.Aliases,
			TEE: att.TEE, TCB: att.TCB},
		expiry:  std.Expiry.Time(),
		tokenID: std.ID,
	}
	switch {
	case len(std.Audience) == 0 && c.Access == nil:
	case len(std.Audience) == 0:
		return nil, errors.New("token has an access claim but no audience")
	case s.ts == nil:
		return nil, errors.New("scoped tokens are not accepted: the token service is disabled")
	case len(std.Audience) != 1 || std.Audience[0] != s.ts.service:
		return nil, fmt.Errorf("scoped token is for service %q, not this broker (%q)", []string(std.Audience), s.ts.service)
	case c.Access == nil:
		return nil, errors.New("scoped token has no access claim")
	default:
		e.kind = credScoped
		for _, a := range *c.Access {
			e.access = append(e.access, auth.Scope{Type: a.Type, Class: a.Class, Name: a.Name, Actions: a.Actions})
		}
	}
	if att.SPIFFEID == "" {
		return nil, errors.New("token has no spiffe_id")
	}
	if std.NotBefore != nil {
		e.notBefore = std.NotBefore.Time()
	}
	if std.IssuedAt != nil && std.IssuedAt.Time().After(e.notBefore) {
		e.notBefore = std.IssuedAt.Time()
	}
	e.teeKey, e.teeKeyErr = teeRecipient(att.TEEPubKey)
	if e.teeKeyErr != nil {
		e.teeKeyErr = fmt.Errorf("tee-pubkey: %w", e.teeKeyErr)
	}
	return e, nil
}
