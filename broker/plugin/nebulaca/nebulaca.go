// Package nebulaca is the broker's nebula-ca plugin: a Nebula certificate
// authority that issues overlay credentials to attested callers, natively,
// with github.com/slackhq/nebula/cert (no nebula-cert process per request).
//
// It serves, under /kbs/v0/nebula-ca/:
//
//   - GET credential?name=&ip=[&groups=&subnets=&duration=&version=]: a new
//     node key pair and its certificate, {node_crt, node_key, ca_crt}, as
//     Trustee's nebula-ca plugin answers. The broker encrypts the answer to
//     the caller's TEE key.
//   - POST credential?name=&ip=[...] with {"public_key": "<PEM>"}: a
//     certificate for the caller's own key, {node_crt, ca_crt}; the private
//     key never leaves the node. Every parameter that policy may judge is in
//     the query, for POST too; the body carries the key and nothing else.
//   - GET ca: the CA bundle, {ca_crt}, so nodes can learn a successor CA
//     before it signs.
//
// Requests are checked against the signing CA's constraints (networks,
// unsafe networks, groups, expiry) and the plugin's configuration, and a
// request outside them is a 400 that says why. CAs live in the store (kind
// "nebula-ca"), their private keys sealed, and rotate with overlap: a
// successor is created RotateBefore the newest CA expires, published in
// ca_crt at once, and signs Prepublish later. Replicas sharing a store
// agree on each generation because its key ID is the generation number.
package nebulaca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/slackhq/nebula/cert"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
)

// Name is the plugin's name under /kbs/v0/.
const Name = "nebula-ca"

// Plugin is the nebula-ca plugin. It is safe for concurrent use.
type Plugin struct {
	cfg      Config
	curve    cert.Curve
	caNets   []netip.Prefix
	caUnsafe []netip.Prefix
	keys     store.Keys
	locks    store.Locks
	changes  store.Changes
	sealer   *seal.Sealer
	log      *slog.Logger
	now      func() time.Time

	rotateMu sync.Mutex // serialises Rotate
	state    atomic.Pointer[state]
}

// New returns the plugin, loading its CAs from st or creating the first one
// (generated, or imported from Config.ImportCACert and ImportCAKey). A nil
// log discards; a nil now is time.Now.
func New(ctx context.Context, cfg Config, st store.Store, sealer *seal.Sealer, log *slog.Logger, now func() time.Time) (*Plugin, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("nebula-ca: config: %w", err)
	}
	if st == nil || sealer == nil {
		return nil, errors.New("nebula-ca: a store and a sealer are required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	curve, _ := parseCurve(cfg.Curve) // Validate checked it
	p := &Plugin{cfg: cfg, curve: curve, keys: st.Keys(), locks: st.Locks(), changes: st.Changes(), sealer: sealer, log: log, now: now}
	for _, s := range cfg.CANetworks {
		p.caNets = append(p.caNets, netip.MustParsePrefix(s))
	}
	for _, s := range cfg.CAUnsafeNetworks {
		p.caUnsafe = append(p.caUnsafe, netip.MustParsePrefix(s))
	}
	if err := p.Rotate(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Name implements plugin.Plugin.
func (p *Plugin) Name() string { return Name }

// Access implements plugin.Plugin: attested callers may GET and POST; the
// policy decides on the query.
func (p *Plugin) Access(method string) plugin.Access {
	switch method {
	case http.MethodGet, http.MethodPost:
		return plugin.Attested
	}
	return plugin.Denied
}

// Encrypt implements plugin.Plugin: a GET answer may carry a private key,
// so it is encrypted to the caller's TEE key; a POST answer holds only
// certificates. Decide refines it per path.
func (p *Plugin) Encrypt(method string) bool { return method == http.MethodGet }

// Decide implements plugin.Decider: Access, and Encrypt except for GET ca,
// whose answer holds only the CA certificates, public material that nodes
// poll, so it is not encrypted.
func (p *Plugin) Decide(_ context.Context, req *plugin.Request) (plugin.Access, bool, error) {
	enc := p.Encrypt(req.Method)
	if len(req.Path) == 1 && req.Path[0] == "ca" {
		enc = false
	}
	return p.Access(req.Method), enc, nil
}

// Handle implements plugin.Plugin.
func (p *Plugin) Handle(ctx context.Context, req *plugin.Request) (*plugin.Response, error) {
	if len(req.Path) != 1 || (req.Path[0] != "credential" && req.Path[0] != "ca") {
		return nil, plugin.Errorf(http.StatusNotFound, "nebula-ca serves /credential and /ca")
	}
	s, now, err := p.current(ctx)
	if err != nil {
		return nil, err
	}
	var body []byte
	switch {
	case req.Path[0] == "ca" && req.Method == http.MethodGet:
		if len(req.Query) != 0 {
			return nil, plugin.Errorf(http.StatusBadRequest, "/ca takes no query parameters")
		}
		body = (&Credential{CACrt: s.bundle}).AppendJSON(nil)
	case req.Path[0] == "credential" && req.Method == http.MethodGet:
		prm, err := parseQuery(req.Query)
		if err != nil {
			return nil, err
		}
		c, err := p.issue(s, now, prm, nil)
		if err != nil {
			return nil, err
		}
		body = c.AppendJSON(make([]byte, 0, 4*(len(c.NodeCrt)+len(c.NodeKey)+len(c.CACrt))+64))
	case req.Path[0] == "credential" && req.Method == http.MethodPost:
		prm, err := parseQuery(req.Query)
		if err != nil {
			return nil, err
		}
		pub, err := parseKeyRequest(req.Body)
		if err != nil {
			return nil, err
		}
		c, err := p.issue(s, now, prm, pub)
		if err != nil {
			return nil, err
		}
		body = c.AppendJSON(make([]byte, 0, 4*(len(c.NodeCrt)+len(c.CACrt))+64))
	default:
		return nil, plugin.Errorf(http.StatusMethodNotAllowed, "/%s does not serve %s", req.Path[0], req.Method)
	}
	return &plugin.Response{ContentType: "application/json", Body: body}, nil
}

// current returns the CA state to sign with at now, rotating first when the
// state has reached a moment at which it changes.
func (p *Plugin) current(ctx context.Context) (*state, time.Time, error) {
	now := p.now()
	if s := p.state.Load(); now.Before(s.next) {
		return s, now, nil
	}
	p.rotateMu.Lock()
	defer p.rotateMu.Unlock()
	// Another request may have rotated while this one waited.
	if s := p.state.Load(); now.Before(s.next) {
		return s, now, nil
	}
	if err := p.rotateLocked(ctx); err != nil {
		return nil, now, err
	}
	return p.state.Load(), now, nil
}
