package broker

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/policy"
	"github.com/trustgate/trustgate/token"
)

// callerEntry is a verified attestation token, ready for the policy and
// for encryption.
type callerEntry struct {
	caller    plugin.Caller
	claims    policy.Claims
	teeKey    jose.Recipient
	teeKeyErr error
	notBefore time.Time
	expiry    time.Time
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

// attestationToken finds the caller's attestation token: the Authorization
// bearer token, or else the kbs-session-id cookie, which POST
// /kbs/v0/attest sets to the token so that Trustee's clients, which replay
// the session cookie, are recognised.
func attestationToken(r *http.Request) (string, *authFailure) {
	if raw, ok := bearer(r); ok {
		return raw, nil
	}
	if c, err := r.Cookie(SessionCookie); err == nil && c.Value != "" {
		if strings.Count(c.Value, ".") == 2 {
			return c.Value, nil
		}
		return "", &authFailure{status: http.StatusUnauthorized, typ: ProblemTokenNotFound,
			detail: "the " + SessionCookie + " cookie names a session that has not attested: POST /kbs/v0/attest first", errCode: "invalid_token"}
	}
	return "", &authFailure{status: http.StatusUnauthorized, typ: ProblemTokenNotFound,
		detail: "no attestation token: send Authorization: Bearer <token from POST /kbs/v0/attest>"}
}

// authAttested authenticates an attested caller.
func (s *Server) authAttested(r *http.Request) (*callerEntry, *authFailure) {
	raw, af := attestationToken(r)
	if af != nil {
		return nil, af
	}
	now := s.now()
	key := sha256.Sum256([]byte(raw))
	if e := s.tokens.get(key); e != nil && e.valid(now) {
		return e, nil
	}
	var att token.Attestation
	std, err := s.opts.Tokens.Verify(raw, s.opts.Issuer, &att)
	if err != nil {
		return nil, &authFailure{status: http.StatusUnauthorized, typ: ProblemTokenInvalid, detail: "attestation token: " + err.Error(), errCode: "invalid_token"}
	}
	if att.SPIFFEID == "" {
		return nil, &authFailure{status: http.StatusUnauthorized, typ: ProblemTokenInvalid, detail: "attestation token has no spiffe_id", errCode: "invalid_token"}
	}
	e := &callerEntry{
		caller: plugin.Caller{Subject: std.Subject, SPIFFEID: att.SPIFFEID, Selectors: att.Selectors, Aliases: att.Aliases,
			TEE: att.TEE, TCB: att.TCB, TEEPubKey: att.TEEPubKey},
		claims: policy.Claims{Subject: std.Subject, SPIFFEID: att.SPIFFEID, Selectors: att.Selectors, Aliases: att.Aliases,
			TEE: att.TEE, TCB: att.TCB},
		expiry: std.Expiry.Time(),
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
	s.tokens.put(key, e, now)
	return e, nil
}
