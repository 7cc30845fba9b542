// Package nrigate is trustgate's NRI gateway: it sits between a container
// runtime's NRI socket and the runtime's plugins, and gives them what
// upstream NRI lacks, proven identity and a per-role mutation policy.
//
// Upstream, the gateway is one ordinary plugin of the runtime (NRI's stub),
// subscribed to every event. Downstream, it is the NRI runtime of its own
// plugins, built from containerd/nri's adaptation package, so collation,
// ordering and conflict detection are exactly upstream's. Plugins connect to
// the gateway's socket and authenticate with pluginauth; the relay package
// then checks their registration name and every container update they ask
// for, and forwards their stream to the adaptation's private socket, where
// the nripolicy validator judges each adjustment by its owner's role.
package nrigate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/adaptation/builtin"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustgate/trustgate/nrigate/nrilog"
	"github.com/trustgate/trustgate/nrigate/relay"
	"github.com/trustgate/trustgate/nripolicy"
	"github.com/trustgate/trustgate/pluginauth"
)

// Gateway is a running NRI gateway.
type Gateway struct {
	cfg       Config
	log       *slog.Logger
	policies  map[string]*nripolicy.Policy
	validator *nripolicy.Validator
	audit     *nripolicy.Audit
	auth      *pluginauth.Server
	down      *adaptation.Adaptation
	up        *upstream
	registry  *registry
	private   string // the adaptation's socket

	mu   sync.Mutex
	stub stub.Stub // the live upstream connection, or nil
	// serving is true while the plugins' socket accepts (see Ready).
	serving atomic.Bool
}

// New builds a gateway from a validated configuration. Metrics are
// registered on reg, which may be nil.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	nrilog.Install(log)
	audit, err := nripolicy.NewAudit(log, reg)
	if err != nil {
		return nil, err
	}
	var opts []pluginauth.ServerOption
	opts = append(opts, pluginauth.WithLogger(log), pluginauth.WithRefusalHook(func(ctx context.Context, r pluginauth.Refusal) {
		audit.Record(ctx, handshakeDecision(r))
	}))
	if cfg.KeyFile != "" {
		k, err := pluginauth.LoadPrivateKeyFile(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("nri-gateway: %w", err)
		}
		opts = append(opts, pluginauth.WithStaticKey(k))
	}
	auth, err := pluginauth.NewServer(cfg.authConfig(), opts...)
	if err != nil {
		return nil, fmt.Errorf("nri-gateway: %w", err)
	}
	policies, globals := cfg.policies()
	g := &Gateway{
		cfg:      cfg,
		log:      log,
		policies: policies,
		audit:    audit,
		auth:     auth,
		registry: newRegistry(),
		private:  filepath.Join(cfg.StateDir, "runtime.sock"),
	}
	g.validator = nripolicy.NewValidator(g.registry, globals, audit)
	foreign := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "trustgate_nri_foreign_plugins_total",
		Help: "Plugins seen taking part in a container creation on the runtime's NRI socket without coming through the gateway (or registered twice under one name), per creation.",
	}, []string{"plugin"})
	if reg != nil {
		if err := reg.Register(foreign); err != nil {
			return nil, fmt.Errorf("nri-gateway: register metrics: %w", err)
		}
	}
	roles := []string{nripolicy.UpstreamRole, nripolicy.UnauthenticatedRole}
	for r := range policies {
		roles = append(roles, r)
	}
	audit.Init(roles...)
	g.up = &upstream{
		log:          log,
		self:         cfg.PluginIndex + "-" + cfg.PluginName,
		allowOwners:  cfg.AllowUpstreamPlugins,
		knownPlugins: cfg.KnownUpstreamPlugins,
		state:        newState(),
		issued:       newIssuedLog(),
		audit:        audit,
		foreign:      foreign,
	}
	return g, nil
}

// Run serves until ctx ends: it connects upstream (reconnecting with
// backoff), and once the runtime has synchronized, accepts plugins.
func (g *Gateway) Run(ctx context.Context) error {
	if err := os.MkdirAll(g.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("nri-gateway: state dir: %w", err)
	}
	if err := os.Chmod(g.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("nri-gateway: state dir: %w", err)
	}
	adaptation.SetPluginRegistrationTimeout(time.Duration(g.cfg.RegistrationTimeout))
	// Process-wide in NRI: the gateway is the only adaptation in its
	// process.
	adaptation.SetPluginRequestTimeout(g.cfg.requestTimeout())
	if w := g.cfg.timeoutWarning(); w != "" {
		g.log.Warn(w)
	}
	down, err := adaptation.New("trustgate-nri-gateway", "v1", g.syncPlugin, g.updateUpstream,
		adaptation.WithPluginPath(filepath.Join(g.cfg.StateDir, "no-plugins")),
		adaptation.WithPluginConfigPath(filepath.Join(g.cfg.StateDir, "no-plugins")),
		adaptation.WithSocketPath(g.private),
		adaptation.WithBuiltinPlugins(&builtin.BuiltinPlugin{
			Base:  "trustgate-policy",
			Index: "00",
			Handlers: builtin.BuiltinHandlers{
				ValidateContainerAdjustment: g.validator.ValidateContainerAdjustment,
			},
		}))
	if err != nil {
		return fmt.Errorf("nri-gateway: downstream runtime: %w", err)
	}
	if err := down.Start(); err != nil {
		return fmt.Errorf("nri-gateway: downstream runtime: %w", err)
	}
	defer down.Stop()
	g.down = down
	g.up.down = down

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	wg.Go(func() {
		if err := g.upstreamLoop(ctx); err != nil {
			cancel(err)
		}
	})

	select {
	case <-g.up.state.synced:
	case <-ctx.Done():
		return stopped(ctx)
	}
	ln, err := g.listen()
	if err != nil {
		return err
	}
	aln := g.auth.Listen(ln)
	wg.Go(func() {
		<-ctx.Done()
		_ = aln.Close()
	})
	g.log.Info("accepting plugins", "socket", g.cfg.Socket)
	g.serving.Store(true)
	defer g.serving.Store(false)
	for {
		conn, err := aln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return stopped(ctx)
			}
			return fmt.Errorf("nri-gateway: accept: %w", err)
		}
		wg.Go(func() { g.serve(ctx, conn) })
	}
}

// handshakeDecision is the audit record of a refused connection.
func handshakeDecision(r pluginauth.Refusal) nripolicy.Decision {
	role := r.Role
	if role == "" {
		role = nripolicy.UnauthenticatedRole
	}
	peer := "remote " + r.Remote
	if p := r.Peer; p != nil {
		peer = fmt.Sprintf("uid %d gid %d pid %d", p.UID, p.GID, p.PID)
	}
	return nripolicy.Decision{
		Subject: nripolicy.Subject{Plugin: r.Plugin, Role: role, Fingerprint: r.Key},
		Event:   "handshake",
		Field:   "Peer",
		Key:     peer,
		Reason:  r.Reason,
	}
}

// stopped is Run's result once ctx is done: nil when its parent was
// canceled, the reason when the gateway itself had to stop.
func stopped(ctx context.Context) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return c
	}
	return nil
}

// listen creates the plugins' socket, root-only or group-restricted.
func (g *Gateway) listen() (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(g.cfg.Socket), 0o755); err != nil {
		return nil, fmt.Errorf("nri-gateway: socket dir: %w", err)
	}
	if err := os.Remove(g.cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("nri-gateway: remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", g.cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("nri-gateway: listen: %w", err)
	}
	mode := os.FileMode(0o600)
	if grp := g.cfg.SocketGroup; grp != "" {
		gid, err := lookupGroup(grp)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("nri-gateway: socket_group: %w", err)
		}
		if err := os.Chown(g.cfg.Socket, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("nri-gateway: socket_group: %w", err)
		}
		mode = 0o660
	}
	if err := os.Chmod(g.cfg.Socket, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("nri-gateway: socket mode: %w", err)
	}
	return ln, nil
}

func lookupGroup(name string) (int, error) {
	if id, err := strconv.Atoi(name); err == nil {
		return id, nil
	}
	grp, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(grp.Gid)
}

// serve carries one authenticated plugin: registration guard, then relay
// to the downstream runtime.
func (g *Gateway) serve(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	id, ok := pluginauth.IdentityOf(conn)
	if !ok {
		g.log.Error("connection without identity from the authenticating listener")
		return
	}
	chk := &checker{g: g, id: id, subject: nripolicy.Subject{Role: id.Role, Fingerprint: id.Fingerprint(), Policy: g.policies[id.Role]}}
	log := g.log.With("role", id.Role, "key_fingerprint", id.Fingerprint())
	rc, req, err := relay.Accept(ctx, conn, chk, time.Duration(g.cfg.RegistrationTimeout), log)
	if err != nil {
		log.Warn("plugin dropped before registration", "reason", err)
		return
	}
	name := req.PluginIdx + "-" + req.PluginName
	defer g.registry.release(name, chk)
	runtime, err := net.Dial("unix", g.private)
	if err != nil {
		log.Error("cannot reach the downstream runtime", "err", err)
		return
	}
	log.Info("plugin registered", "plugin", name)
	if err := rc.Run(ctx, runtime); err != nil {
		log.Warn("plugin connection ended", "plugin", name, "reason", err)
		return
	}
	log.Info("plugin disconnected", "plugin", name)
}

// checker applies one plugin's identity and role to what it sends.
type checker struct {
	g       *Gateway
	id      *pluginauth.Identity
	subject nripolicy.Subject
}

func (c *checker) Register(ctx context.Context, req *api.RegisterPluginRequest) error {
	name := req.PluginIdx + "-" + req.PluginName
	c.subject.Plugin = name
	d := nripolicy.Decision{Subject: c.subject, Event: "register", Field: "Registration", Key: name}
	switch {
	case !c.id.MayRegister(req.PluginName, req.PluginIdx):
		var names, indices []string
		if r := c.g.cfg.role(c.id.Role); r != nil {
			names, indices = r.Names, r.Indices
		}
		d.Reason = fmt.Sprintf("key may not register as %s (it authenticated as %s-%s; its role allows names %v, indices %v)",
			name, c.id.Index, c.id.Name, names, indices)
	case c.subject.Policy == nil:
		d.Reason = fmt.Sprintf("role %q has no policy", c.id.Role)
	default:
		if err := c.g.registry.claim(name, c); err != nil {
			d.Reason = err.Error()
		} else {
			d.Allowed, d.Reason = true, "registration allowed"
		}
	}
	c.g.audit.Record(ctx, d)
	if !d.Allowed {
		return errors.New(d.Reason)
	}
	return nil
}

func (c *checker) Updates(ctx context.Context, event string, updates []*api.ContainerUpdate) error {
	return c.g.validator.CheckUpdates(ctx, c.subject, event, updates)
}

// Lost records a runtime request whose answer never reached the runtime as
// a denied "lost" decision, so it is audited and counted, and warns.
func (c *checker) Lost(ctx context.Context, l relay.LostRequest) {
	c.g.audit.Record(ctx, nripolicy.Decision{Subject: c.subject, Event: "lost", Container: l.ContainerID,
		Field: l.Method, Reason: "the plugin's answer did not reach the runtime: " + l.Reason})
	c.g.log.Warn("a plugin's adjustments were lost", "plugin", c.subject.Plugin, "role", c.subject.Role,
		"request", l.Method, "container", l.ContainerID, "reason", l.Reason)
}

// registry maps registered plugin names to the connection holding them.
type registry struct {
	mu    sync.Mutex
	names map[string]*checker
}

func newRegistry() *registry { return &registry{names: map[string]*checker{}} }

func (r *registry) claim(name string, c *checker) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if other, taken := r.names[name]; taken && other != c {
		return fmt.Errorf("plugin name %s is in use by another connection (key %s)", name, other.subject.Fingerprint)
	}
	r.names[name] = c
	return nil
}

func (r *registry) release(name string, c *checker) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names[name] == c {
		delete(r.names, name)
	}
}

// Lookup implements nripolicy.Roles.
func (r *registry) Lookup(name string) (nripolicy.Subject, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.names[name]
	if !ok {
		return nripolicy.Subject{}, false
	}
	return c.subject, true
}

// syncPlugin synchronizes a newly connected downstream plugin with the
// runtime's state as the gateway last saw it. Updates the plugin returns
// were checked by the relay; they go upstream.
func (g *Gateway) syncPlugin(ctx context.Context, cb adaptation.SyncCB) error {
	pods, ctrs := g.up.state.snapshot()
	updates, err := cb(ctx, pods, ctrs)
	if err != nil {
		return err
	}
	if len(updates) > 0 {
		if _, err := g.updateUpstream(ctx, updates); err != nil {
			g.log.Warn("updates from a plugin's synchronization failed upstream", "err", err)
		}
	}
	return nil
}

// updateUpstream sends downstream plugins' unsolicited updates, already
// checked by the relay, to the runtime.
func (g *Gateway) updateUpstream(_ context.Context, updates []*api.ContainerUpdate) ([]*api.ContainerUpdate, error) {
	g.mu.Lock()
	s := g.stub
	g.mu.Unlock()
	if s == nil {
		return updates, errors.New("nri-gateway: not connected to the runtime")
	}
	return s.UpdateContainers(updates)
}

// upstreamLoop keeps one connection to the runtime, reconnecting with
// exponential backoff; the runtime resynchronizes the gateway on each
// connection.
//
// Launched by the runtime (containerd's plugin_path, the only way in with
// disable_connections), the gateway speaks NRI on the socket it inherited
// (NRI_PLUGIN_SOCKET); it cannot reconnect once that closes, so it returns
// an error then, and the runtime launches it again when it restarts.
func (g *Gateway) upstreamLoop(ctx context.Context) error {
	launched := os.Getenv(api.PluginSocketEnvVar) != ""
	if launched {
		g.log.Info("launched by the runtime: using its pre-connected NRI socket", "fd", os.Getenv(api.PluginSocketEnvVar))
		// The runtime names a launched plugin after its file, and the
		// stub takes that name from the environment.
		name, idx := os.Getenv(api.PluginNameEnvVar), os.Getenv(api.PluginIdxEnvVar)
		if name != g.cfg.PluginName || idx != g.cfg.PluginIndex {
			g.log.Warn("the runtime launched the gateway under another name than plugin_index-plugin_name; name its file in plugin_path after them",
				"launched_as", idx+"-"+name, "configured", g.cfg.PluginIndex+"-"+g.cfg.PluginName)
		}
		g.up.self = idx + "-" + name
	}
	backoff := 100 * time.Millisecond
	maxBackoff := time.Duration(g.cfg.ReconnectMaxBackoff)
	for ctx.Err() == nil {
		closed := make(chan struct{})
		var once sync.Once
		opts := []stub.Option{
			stub.WithOnClose(func() { once.Do(func() { close(closed) }) }),
			stub.WithFailurePolicy(&api.FailurePolicy{FailRequest: g.cfg.FailClosed, KeepConnected: true}),
		}
		if !launched {
			opts = append(opts, stub.WithPluginName(g.cfg.PluginName), stub.WithPluginIdx(g.cfg.PluginIndex),
				stub.WithSocketPath(g.cfg.UpstreamSocket))
		}
		var plugin any = g.up
		if !g.cfg.ValidateUpstream {
			plugin = nonValidating{g.up}
		}
		s, err := stub.New(plugin, opts...)
		if err == nil {
			err = s.Start(ctx)
		}
		if err != nil && launched {
			return fmt.Errorf("nri-gateway: the runtime's pre-connected NRI socket: %w", err)
		}
		if err != nil {
			g.log.Warn("cannot connect to the runtime's NRI socket; retrying", "socket", g.cfg.UpstreamSocket, "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = 100 * time.Millisecond
		g.mu.Lock()
		g.stub = s
		g.mu.Unlock()
		lost := false
		select {
		case <-closed:
			lost = true
		case <-ctx.Done():
		}
		g.mu.Lock()
		g.stub = nil
		g.mu.Unlock()
		s.Stop()
		if lost && launched {
			return errors.New("nri-gateway: the runtime closed the NRI connection it launched the gateway with; a launched gateway cannot reconnect (the runtime launches it again when it restarts)")
		}
		if lost {
			g.log.Warn("lost the runtime's NRI connection; reconnecting")
		}
	}
	return nil
}

// nonValidating hides upstream's validator method, for runtimes or setups
// where the gateway should not validate upstream.
type nonValidating struct{ *upstream }

// ValidateContainerAdjustment shadows the embedded method so that the stub
// does not subscribe the gateway as a validator.
func (nonValidating) ValidateContainerAdjustment() {}
