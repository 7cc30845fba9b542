// Package agentapi is the broker's side of the node agent API (issue 13):
// the endpoints under /agent/v1 that a trustgate agent calls to get its own
// X.509-SVID, the registration entries it is authorized for (with long
// poll), and its workloads' X.509-SVIDs and JWT-SVIDs, and the admin
// endpoints that list and evict agents. Bodies are the agentapi/wire types.
//
// The broker, not the agent, decides: an agent is authorized for the
// entries whose parent is its agent ID or one of its node aliases (entries
// under the server ID spiffe://<td>/spire/server whose selectors are a
// subset of the agent's attested selectors, SPIRE's rule), and an SVID's
// SPIFFE ID always comes from the entry (or, for the agent's own SVID, from
// the attestation), never from the agent's CSR.
//
// An agent authenticates with its agent X.509-SVID as a TLS client
// certificate. Every request checks the store: the agent must be known, not
// evicted, and present its current (or just replaced) SVID, so an eviction
// takes effect on every replica at the next request.
package agentapi

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/agentapi/wire"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/store"
)

// Attestation is what a verified attestation token says about its bearer.
type Attestation struct {
	// SPIFFEID is the attested identity.
	SPIFFEID string
	// Selectors are "type:value" strings, as in the token.
	Selectors []string
	// TEE is the attestor that verified the evidence, e.g. "join_token".
	TEE string
	// TokenID is the token's "jti", and ExpiresAt its expiry: the first
	// agent SVID spends the token on one key (store.Agents.SpendToken).
	TokenID   string
	ExpiresAt time.Time
}

// Options assemble an API.
type Options struct {
	// Store holds agents and entries.
	Store store.Store
	// SVID signs SVIDs and provides the bundle client certificates are
	// verified against.
	SVID *svid.Plugin
	// TrustDomain is the broker's trust domain.
	TrustDomain spiffeid.TrustDomain
	// VerifyAttestation verifies a bearer attestation token from RCAR.
	VerifyAttestation func(raw string) (Attestation, error)
	// Changes wakes waiting long polls early (default: a Broadcaster that
	// only Notify feeds). Replicas also converge by PollInterval.
	Changes Notifier
	// PollInterval is how often a waiting long poll reads the store's
	// entries revision, for changes made through other replicas (default
	// 500ms).
	PollInterval time.Duration
	// Log receives request failures (default: discard).
	Log *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// API serves the agent endpoints. It is safe for concurrent use.
type API struct {
	opts      Options
	store     store.Store
	svid      *svid.Plugin
	td        spiffeid.TrustDomain
	serverID  string
	agentPath string
	local     *Broadcaster
	changes   Notifier // optional, besides local
	log       *slog.Logger
	now       func() time.Time
	// drained is closed by Drain.
	drained   chan struct{}
	drainOnce sync.Once
}

// New returns an API serving opts.
func New(opts Options) (*API, error) {
	switch {
	case opts.Store == nil:
		return nil, errors.New("agentapi: Options.Store is required")
	case opts.SVID == nil:
		return nil, errors.New("agentapi: Options.SVID is required")
	case opts.TrustDomain.IsZero():
		return nil, errors.New("agentapi: Options.TrustDomain is required")
	case opts.VerifyAttestation == nil:
		return nil, errors.New("agentapi: Options.VerifyAttestation is required")
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 500 * time.Millisecond
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	serverID, err := spiffeid.FromSegments(opts.TrustDomain, "spire", "server")
	if err != nil {
		return nil, fmt.Errorf("agentapi: %w", err)
	}
	a := &API{opts: opts, store: opts.Store, svid: opts.SVID, td: opts.TrustDomain, serverID: serverID.String(),
		agentPath: "/spire/agent/", local: NewBroadcaster(), log: opts.Log, now: opts.Now,
		drained: make(chan struct{})}
	a.changes = opts.Changes
	return a, nil
}

// Register mounts the agent endpoints on mux, and the admin ones wrapped by
// admin (the broker's admin authentication). The SVID endpoint, the one an
// attestation token reaches and where each request signs, is wrapped by
// limit (the broker's per-client rate limit); the others need a current
// agent SVID, over mutual TLS.
func (a *API) Register(mux *http.ServeMux, admin, limit func(http.HandlerFunc) http.Handler) {
	mux.Handle("POST "+wire.PathSVID, limit(a.serveSVID))
	mux.HandleFunc("GET "+wire.PathEntries, a.serveEntries)
	mux.HandleFunc("POST "+wire.PathX509, a.serveX509)
	mux.HandleFunc("POST "+wire.PathJWT, a.serveJWT)
	mux.HandleFunc("GET "+wire.PathBundle, a.serveBundle)
	mux.Handle("GET "+wire.PathAdminAgents, admin(a.listAgents))
	mux.Handle("POST "+wire.PathAdminEvict, admin(a.evictAgent))
}

// Notify wakes the long polls waiting on this replica: the broker calls it
// after every entry change and eviction it makes.
func (a *API) Notify() { a.local.Notify() }

// Drain answers every waiting long poll at once, and every later one
// without waiting: the server is shutting down, and a poll held to the end
// of its wait would hold the shutdown for its whole grace. The agents poll
// again, on another replica or after the restart.
func (a *API) Drain() { a.drainOnce.Do(func() { close(a.drained) }) }

// isAgentID reports whether id is an agent ID of the trust domain:
// spiffe://<td>/spire/agent/..., as SPIRE's node attestors make them.
func (a *API) isAgentID(id spiffeid.ID) bool {
	return id.MemberOf(a.td) && strings.HasPrefix(id.Path(), a.agentPath) && len(id.Path()) > len(a.agentPath)
}

// authAgent authenticates an agent by its client certificate: an
// X.509-SVID chained to the current bundle, naming a known, not evicted
// agent, with the serial number of its current (or just replaced) SVID.
func (a *API) authAgent(r *http.Request) (store.Agent, *x509.Certificate, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return store.Agent{}, nil, problem(http.StatusUnauthorized, "no client certificate: call over TLS with the agent's X.509-SVID")
	}
	chain := r.TLS.PeerCertificates
	id, _, err := x509svid.Verify(chain, a.svid, x509svid.WithTime(a.now()))
	if err != nil {
		return store.Agent{}, nil, problem(http.StatusUnauthorized, "client certificate: %v", err)
	}
	if !a.isAgentID(id) {
		return store.Agent{}, nil, problem(http.StatusForbidden, "%s is not an agent ID", id)
	}
	ag, err := a.store.Agents().Get(r.Context(), id.String())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return store.Agent{}, nil, problem(http.StatusForbidden, "agent %s is unknown: attest first", id)
	case err != nil:
		return store.Agent{}, nil, fmt.Errorf("get agent %s: %w", id, err)
	case ag.Evicted:
		return store.Agent{}, nil, problem(http.StatusForbidden, "agent %s is evicted", id)
	}
	serial := chain[0].SerialNumber.String()
	if serial != ag.SerialNumber && serial != ag.PrevSerialNumber {
		return store.Agent{}, nil, problem(http.StatusForbidden, "agent %s: this SVID (serial %s) is not the agent's current one", id, serial)
	}
	return ag, chain[0], nil
}

// fail writes err as problem JSON: its own status for a *Problem, 500
// (logged, not shown) otherwise.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	var p *Problem
	if errors.As(err, &p) {
		writeProblem(w, p.Status, p.Detail)
		return
	}
	a.log.Error("agent API request failed", "path", r.URL.Path, "peer", r.RemoteAddr, "err", err)
	writeProblem(w, http.StatusInternalServerError, "internal error; see the server log")
}
