// Package broker is trustgate's attestation broker: the HTTP API that
// callers attest to and get identities, tokens and resources from.
//
// Callers run Trustee's RCAR flow (KBS protocol 0.4.0): POST /kbs/v0/auth
// opens a session and returns a nonce, POST /kbs/v0/attest verifies evidence
// bound to that nonce with the attestor the session named, and answers an
// attestation token (package token). Sessions and nonces live in the store,
// so replicas sharing a database agree on them. Administrators manage
// registration entries and join tokens under /admin/v1 with a JWT whose
// "role" claim is "admin".
package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/broker/agentapi"
	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/policy"
	"github.com/trustgate/trustgate/serve"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/token"
)

// SPIFFEBundlePath is where the svid plugin's trust bundle is served
// without authentication, in SPIFFE federation format.
const SPIFFEBundlePath = "/.well-known/spiffe-bundle.json"

// Options assemble a Server.
type Options struct {
	// Store holds sessions, join tokens and entries.
	Store store.Store
	// Log receives request and background-task logs.
	Log *slog.Logger
	// TrustDomain is the trust domain of granted identities.
	TrustDomain spiffeid.TrustDomain
	// Issuer is the "iss" claim of attestation tokens.
	Issuer string
	// Attestors are offered under their names as RCAR "tee" values.
	Attestors []attest.Attestor
	// Tokens signs attestation tokens and serves the JWKS.
	Tokens *token.Authority
	// Admin verifies admin API tokens.
	Admin *AdminVerifier
	// SessionTTL is how long a session lives (default 5m).
	SessionTTL time.Duration
	// TokenTTL is the attestation token's lifetime (default 5m).
	TokenTTL time.Duration
	// AttestTimeout bounds one attestor call (default 10s).
	AttestTimeout time.Duration
	// SweepInterval is how often expired sessions are deleted (default 1m).
	SweepInterval time.Duration
	// JoinTokenMaxTTL bounds join tokens created through the admin API
	// (default 24h).
	JoinTokenMaxTTL time.Duration
	// RateLimit bounds auth and attest requests, and separately /token
	// requests, per client network and in total.
	RateLimit RateLimit
	// Now is the clock (default time.Now).
	Now func() time.Time

	// Plugins serve /kbs/v0/<name>/... (package plugin). Their names must
	// be valid path segments and not in ReservedNames.
	Plugins []plugin.Plugin
	// Policy decides attested callers' plugin requests; nil means a policy
	// engine over Store with the deny-all default.
	Policy *policy.Engine
	// MaxBodyBytes bounds a plugin request body (default 1 MiB).
	MaxBodyBytes int64
	// TokenCacheSize bounds the verified attestation tokens remembered
	// (default 65536; negative disables the cache).
	TokenCacheSize int
	// Metrics registers the broker's collectors when not nil.
	Metrics prometheus.Registerer
	// Audit receives one record per plugin request and per token service
	// request (default Log).
	Audit *slog.Logger
	// TokenService, when set, serves GET and POST /token and makes plugin
	// endpoints challenge for, and accept, scoped tokens.
	TokenService *TokenServiceOptions
	// ClientSVIDs, when set, verifies the X.509-SVIDs that TLS clients
	// present: a caller with one chained to this bundle is authenticated
	// as its SPIFFE ID (credential "x509-svid"), instead of by a token.
	ClientSVIDs x509bundle.Source
	// PolicyFile, when set, is where the operator keeps the resource
	// policy: it is put in force at start-up and whenever it changes
	// (polled every PolicyFilePoll, default DefaultPolicyFilePoll), and
	// POST /kbs/v0/resource-policy is refused.
	PolicyFile     string
	PolicyFilePoll time.Duration
	// AgentChanges, when set, wakes the agent API's waiting long polls on
	// changes made through other replicas (the store's change
	// notifications); without it they notice by polling the store.
	AgentChanges agentapi.Notifier
}

// Server is the broker's HTTP API.
type Server struct {
	opts          Options
	store         store.Store
	log           *slog.Logger
	mux           *http.ServeMux
	attestors     map[string]attest.Attestor
	attestorNames []string
	limit         *limiter // auth and attest
	tokenLimit    *limiter // /token
	agentLimit    *limiter // POST /agent/v1/svid
	now           func() time.Time
	serverID      string
	plugins       map[string]plugin.Plugin
	policy        *policy.Engine
	maxBody       int64
	tokens        *tokenCache
	audit         *auditor
	ts            *tokenService
	tls           *servingTLS // set by FromConfig
	metrics       *serverMetrics
	agents        *agentapi.API // nil without the svid plugin
	agentPrefix   string        // spiffe://<td>/spire/agent/
}

// New returns a broker serving opts.
func New(opts Options) (*Server, error) {
	switch {
	case opts.Store == nil:
		return nil, errors.New("broker: Options.Store is required")
	case opts.Tokens == nil:
		return nil, errors.New("broker: Options.Tokens is required")
	case opts.Admin == nil:
		return nil, errors.New("broker: Options.Admin is required")
	case opts.TrustDomain.IsZero():
		return nil, errors.New("broker: Options.TrustDomain is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.SessionTTL, 5*time.Minute)
	def(&opts.TokenTTL, 5*time.Minute)
	def(&opts.AttestTimeout, 10*time.Second)
	def(&opts.SweepInterval, time.Minute)
	def(&opts.JoinTokenMaxTTL, 24*time.Hour)
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	serverID, err := spiffeid.FromSegments(opts.TrustDomain, "spire", "server")
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	s := &Server{opts: opts, store: opts.Store, log: opts.Log, mux: http.NewServeMux(),
		attestors: map[string]attest.Attestor{}, limit: newLimiter(opts.RateLimit), tokenLimit: newLimiter(opts.RateLimit), agentLimit: newLimiter(opts.RateLimit), now: opts.Now, serverID: serverID.String(),
		agentPrefix: opts.TrustDomain.IDString() + "/spire/agent/"}
	for _, a := range opts.Attestors {
		if a == nil {
			return nil, errors.New("broker: nil attestor")
		}
		if _, dup := s.attestors[a.Name()]; dup {
			return nil, fmt.Errorf("broker: two attestors named %q", a.Name())
		}
		s.attestors[a.Name()] = a
		s.attestorNames = append(s.attestorNames, a.Name())
	}
	if len(s.attestors) == 0 {
		return nil, errors.New("broker: no attestor")
	}
	slices.Sort(s.attestorNames)
	if err := s.registerPlugins(opts.Plugins); err != nil {
		return nil, err
	}
	s.policy = opts.Policy
	if s.policy == nil {
		pe, err := policy.New(context.Background(), policy.Options{Store: opts.Store.Policies(), Log: opts.Log})
		if err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
		s.policy = pe
	}
	if opts.PolicyFile != "" {
		text, err := LoadPolicyFile(context.Background(), opts.PolicyFile)
		if err != nil {
			return nil, err
		}
		if err := s.applyPolicyFile(context.Background(), text); err != nil {
			return nil, err
		}
	}
	s.maxBody = opts.MaxBodyBytes
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	switch {
	case opts.TokenCacheSize == 0:
		s.tokens = newTokenCache(1 << 16)
	default:
		s.tokens = newTokenCache(opts.TokenCacheSize)
	}
	if opts.Audit == nil {
		opts.Audit = opts.Log
	}
	names := make(map[string]bool, len(s.plugins))
	for n := range s.plugins {
		names[n] = true
	}
	if s.audit, err = newAuditor(opts.Audit, opts.Metrics, names); err != nil {
		return nil, err
	}
	if s.metrics, err = newServerMetrics(opts.Metrics, s.attestorNames, names); err != nil {
		return nil, err
	}
	if opts.TokenService != nil {
		if s.ts, err = newTokenService(opts.TokenService, opts.TrustDomain, opts.Tokens.MaxTokenTTL()); err != nil {
			return nil, err
		}
		s.mux.Handle("GET /token", s.limited(s.tokenLimit, s.serveToken))
		s.mux.Handle("POST /token", s.limited(s.tokenLimit, s.serveToken))
	}
	serve.HandleHealth(s.mux, s.log, s.Ready)
	s.mux.Handle("POST /kbs/v0/auth", s.limited(s.limit, s.auth))
	s.mux.Handle("POST /kbs/v0/attest", s.limited(s.limit, s.metrics.countAttestations(s.attest)))
	s.mux.Handle("GET /.well-known/jwks.json", opts.Tokens)
	s.mux.HandleFunc("GET /.well-known/token-ca.pem", opts.Tokens.ServeRootCertificates)
	for _, p := range opts.Plugins {
		// The SPIFFE bundle is public, for relying parties that cannot
		// attest (SPIFFE federation, https_web).
		if sp, ok := p.(*svid.Plugin); ok {
			s.mux.HandleFunc("GET "+SPIFFEBundlePath, sp.ServeBundle)
			if err := s.mountAgentAPI(sp); err != nil {
				return nil, err
			}
		}
	}
	s.mux.Handle("POST /admin/v1/entries", s.admin(s.createEntry))
	s.mux.Handle("GET /admin/v1/entries", s.admin(s.listEntries))
	s.mux.Handle("GET /admin/v1/entries/{id}", s.admin(s.getEntry))
	s.mux.Handle("DELETE /admin/v1/entries/{id}", s.admin(s.deleteEntry))
	s.mux.Handle("POST /admin/v1/join-tokens", s.admin(s.createJoinToken))
	s.mux.Handle("POST /kbs/v0/resource-policy", s.admin(s.setPolicy))
	s.mux.Handle("GET /kbs/v0/resource-policy", s.admin(s.getPolicy))
	s.mux.HandleFunc("/kbs/v0/", s.servePlugin)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, ProblemInvalidPath, fmt.Sprintf("Request path %s is invalid", r.URL.Path))
	})
	return s, nil
}

// mountAgentAPI serves the node agent API (package agentapi) with the svid
// plugin's CA.
func (s *Server) mountAgentAPI(sp *svid.Plugin) error {
	api, err := agentapi.New(agentapi.Options{Store: s.store, SVID: sp, TrustDomain: s.opts.TrustDomain,
		Changes: s.opts.AgentChanges, Log: s.log.With("api", "agent"), Now: s.now,
		VerifyAttestation: func(raw string) (agentapi.Attestation, error) {
			e, f := s.verifyCaller(raw, credAttestation)
			if f != nil {
				return agentapi.Attestation{}, errors.New(f.detail)
			}
			return agentapi.Attestation{SPIFFEID: e.caller.SPIFFEID, Selectors: e.caller.Selectors, TEE: e.caller.TEE,
				TokenID: e.tokenID, ExpiresAt: e.expiry}, nil
		}})
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	api.Register(s.mux, s.admin, func(h http.HandlerFunc) http.Handler { return s.limited(s.agentLimit, h) })
	s.agents = api
	// Entry changes made through any replica (the store's change
	// notifications: LISTEN/NOTIFY on PostgreSQL) wake the long polls here
	// at once, not at the next store poll.
	s.store.Changes().Subscribe(store.TopicEntries, func(store.Change) { api.Notify() })
	return nil
}

// Drain ends the agent API's long polls on this replica, at once and from
// now on: call it when the server starts shutting down (serve.Options'
// OnShutdown), so that agents' polls do not hold the shutdown for its grace.
func (s *Server) Drain() {
	if s.agents != nil {
		s.agents.Drain()
	}
}

// entriesChanged wakes the agent API's long polls on this replica.
func (s *Server) entriesChanged() {
	if s.agents != nil {
		s.agents.Notify()
	}
}

// ServeHTTP implements http.Handler. Plugin paths go straight to the
// plugin router, before ServeMux could redirect a path with "." or ".."
// segments to a cleaned one: such paths are refused, not rewritten.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if name := pluginOf(r.URL.EscapedPath()); name != "" {
		s.servePlugin(w, r)
		s.metrics.observe(r, name, time.Since(start))
		return
	}
	s.mux.ServeHTTP(w, r)
	s.metrics.observe(r, "", time.Since(start))
}

// Run runs the background tasks until ctx ends: the expired-session sweeper
// (on the one replica that holds the store's "session-sweep" lease), the
// resource policy refresh (when any replica writes a policy, and every
// SweepInterval) and signing key rotation. It returns when they have stopped, after closing plugins
// that are io.Closers.
func (s *Server) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { s.opts.Tokens.Run(ctx) })
	if s.tls != nil {
		wg.Go(func() { s.tls.run(ctx) })
	}
	if s.opts.PolicyFile != "" {
		wg.Go(func() { s.watchPolicyFile(ctx) })
	}
	for _, p := range s.plugins {
		if r, ok := p.(plugin.Runner); ok {
			wg.Go(func() { r.Run(ctx) })
		}
	}
	// Sessions are swept by one replica at a time: the store's lease.
	wg.Go(func() {
		s.store.Locks().Lead(ctx, "session-sweep", func(ctx context.Context) {
			s.log.Info(LeaderMessage, "task", "session-sweep")
			t := time.NewTicker(s.opts.SweepInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					s.sweep(ctx)
				}
			}
		})
	})
	// Policies are reloaded as soon as any replica writes one, and
	// periodically in case a notification was lost.
	wake, cancel := store.Wake(s.store.Changes(), store.TopicPolicies)
	defer cancel()
	t := time.NewTicker(s.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			for _, p := range s.plugins {
				if c, ok := p.(io.Closer); ok {
					if err := c.Close(); err != nil {
						s.log.Warn("close plugin", "plugin", p.Name(), "err", err)
					}
				}
			}
			return
		case <-wake:
			s.refreshPolicy(ctx)
		case <-t.C:
			s.refreshPolicy(ctx)
		}
	}
}

// sweep deletes expired sessions and spent tokens, bounded in time so that
// a stuck store cannot pile up sweeps.
func (s *Server) sweep(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, s.opts.SweepInterval)
	defer cancel()
	now := s.now()
	n, err := s.store.Sessions().DeleteExpired(sctx, now)
	if err != nil {
		s.log.Error("sweep expired sessions", "err", err)
		return
	}
	if n > 0 {
		s.log.Debug("swept expired sessions", "count", n)
	}
	n, err = s.store.Agents().DeleteSpentTokens(sctx, now)
	if err != nil {
		s.log.Error("sweep expired spent tokens", "err", err)
		return
	}
	if n > 0 {
		s.log.Debug("swept expired spent tokens", "count", n)
	}
}

// refreshPolicy picks up a policy another replica stored.
func (s *Server) refreshPolicy(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, s.opts.SweepInterval)
	defer cancel()
	if err := s.policy.Refresh(rctx); err != nil {
		s.log.Error("refresh resource policy", "err", err)
	}
}

// limited applies l to h: a refused request gets 429 with Retry-After and
// is logged with its client network, never with its content.
func (s *Server) limited(l *limiter, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := l.allow(r.RemoteAddr, s.now())
		if v.ok {
			h(w, r)
			return
		}
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(v.wait.Seconds()))))
		from := "from your network " + v.client
		if v.global {
			from = "to this server from all clients"
		}
		limit := "client"
		if v.global {
			limit = "global"
		}
		s.metrics.rateLimited.WithLabelValues(s.limitGroup(l), limit).Inc()
		s.log.Info("rate limited", "path", r.URL.Path, "client", v.client, "global", v.global, "retry_in", v.wait.Round(time.Millisecond))
		writeProblem(w, http.StatusTooManyRequests, ProblemRateLimited, fmt.Sprintf("too many requests %s; retry in %v", from, v.wait.Round(time.Millisecond)))
	})
}
