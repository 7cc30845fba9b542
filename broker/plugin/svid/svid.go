// Package svid is the broker's SPIFFE plugin: under /kbs/v0/svid/ it signs
// X.509-SVIDs from callers' CSRs, mints JWT-SVIDs, and serves the trust
// bundle, running its own root and rotating intermediate CA.
//
// An attested caller (an agent or node, identified by its SPIFFE ID and the
// node aliases it matched) may obtain an SVID for its own SPIFFE ID, or for
// the SPIFFE ID of any registration entry whose parent is its SPIFFE ID or
// one of its aliases, as a SPIRE agent does on behalf of its workloads.
//
// Keys live in the store (kinds KindRoot, KindIntermediate, KindJWT), their
// private halves sealed, so replicas sharing a store sign under, and
// publish, the same keys. Each kind rotates with overlap: a successor is
// made half-way through the current key's term and takes over at its end;
// keys are numbered and the successor of key n is n+1, so racing replicas
// collide in the store and agree on the winner. X.509-SVIDs chain leaf ->
// intermediate -> root; the bundle holds the roots and the JWT keys.
//
// See docs/plugin-svid.md for the routes, configuration and semantics.
package svid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/internal/periodic"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
)

// Name is the plugin's name under /kbs/v0/.
const Name = "svid"

// Plugin serves /kbs/v0/svid/. It is safe for concurrent use.
type Plugin struct {
	cfg    Config
	td     spiffeid.TrustDomain
	store  store.Store
	sealer *seal.Sealer
	log    *slog.Logger
	now    func() time.Time

	rotateMu sync.Mutex // serialises Rotate
	state    atomic.Pointer[state]
	entries  *entryCache
}

var _ plugin.Plugin = (*Plugin)(nil)

// New validates cfg, loads or creates the CAs and JWT keys in st, and
// returns the plugin ready to issue. Private keys are sealed with sealer.
// A nil log discards; a nil now is time.Now.
func New(ctx context.Context, cfg Config, td spiffeid.TrustDomain, st store.Store, sealer *seal.Sealer, log *slog.Logger, now func() time.Time) (*Plugin, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("svid: config: %w", err)
	}
	if td.IsZero() {
		return nil, errors.New("svid: no trust domain")
	}
	if st == nil || sealer == nil {
		return nil, errors.New("svid: a store and a sealer are required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	p := &Plugin{cfg: cfg, td: td, store: st, sealer: sealer, log: log, now: now, entries: &entryCache{ttl: cfg.EntryCacheTTL.Duration}}
	// For the store's lifetime: a deleted entry stops granting as soon as
	// any replica's write is announced.
	st.Changes().Subscribe(store.TopicEntries, p.entries.invalidate)
	if err := p.Rotate(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// RotateInterval is how often Run calls Rotate: often enough that every
// successor is made long before it takes over.
func (p *Plugin) RotateInterval() time.Duration {
	shortest := min(p.cfg.IntermediateTTL.Duration, p.cfg.JWTKeyTTL.Duration)
	return min(max(shortest/16, time.Second), p.cfg.BundleRefreshHint.Duration)
}

// Run calls Rotate every RotateInterval until ctx ends. A failed rotation
// is logged and retried at the next tick; current keys keep signing.
func (p *Plugin) Run(ctx context.Context) {
	wake, cancel := store.Wake(p.store.Changes(), store.TopicKeys)
	defer cancel()
	periodic.RunWake(ctx, p.RotateInterval(), 30*time.Second, p.log, "svid key rotation", wake, p.Rotate)
}

// Name implements plugin.Plugin.
func (p *Plugin) Name() string { return Name }

// Access implements plugin.Plugin: GET (the bundle) and POST (issuance)
// need an attested caller; other methods are not served.
func (p *Plugin) Access(method string) plugin.Access {
	switch method {
	case http.MethodGet, http.MethodPost:
		return plugin.Attested
	}
	return plugin.Denied
}

// RepeatedQuery implements plugin.RepeatedQuery: a JWT-SVID request names
// one audience per "audience" parameter (?audience=A&audience=B).
func (p *Plugin) RepeatedQuery() []string { return []string{"audience"} }

// Encrypt implements plugin.Plugin. POST answers are encrypted: a JWT-SVID
// is a bearer credential, and the contract decides per method, so X.509
// answers (public certificates) are encrypted too. The bundle (GET) is
// public material and is not.
func (p *Plugin) Encrypt(method string) bool { return method == http.MethodPost }

// Handle implements plugin.Plugin.
func (p *Plugin) Handle(ctx context.Context, req *plugin.Request) (*plugin.Response, error) {
	if len(req.Path) != 1 {
		return nil, plugin.Errorf(http.StatusNotFound, "no such svid resource: want bundle, x509 or jwt")
	}
	route, method := req.Path[0], req.Method
	switch {
	case route == "bundle" && method == http.MethodGet:
		return &plugin.Response{ContentType: "application/json", Body: p.Bundle()}, nil
	case route == "x509" && method == http.MethodPost:
		return p.issueX509(ctx, req)
	case route == "jwt" && method == http.MethodPost:
		return p.issueJWT(ctx, req)
	case route == "bundle" || route == "x509" || route == "jwt":
		return nil, plugin.Errorf(http.StatusMethodNotAllowed, "%s %s is not served: bundle is GET, x509 and jwt are POST", method, route)
	}
	return nil, plugin.Errorf(http.StatusNotFound, "no such svid resource %q: want bundle, x509 or jwt", route)
}

// Bundle returns the trust bundle in SPIFFE bundle format (a JWK set with
// the X.509 roots as "x509-svid" keys and the JWT keys as "jwt-svid" keys,
// a refresh hint and a sequence number). It is public material.
func (p *Plugin) Bundle() []byte { return p.state.Load().bundle }

// ServeBundle serves Bundle without authentication, as a SPIFFE federation
// bundle endpoint (https_web profile) does; the broker mounts it at
// GET /.well-known/spiffe-bundle.json.
func (p *Plugin) ServeBundle(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(p.Bundle())
}

// load returns the current state, rotating first when nothing in it can
// sign at now (rotation stalled, or another replica rotated first).
func (p *Plugin) load(ctx context.Context, now time.Time) (*state, error) {
	st := p.state.Load()
	_, okInt := signingAuthority(st.intermediates, now)
	_, okJWT := signingJWTKey(st.jwt, now)
	if okInt && okJWT {
		return st, nil
	}
	if err := p.Rotate(ctx); err != nil {
		return nil, err
	}
	return p.state.Load(), nil
}
