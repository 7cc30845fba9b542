// Package store declares what the trustgate server persists.
//
// The interfaces here are the whole contract: store/sqlite implements them
// for a single node, and a PostgreSQL implementation for replicas sharing
// state implements the same ones, so callers never change. store/storetest is
// the conformance suite every implementation must pass.
//
// Every method is safe for concurrent use. Values that are secret (resource
// values, private keys) reach the store already sealed by the caller under a
// key that is not in the database; the store only ever sees ciphertext.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors returned by every implementation. Callers test them with errors.Is.
var (
	// ErrNotFound means no record has the given key.
	ErrNotFound = errors.New("store: not found")
	// ErrConflict means a record with the given key already exists.
	ErrConflict = errors.New("store: already exists")
	// ErrConsumed means a single-use value was already used.
	ErrConsumed = errors.New("store: already used")
	// ErrExpired means a record exists but its lifetime has passed.
	ErrExpired = errors.New("store: expired")
	// ErrEvicted means the agent was evicted: it may not attest or renew.
	ErrEvicted = errors.New("store: evicted")
)

// Store is everything the server persists.
type Store interface {
	// Sessions holds RCAR attestation sessions and their nonces.
	Sessions() Sessions
	// JoinTokens holds single-use node join tokens.
	JoinTokens() JoinTokens
	// Entries holds SPIFFE registration entries.
	Entries() Entries
	// Resources holds sealed resource values by path.
	Resources() Resources
	// Keys holds sealed key material (signing keys, CAs) by kind.
	Keys() Keys
	// Policies holds policy documents by name.
	Policies() Policies
	// Changes carries change notifications between the servers sharing
	// the store.
	Changes() Changes
	// Locks coordinates the servers sharing the store.
	Locks() Locks
	// Ping reports whether the store answers, for readiness checks.
	Ping(ctx context.Context) error
	// Agents holds the node agents that attested.
	Agents() Agents
	// Close releases the store's resources.
	Close() error
}

// Session is one RCAR attestation session.
type Session struct {
	// ID is the session cookie value.
	ID string
	// TEE names the evidence type or node attestor the caller chose.
	TEE string
	// Nonce is the challenge the server issued, as sent on the wire.
	Nonce string
	// ExtraParams is the challenge's extra-params JSON, as sent.
	ExtraParams []byte
	// CreatedAt is when the session began.
	CreatedAt time.Time
	// ExpiresAt is when the session, and its nonce, stop being valid.
	ExpiresAt time.Time
	// NonceUsed is true once an attestation consumed the nonce.
	NonceUsed bool
	// Claims is the attestation result, set when the caller attested.
	Claims []byte
}

// Sessions stores RCAR sessions.
type Sessions interface {
	// Create stores a new session. It returns ErrConflict if the ID exists.
	Create(ctx context.Context, s Session) error
	// Get returns the session with the given ID, or ErrNotFound.
	Get(ctx context.Context, id string) (Session, error)
	// ConsumeNonce atomically marks the session's nonce used, provided that
	// it equals nonce, has not been used, and has not expired at now. It
	// returns ErrNotFound when the session or nonce does not match,
	// ErrConsumed when it was used, and ErrExpired when it expired; exactly
	// one concurrent caller can succeed.
	ConsumeNonce(ctx context.Context, id, nonce string, now time.Time) (Session, error)
	// SetClaims records the attestation result of a session whose nonce
	// was consumed.
	SetClaims(ctx context.Context, id string, claims []byte) error
	// DeleteExpired removes sessions that expired before now, and returns
	// how many it removed.
	DeleteExpired(ctx context.Context, now time.Time) (int, error)
}

// JoinToken is a single-use credential that lets a node attest.
type JoinToken struct {
	// ID identifies the token. Callers store a digest of the secret token,
	// never the token itself.
	ID string
	// ExpiresAt is when the token stops being valid.
	ExpiresAt time.Time
	// SPIFFEID optionally pins the agent ID the token grants.
	SPIFFEID string
	// CreatedAt is when the token was made.
	CreatedAt time.Time
}

// JoinTokens stores join tokens.
type JoinTokens interface {
	// Create stores a token. It returns ErrConflict if the ID exists.
	Create(ctx context.Context, t JoinToken) error
	// Consume atomically deletes the token and returns it, or ErrNotFound.
	// It does not check expiry: as SPIRE does, the token is gone before the
	// caller looks at its lifetime, so a token can never be used twice.
	Consume(ctx context.Context, id string) (JoinToken, error)
	// List returns every stored token, oldest first.
	List(ctx context.Context) ([]JoinToken, error)
}

// Selector is one SPIRE-style selector, such as x509pop:subject:cn:node-1
// with Type "x509pop" and Value "subject:cn:node-1".
type Selector struct {
	Type  string
	Value string
}

// Entry is a SPIFFE registration entry: the workloads or nodes matching its
// selectors, under its parent, get its SPIFFE ID.
type Entry struct {
	// ID is the entry's unique identifier, assigned by Create when empty.
	ID string
	// SPIFFEID is the identity the entry grants.
	SPIFFEID string
	// ParentID is the SPIFFE ID of the agent or node the entry is under.
	ParentID string
	// Selectors must all be present for the entry to match.
	Selectors []Selector
	// X509SVIDTTL and JWTSVIDTTL bound issued SVIDs; zero means the
	// server's default.
	X509SVIDTTL time.Duration
	JWTSVIDTTL  time.Duration
	// DNSNames go into X.509-SVIDs issued for the entry.
	DNSNames []string
	// CreatedAt is when the entry was stored.
	CreatedAt time.Time
}

// EntryFilter narrows List. Zero fields match everything.
type EntryFilter struct {
	ParentID string
	SPIFFEID string
}

// Entries stores registration entries.
type Entries interface {
	// Create stores e, assigning an ID when e.ID is empty, and returns the
	// stored entry. It returns ErrConflict if the ID exists.
	Create(ctx context.Context, e Entry) (Entry, error)
	// Get returns the entry with the given ID, or ErrNotFound.
	Get(ctx context.Context, id string) (Entry, error)
	// List returns the entries that match f, ordered by ID.
	List(ctx context.Context, f EntryFilter) ([]Entry, error)
	// Delete removes the entry with the given ID, or returns ErrNotFound.
	Delete(ctx context.Context, id string) error
	// Revision returns a counter that every entry change (create, delete,
	// update) and every agent eviction increases, in the same transaction,
	// so that every replica sharing the store sees what it must re-read.
	Revision(ctx context.Context) (int64, error)
}

// Resource is one sealed resource value.
type Resource struct {
	// Path is the resource's name, e.g. "default/key/tag".
	Path string
	// Sealed is the value encrypted by the caller.
	Sealed []byte
	// UpdatedAt is when the value was last written.
	UpdatedAt time.Time
}

// Resources stores sealed resource values.
type Resources interface {
	// Put creates or replaces the value at r.Path.
	Put(ctx context.Context, r Resource) error
	// Get returns the value at path, or ErrNotFound.
	Get(ctx context.Context, path string) (Resource, error)
	// Delete removes the value at path, or returns ErrNotFound.
	Delete(ctx context.Context, path string) error
	// List returns the paths starting with prefix, in order.
	List(ctx context.Context, prefix string) ([]string, error)
}

// Key is sealed key material of some kind, such as a token signing key or a
// CA, valid over a window so that keys rotate with overlap.
type Key struct {
	// Kind groups keys by use, e.g. "token-signing" or "nebula-ca".
	Kind string
	// ID is unique within Kind.
	ID string
	// Sealed is the key material encrypted by the caller.
	Sealed []byte
	// Public is the key's public part, if it has one, in the clear.
	Public []byte
	// NotBefore and NotAfter bound when the key is in use.
	NotBefore time.Time
	NotAfter  time.Time
	// CreatedAt is when the key was stored.
	CreatedAt time.Time
}

// Keys stores key material.
type Keys interface {
	// Create stores k. It returns ErrConflict if Kind and ID exist.
	Create(ctx context.Context, k Key) error
	// List returns the keys of a kind, oldest NotBefore first.
	List(ctx context.Context, kind string) ([]Key, error)
	// Delete removes one key, or returns ErrNotFound.
	Delete(ctx context.Context, kind, id string) error
}

// Policy is one named policy document.
type Policy struct {
	Name string
	// Text is the policy source.
	Text string
	// Revision increases by one on every write.
	Revision int64
	// UpdatedAt is when the policy was last written.
	UpdatedAt time.Time
}

// Policies stores policy documents.
type Policies interface {
	// Get returns the policy with the given name, or ErrNotFound.
	Get(ctx context.Context, name string) (Policy, error)
	// Put writes a policy's text and returns it with its new revision.
	Put(ctx context.Context, name, text string) (Policy, error)
}

// Agent is a node agent that attested and holds an agent X.509-SVID.
type Agent struct {
	// SPIFFEID is the agent ID, e.g.
	// spiffe://example.org/spire/agent/join_token/<token>.
	SPIFFEID string
	// Attestor is the node attestor that proved it, e.g. "x509pop".
	Attestor string
	// Selectors are the node selectors its attestation produced.
	Selectors []Selector
	// SerialNumber is the current agent SVID's serial number, decimal.
	SerialNumber string
	// PrevSerialNumber is the serial of the SVID that SerialNumber
	// replaced: it still authenticates until the agent renews with the
	// new one, so that a renewal whose answer was lost is not fatal.
	PrevSerialNumber string
	// ExpiresAt is the current agent SVID's NotAfter.
	ExpiresAt time.Time
	// Evicted is true once an administrator evicted the agent. An
	// evicted agent stays refused: it can neither renew nor attest again.
	Evicted bool
	// CreatedAt is when the agent first attested; UpdatedAt when its
	// record last changed.
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Agents stores attested node agents.
type Agents interface {
	// Attest records an attestation: it creates the agent, or replaces
	// the attestor, selectors, serial number (clearing the previous one)
	// and expiry of an existing one, keeping CreatedAt. It returns the
	// stored agent, or ErrEvicted when the agent is evicted.
	Attest(ctx context.Context, a Agent) (Agent, error)
	// Renew replaces the agent's SVID serial number and expiry, provided
	// that presented is its current or previous serial; the current one
	// becomes the previous. It returns ErrNotFound for an unknown agent,
	// ErrEvicted for an evicted one, and ErrConflict when presented is
	// neither serial.
	Renew(ctx context.Context, id, presented, serial string, expiresAt, now time.Time) error
	// Get returns the agent with the given ID, or ErrNotFound.
	Get(ctx context.Context, id string) (Agent, error)
	// List returns every agent, ordered by SPIFFE ID.
	List(ctx context.Context) ([]Agent, error)
	// Evict marks the agent evicted, or returns ErrNotFound.
	Evict(ctx context.Context, id string, now time.Time) error
	// SpendToken atomically records that the attestation token tokenID
	// (its "jti"), valid until expiresAt, is spent on the key whose digest
	// is keyDigest. It returns ErrConsumed when the token was spent on
	// another key: a replay. Spent on the same key, it returns the answer
	// that TokenAnswered recorded (nil before that): the agent retrying
	// after a lost answer gets it again, and a replay changes nothing.
	SpendToken(ctx context.Context, tokenID, keyDigest string, expiresAt time.Time) ([]byte, error)
	// TokenAnswered records the answer given for a spent token.
	TokenAnswered(ctx context.Context, tokenID string, answer []byte) error
	// DeleteSpentTokens forgets the spent tokens that expired before now
	// (they can no longer be presented), and returns how many.
	DeleteSpentTokens(ctx context.Context, now time.Time) (int, error)
}
