package nrigate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/internal/syncbuf"
	"github.com/trustgate/trustgate/nrigate/nrilog"
	"github.com/trustgate/trustgate/nripolicy"
	"github.com/trustgate/trustgate/pluginauth"
	"github.com/trustgate/trustgate/seccomp"
)

// standIn is an in-process containerd: NRI's adaptation on the upstream
// socket, as containerd builds it.
type standIn struct {
	*adaptation.Adaptation
	socket string
	mu     sync.Mutex
	pods   []*api.PodSandbox
	ctrs   []*api.Container
	upd    []*api.ContainerUpdate
}

func newStandIn(t testing.TB, dir string) *standIn {
	t.Helper()
	s := &standIn{socket: filepath.Join(dir, "containerd-nri.sock"),
		pods: []*api.PodSandbox{{Id: "pod0", Name: "web", Namespace: "prod", Uid: "u0"}}}
	sync := func(ctx context.Context, cb adaptation.SyncCB) error {
		s.mu.Lock()
		pods, ctrs := s.pods, s.ctrs
		s.mu.Unlock()
		_, err := cb(ctx, pods, ctrs)
		return err
	}
	update := func(_ context.Context, u []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		s.mu.Lock()
		s.upd = append(s.upd, u...)
		s.mu.Unlock()
		return nil, nil
	}
	a, err := adaptation.New("containerd", "2.1.0", sync, update,
		adaptation.WithPluginPath(filepath.Join(dir, "none")), adaptation.WithPluginConfigPath(filepath.Join(dir, "none")),
		adaptation.WithSocketPath(s.socket))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	s.Adaptation = a
	return s
}

var seq struct {
	sync.Mutex
	n int
}

func nextID() string {
	seq.Lock()
	defer seq.Unlock()
	seq.n++
	return fmt.Sprintf("ctr%d", seq.n)
}

// create creates a container the way containerd would ask NRI, with a
// runtime-default seccomp profile.
func (s *standIn) create(ctx context.Context) (*api.CreateContainerResponse, error) {
	return s.CreateContainer(ctx, &api.CreateContainerRequest{
		Pod: &api.PodSandbox{Id: "pod0", Name: "web", Namespace: "prod", Uid: "u0"},
		Container: &api.Container{Id: nextID(), PodSandboxId: "pod0", Name: "app", State: api.ContainerState_CONTAINER_CREATED,
			Linux: &api.LinuxContainer{
				SeccompProfile: &api.SecurityProfile{ProfileType: api.SecurityProfile_RUNTIME_DEFAULT},
				SeccompPolicy:  baseSeccomp(),
			}},
	})
}

func baseSeccomp() *api.LinuxSeccomp {
	return &api.LinuxSeccomp{DefaultAction: "SCMP_ACT_ERRNO", Architectures: []string{"SCMP_ARCH_X86_64"},
		Syscalls: []*api.LinuxSyscall{{Names: []string{"read", "write", "ptrace"}, Action: "SCMP_ACT_ALLOW"}}}
}

func seccompWith(names ...string) *api.LinuxSeccomp {
	s := baseSeccomp()
	s.Syscalls[0].Names = names
	return s
}

// env is a stand-in runtime with a gateway in front of it.
type env struct {
	t      testing.TB
	dir    string
	rt     *standIn
	cfg    Config
	logs   *syncbuf.Buffer
	cancel context.CancelFunc
	done   chan error
	keys   map[string]*pluginauth.PrivateKey
	reg    *prometheus.Registry
}

func newEnv(t testing.TB, mutate func(e *env, c *Config)) *env {
	t.Helper()
	dir, err := os.MkdirTemp("", "tg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, dir: dir, rt: newStandIn(t, dir), logs: &syncbuf.Buffer{}, keys: map[string]*pluginauth.PrivateKey{}}
	for _, name := range []string{"injector", "security", "trusted", "resources"} {
		k, err := pluginauth.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		e.keys[name] = k
	}
	c := DefaultConfig()
	c.UpstreamSocket = e.rt.socket
	c.Socket = filepath.Join(dir, "gw.sock")
	c.StateDir = filepath.Join(dir, "state")
	c.HandshakeTimeout = pluginauth.Duration(500 * time.Millisecond)
	role := func(name, plugin, idx string, p nripolicy.Policy) Role {
		return Role{RoleConfig: pluginauth.RoleConfig{Role: name, Keys: []string{e.keys[name].Public().String()},
			Names: []string{plugin}, Indices: []string{idx}}, Policy: p}
	}
	c.Roles = []Role{
		role("injector", "injector", "20", nripolicy.Policy{Env: nripolicy.Globs{"INJECTED_*"}}),
		role("security", "security", "30", nripolicy.Policy{Seccomp: seccomp.Policy{Mode: seccomp.ModeTightenOnly}}),
		role("trusted", "trusted", "40", nripolicy.AllowAll()),
		role("resources", "resources", "50", nripolicy.Policy{Resources: nripolicy.ResourcePolicy{CPU: true}}),
	}
	if mutate != nil {
		mutate(e, &c)
	}
	e.cfg = c
	e.start()
	return e
}

func (e *env) start() {
	e.t.Helper()
	log := slog.New(slog.NewJSONHandler(e.logs, nil))
	e.reg = prometheus.NewRegistry()
	g, err := New(e.cfg, log, e.reg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel, e.done = cancel, make(chan error, 1)
	go func() { e.done <- g.Run(ctx) }()
	// The socket file exists between bind and listen; the log record
	// comes after both.
	eventually(e.t, "gateway to accept plugins", func() error {
		for _, r := range e.logs.Records() {
			if r["msg"] == "accepting plugins" {
				return nil
			}
		}
		return errors.New("not yet")
	})
	e.t.Cleanup(e.stop)
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	select {
	case err := <-e.done:
		if err != nil {
			e.t.Errorf("gateway: %v", err)
		}
	case <-time.After(10 * time.Second):
		e.t.Error("gateway did not stop")
	}
	e.cancel = nil
}

// testPlugin is a real NRI stub plugin that adjusts created containers.
type testPlugin struct {
	stub.Stub
	mu     sync.Mutex
	adjust func(*api.ContainerAdjustment)
	closed chan struct{}
}

func (p *testPlugin) CreateContainer(_ context.Context, _ *api.PodSandbox, _ *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	adj := &api.ContainerAdjustment{}
	p.mu.Lock()
	if p.adjust != nil {
		p.adjust(adj)
	}
	p.mu.Unlock()
	return adj, nil, nil
}

// connect dials the gateway, authenticates with key (nil: no key) as
// idx-name, and registers the same way.
func (e *env) connect(key *pluginauth.PrivateKey, idx, name string, adjust func(*api.ContainerAdjustment)) (*testPlugin, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pluginauth.Dial(ctx, e.cfg.Socket, key, name, idx)
	if err != nil {
		return nil, err
	}
	p := &testPlugin{adjust: adjust, closed: make(chan struct{})}
	s, err := stub.New(p, stub.WithPluginName(name), stub.WithPluginIdx(idx), stub.WithConnection(conn),
		stub.WithOnClose(func() { close(p.closed) }))
	if err != nil {
		conn.Close()
		return nil, err
	}
	p.Stub = s
	if err := s.Start(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	e.t.Cleanup(s.Stop)
	return p, nil
}

// eventually retries cond until it returns nil, or fails the test.
func eventually(t testing.TB, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func envOf(rsp *api.CreateContainerResponse) map[string]string {
	out := map[string]string{}
	for _, kv := range rsp.GetAdjust().GetEnv() {
		out[kv.Key] = kv.Value
	}
	return out
}

func TestAllowedAdjustmentApplies(t *testing.T) {
	e := newEnv(t, nil)
	if _, err := e.connect(e.keys["injector"], "20", "injector", func(a *api.ContainerAdjustment) { a.AddEnv("INJECTED_ID", "spiffe://td/x") }); err != nil {
		t.Fatal(err)
	}
	eventually(t, "adjustment through the gateway", func() error {
		rsp, err := e.rt.create(context.Background())
		if err != nil {
			return err
		}
		if envOf(rsp)["INJECTED_ID"] != "spiffe://td/x" {
			return fmt.Errorf("env %v", envOf(rsp))
		}
		return nil
	})
}

func TestDisallowedAdjustmentIsRejectedWithReason(t *testing.T) {
	e := newEnv(t, nil)
	if _, err := e.connect(e.keys["injector"], "20", "injector", func(a *api.ContainerAdjustment) { a.AddEnv("LD_PRELOAD", "/evil.so") }); err != nil {
		t.Fatal(err)
	}
	eventually(t, "rejection", func() error {
		_, err := e.rt.create(context.Background())
		if err == nil || !strings.Contains(err.Error(), `environment variable "LD_PRELOAD"`) {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
}

func TestKeylessPlugin(t *testing.T) {
	t.Run("refused when authentication is required", func(t *testing.T) {
		e := newEnv(t, nil)
		_, err := e.connect(nil, "60", "anon", nil)
		if err == nil || !errors.Is(err, pluginauth.ErrAuthenticationRequired) {
			t.Fatalf("keyless plugin: %v", err)
		}
	})
	t.Run("default role when not required", func(t *testing.T) {
		e := newEnv(t, func(e *env, c *Config) {
			c.RequireAuthentication = false
			c.Roles = append(c.Roles, Role{RoleConfig: pluginauth.RoleConfig{Role: "default", Names: []string{"anon"}, Indices: []string{"6?"}},
				Policy: nripolicy.Policy{Env: nripolicy.Globs{"ANON_*"}}})
		})
		if _, err := e.connect(nil, "60", "anon", func(a *api.ContainerAdjustment) { a.AddEnv("ANON_OK", "1") }); err != nil {
			t.Fatal(err)
		}
		eventually(t, "default role adjustment", func() error {
			rsp, err := e.rt.create(context.Background())
			if err != nil || envOf(rsp)["ANON_OK"] != "1" {
				return fmt.Errorf("%v %v", envOf(rsp), err)
			}
			return nil
		})
	})
}

func TestKeyClaimingAnotherPluginsNameIsRefused(t *testing.T) {
	e := newEnv(t, nil)
	// Claimed in the handshake: refused there.
	if _, err := e.connect(e.keys["injector"], "40", "trusted", nil); !errors.Is(err, pluginauth.ErrNameNotAllowed) {
		t.Fatalf("handshake claim of another role's name: %v", err)
	}
	// Honest in the handshake, then registering as another role's plugin:
	// cut by the registration guard before NRI registration completes.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pluginauth.Dial(ctx, e.cfg.Socket, e.keys["injector"], "injector", "20")
	if err != nil {
		t.Fatal(err)
	}
	s, err := stub.New(&testPlugin{}, stub.WithPluginName("trusted"), stub.WithPluginIdx("40"), stub.WithConnection(conn))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err == nil {
		s.Stop()
		t.Fatal("registration under another role's name succeeded")
	}
	eventually(t, "audit record of the refused registration", func() error {
		for _, r := range e.logs.Records() {
			if r["audit"] == "nri" && r["event"] == "register" && r["verdict"] == "deny" && r["key"] == "40-trusted" && r["role"] == "injector" {
				return nil
			}
		}
		return errors.New("no deny record")
	})
}

func TestSeccompTightenOnlyVersusAny(t *testing.T) {
	e := newEnv(t, nil)
	loosen := func(a *api.ContainerAdjustment) {
		a.SetLinuxSeccompPolicy(seccompWith("read", "write", "ptrace", "mount"))
	}
	p, err := e.connect(e.keys["security"], "30", "security", loosen)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "tighten-only rejects a loosening", func() error {
		_, err := e.rt.create(context.Background())
		if err == nil || !strings.Contains(err.Error(), "mount") || !strings.Contains(err.Error(), "30-security") {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
	var audited bool
	for _, r := range e.logs.Records() {
		if r["verdict"] == "deny" && r["field"] == "SeccompPolicy" && strings.Contains(fmt.Sprint(r["reason"]), "mount") {
			audited = true
		}
	}
	if !audited {
		t.Fatal("no audit record with the seccomp reason")
	}
	// A tightening by the same role passes.
	p.mu.Lock()
	p.adjust = func(a *api.ContainerAdjustment) { a.SetLinuxSeccompPolicy(seccompWith("read", "write")) }
	p.mu.Unlock()
	if _, err := e.rt.create(context.Background()); err != nil {
		t.Fatalf("tightening rejected: %v", err)
	}
	p.Stop()
	// The same loosening by an "any" role passes.
	if _, err := e.connect(e.keys["trusted"], "40", "trusted", loosen); err != nil {
		t.Fatal(err)
	}
	eventually(t, "any role's loosening applies", func() error {
		rsp, err := e.rt.create(context.Background())
		if err != nil {
			return err
		}
		if rsp.GetAdjust().GetLinux().GetSeccompPolicy() == nil {
			return errors.New("no seccomp adjustment yet")
		}
		return nil
	})
}

func TestUnsolicitedUpdatePolicy(t *testing.T) {
	e := newEnv(t, nil)
	p, err := e.connect(e.keys["resources"], "50", "resources", nil)
	if err != nil {
		t.Fatal(err)
	}
	cpu := []*api.ContainerUpdate{{ContainerId: "ctr1", Linux: &api.LinuxContainerUpdate{Resources: &api.LinuxResources{Cpu: &api.LinuxCPU{Shares: api.UInt64(256)}}}}}
	if _, err := p.UpdateContainers(cpu); err != nil {
		t.Fatalf("allowed update: %v", err)
	}
	mem := []*api.ContainerUpdate{{ContainerId: "ctr1", Linux: &api.LinuxContainerUpdate{Resources: &api.LinuxResources{Memory: &api.LinuxMemory{Limit: api.Int64(1 << 20)}}}}}
	_, err = p.UpdateContainers(mem)
	if err == nil || !strings.Contains(err.Error(), "memory resources") {
		t.Fatalf("disallowed update: %v", err)
	}
	e.rt.mu.Lock()
	defer e.rt.mu.Unlock()
	if len(e.rt.upd) != 1 || e.rt.upd[0].GetLinux().GetResources().GetCpu() == nil {
		t.Fatalf("runtime received %v", e.rt.upd)
	}
}

func TestStalledHandshakeDoesNotDelayOthers(t *testing.T) {
	e := newEnv(t, func(_ *env, c *Config) { c.HandshakeTimeout = pluginauth.Duration(3 * time.Second) })
	if _, err := e.connect(e.keys["injector"], "20", "injector", func(a *api.ContainerAdjustment) { a.AddEnv("INJECTED_X", "1") }); err != nil {
		t.Fatal(err)
	}
	// Several peers connect and say nothing.
	for range 4 {
		c, err := net.Dial("unix", e.cfg.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	start := time.Now()
	if _, err := e.connect(e.keys["trusted"], "40", "trusted", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "container creation with stalled peers around", func() error {
		rsp, err := e.rt.create(context.Background())
		if err != nil || envOf(rsp)["INJECTED_X"] != "1" {
			return fmt.Errorf("%v %v", envOf(rsp), err)
		}
		return nil
	})
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a plugin connected and a container was created only after %v, while stalled handshakes wait for 3s", d)
	}
}

func TestBypassingTheGatewayIsRejectedUpstream(t *testing.T) {
	e := newEnv(t, nil)
	// A plugin dials the runtime directly, skipping authentication.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p := &testPlugin{adjust: func(a *api.ContainerAdjustment) { a.AddEnv("SNEAKY", "1") }}
	s, err := stub.New(p, stub.WithPluginName("sneaky"), stub.WithPluginIdx("05"), stub.WithSocketPath(e.rt.socket))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	eventually(t, "upstream rejection of the bypassing plugin", func() error {
		_, err := e.rt.create(context.Background())
		if err == nil || !strings.Contains(err.Error(), "05-sneaky") {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
}

func TestGatewayRestartKeepsPolicing(t *testing.T) {
	e := newEnv(t, nil)
	connectLoop := func(ctx context.Context, key *pluginauth.PrivateKey, idx, name string, adjust func(*api.ContainerAdjustment)) {
		for ctx.Err() == nil {
			p, err := e.connect(key, idx, name, adjust)
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			select {
			case <-p.closed:
			case <-ctx.Done():
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go connectLoop(ctx, e.keys["injector"], "20", "injector", func(a *api.ContainerAdjustment) { a.AddEnv("INJECTED_R", "1") })
	go connectLoop(ctx, e.keys["security"], "30", "security", func(a *api.ContainerAdjustment) {
		a.SetLinuxSeccompPolicy(seccompWith("read", "write", "ptrace", "mount"))
	})
	check := func() error {
		_, err := e.rt.create(context.Background())
		if err == nil || !strings.Contains(err.Error(), "mount") {
			return fmt.Errorf("loosening not rejected: %v", err)
		}
		return nil
	}
	eventually(t, "policing before restart", check)
	e.stop()
	e.logs = &syncbuf.Buffer{}
	e.start()
	eventually(t, "policing after restart", check)
	for _, r := range e.logs.Records() {
		if r["msg"] == "plugin registered" && r["role"] == "security" {
			return
		}
	}
	t.Fatal("the plugin did not reconnect to the restarted gateway")
}

func TestConfig(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	c.Socket = "relative.sock"
	c.PluginIndex = "7"
	c.DefaultValidator = &nripolicy.DefaultValidatorConfig{Enable: true}
	c.Roles = []Role{{RoleConfig: pluginauth.RoleConfig{Role: "default", Names: []string{"*"}, Indices: []string{"*"}},
		Policy: nripolicy.Policy{Env: nripolicy.Globs{"[x"}}}}
	err := c.Validate()
	for _, want := range []string{"socket = \"relative.sock\"", "plugin_index", "both [default_validator]", "policy.env"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
}

func TestMain(m *testing.M) {
	if path := os.Getenv(gatewayHelperEnv); path != "" {
		os.Exit(gatewayHelper(path))
	}
	if socket := os.Getenv(runtimeHelperEnv); socket != "" {
		nrilog.Install(slog.New(slog.DiscardHandler))
		os.Exit(runtimeHelper(socket))
	}
	// NRI's logger is process-wide: install it before any NRI goroutine
	// starts.
	if os.Getenv("TG_DEBUG_NRI") != "" {
		nrilog.Install(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	} else {
		nrilog.Install(slog.New(slog.DiscardHandler))
	}
	os.Exit(m.Run())
}

func TestShippedExampleConfigIsValid(t *testing.T) {
	c := DefaultConfig()
	if err := config.LoadFile(filepath.Join("..", "examples", "nri-gateway.toml"), &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Roles) != 3 || c.Roles[0].Role != "workload-identity" || c.Roles[1].Policy.Seccomp.Mode != seccomp.ModeTightenOnly || !c.Roles[0].Policy.Mounts.ReadOnly {
		t.Fatalf("example decoded as %+v", c.Roles)
	}
	var d Config
	if err := config.Decode([]byte(DefaultConfigTOML()), &d); err != nil {
		t.Fatal(err)
	}
}

func TestSocketIsRootOnly(t *testing.T) {
	e := newEnv(t, nil)
	fi, err := os.Stat(e.cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("plugin socket mode %v, want a 0600 socket", fi.Mode())
	}
	fi, err = os.Stat(e.cfg.StateDir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir (the private runtime socket's) mode %v %v, want 0700", fi.Mode(), err)
	}
}

// runtimeProxy stands between the gateway and the runtime, so that a test
// can drop every connection at once, as a runtime process that dies does,
// and send new ones to the runtime that replaces it.
type runtimeProxy struct {
	mu     sync.Mutex
	target string
	conns  []net.Conn
}

func newRuntimeProxy(t testing.TB, socket, target string) *runtimeProxy {
	t.Helper()
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &runtimeProxy{target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			up, err := net.Dial("unix", p.target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

// restart drops every connection and sends new ones to target.
func (p *runtimeProxy) restart(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns, p.target = nil, target
}

// TestRuntimeRestartReconnectsAndPolices restarts the runtime under the
// gateway: the gateway reconnects, resynchronizes, and containers created
// by the new runtime are policed as before.
func TestRuntimeRestartReconnectsAndPolices(t *testing.T) {
	var proxy *runtimeProxy
	e := newEnv(t, func(e *env, c *Config) {
		c.ReconnectMaxBackoff = pluginauth.Duration(200 * time.Millisecond)
		c.UpstreamSocket = filepath.Join(e.dir, "proxy.sock")
		proxy = newRuntimeProxy(t, c.UpstreamSocket, e.rt.socket)
	})
	if _, err := e.connect(e.keys["injector"], "20", "injector", func(a *api.ContainerAdjustment) { a.AddEnv("LD_PRELOAD", "/x.so") }); err != nil {
		t.Fatal(err)
	}
	policed := func(rt *standIn) func() error {
		return func() error {
			_, err := rt.create(context.Background())
			if err == nil || !strings.Contains(err.Error(), "LD_PRELOAD") {
				return fmt.Errorf("not policed: %v", err)
			}
			return nil
		}
	}
	eventually(t, "policing by the first runtime", policed(e.rt))
	// A new runtime, as containerd after a restart, with a pod the gateway
	// has not seen.
	dir2, err := os.MkdirTemp("", "tg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir2) })
	rt2 := newStandIn(t, dir2)
	rt2.mu.Lock()
	rt2.pods = append(rt2.pods, &api.PodSandbox{Id: "pod1", Name: "new", Namespace: "prod", Uid: "u1"})
	rt2.mu.Unlock()
	proxy.restart(rt2.socket)
	eventually(t, "policing by the restarted runtime", policed(rt2))
	eventually(t, "resynchronization", func() error {
		for _, r := range e.logs.Records() {
			if r["msg"] == "synchronized with runtime" && r["pods"] == float64(2) {
				return nil
			}
		}
		return errors.New("the gateway did not resynchronize with the new runtime")
	})
}

func TestUpstreamAllowList(t *testing.T) {
	u := &upstream{log: slog.New(slog.DiscardHandler), self: "10-trustgate-gateway", allowOwners: nripolicy.Globs{"05-legacy-*"}, issued: newIssuedLog()}
	req := func(owner string) *api.ValidateContainerAdjustmentRequest {
		o := api.NewOwningPlugins()
		if err := o.ClaimEnv("c1", "X", owner); err != nil {
			t.Fatal(err)
		}
		return &api.ValidateContainerAdjustmentRequest{Container: &api.Container{Id: "c1"}, Owners: o}
	}
	for owner, ok := range map[string]bool{"10-trustgate-gateway": true, "05-legacy-dns": true, "05-other": false, "06-legacy-dns": false} {
		if err := u.ValidateContainerAdjustment(context.Background(), req(owner)); (err == nil) != ok {
			t.Errorf("owner %s: %v, want allowed=%v", owner, err, ok)
		}
	}
}

// An unknown socket_group is found at start-up, with the fix; a known one
// (by name or number) passes.
func TestConfigUnknownSocketGroup(t *testing.T) {
	c := DefaultConfig()
	c.SocketGroup = "no-such-group-trustgate"
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), `socket_group = "no-such-group-trustgate"`) || !strings.Contains(err.Error(), "groupadd") {
		t.Fatalf("unknown group: %v", err)
	}
	for _, g := range []string{"root", "0"} {
		c.SocketGroup = g
		if err := c.Validate(); err != nil {
			t.Errorf("socket_group %q: %v", g, err)
		}
	}
}
