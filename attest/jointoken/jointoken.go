// Package jointoken is the "join_token" node attestor, SPIRE's model: an
// administrator creates a single-use token with a time to live, and a node
// presents it once to get the agent ID
// spiffe://<td>/spire/agent/join_token/<token>.
//
// Only the SHA-256 digest of a token is stored. Attest deletes the token
// before it looks at its expiry, as SPIRE does, so a token is spent by its
// first use whether or not that use succeeds, and no two concurrent callers
// can both succeed.
package jointoken

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/store"
)

// Name is the attestor's name, the RCAR request's "tee".
const Name = "join_token"

// Attestor verifies join tokens.
type Attestor struct {
	tokens store.JoinTokens
	td     spiffeid.TrustDomain
	now    func() time.Time
	log    *slog.Logger
}

var _ attest.Attestor = (*Attestor)(nil)

// New returns a join_token attestor over tokens. now is the clock (nil means
// time.Now); log may be nil.
func New(tokens store.JoinTokens, td spiffeid.TrustDomain, now func() time.Time, log *slog.Logger) *Attestor {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Attestor{tokens: tokens, td: td, now: now, log: log}
}

// Name implements attest.Attestor.
func (a *Attestor) Name() string { return Name }

// Evidence is what a node sends: the token.
type Evidence struct {
	Token string `json:"token"`
}

// tokenPattern is what Create makes, with room for SPIRE's UUID tokens.
var tokenPattern = regexp.MustCompile(`^[A-Za-z0-9-]{16,128}$`)

// Attest implements attest.Attestor.
func (a *Attestor) Attest(ctx context.Context, ch attest.Challenge, evidence json.RawMessage) (attest.Result, error) {
	var ev Evidence
	dec := json.NewDecoder(bytes.NewReader(evidence))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return attest.Result{}, fmt.Errorf("%w: join_token evidence: %v", attest.ErrRejected, err)
	}
	if !tokenPattern.MatchString(ev.Token) {
		return attest.Result{}, fmt.Errorf("%w: join_token evidence: \"token\" is missing or malformed", attest.ErrRejected)
	}
	t, err := a.tokens.Consume(ctx, Digest(ev.Token))
	if errors.Is(err, store.ErrNotFound) {
		return attest.Result{}, fmt.Errorf("%w: join token unknown or already used", attest.ErrRejected)
	}
	if err != nil {
		return attest.Result{}, fmt.Errorf("join_token attestor: %w", err)
	}
	if !a.now().Before(t.ExpiresAt) {
		a.log.Info("expired join token presented", "peer", ch.Peer, "expired_at", t.ExpiresAt)
		return attest.Result{}, fmt.Errorf("%w: join token expired at %s", attest.ErrRejected, t.ExpiresAt.Format(time.RFC3339))
	}
	id := t.SPIFFEID
	if id == "" {
		sid, err := spiffeid.FromSegments(a.td, "spire", "agent", Name, ev.Token)
		if err != nil {
			return attest.Result{}, fmt.Errorf("join_token attestor: agent ID: %w", err)
		}
		id = sid.String()
	}
	return attest.Result{SPIFFEID: id, Claims: map[string]any{"join_token_expires_at": t.ExpiresAt.Unix()}}, nil
}

// ErrInvalid marks a Create request with a bad TTL or SPIFFE ID.
var ErrInvalid = errors.New("invalid join token request")

// Digest is the store ID of a token: hex SHA-256.
func Digest(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Create makes a token valid for ttl from now, optionally pinned to the
// agent ID spiffeID (which must be in td), stores its digest, and returns
// the token, which is shown only this once.
func Create(ctx context.Context, tokens store.JoinTokens, td spiffeid.TrustDomain, ttl time.Duration, spiffeID string, now time.Time) (string, store.JoinToken, error) {
	if ttl <= 0 {
		return "", store.JoinToken{}, fmt.Errorf("%w: ttl %v: want a positive duration", ErrInvalid, ttl)
	}
	if spiffeID != "" {
		id, err := spiffeid.FromString(spiffeID)
		if err != nil {
			return "", store.JoinToken{}, fmt.Errorf("%w: spiffe_id: %v", ErrInvalid, err)
		}
		if !id.MemberOf(td) {
			return "", store.JoinToken{}, fmt.Errorf("%w: spiffe_id %s is not in trust domain %s", ErrInvalid, id, td)
		}
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", store.JoinToken{}, fmt.Errorf("join token: %w", err)
	}
	tok := hex.EncodeToString(b[:])
	t := store.JoinToken{ID: Digest(tok), ExpiresAt: now.Add(ttl), SPIFFEID: spiffeID, CreatedAt: now}
	if err := tokens.Create(ctx, t); err != nil {
		return "", store.JoinToken{}, fmt.Errorf("join token: %w", err)
	}
	return tok, t, nil
}
