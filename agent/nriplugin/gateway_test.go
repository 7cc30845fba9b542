package nriplugin_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/trustgate/trustgate/agent/attestor/nri"
	"github.com/trustgate/trustgate/agent/cache"
	"github.com/trustgate/trustgate/agent/internal/testca"
	"github.com/trustgate/trustgate/agent/nriplugin"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/internal/syncbuf"
	"github.com/trustgate/trustgate/nrigate"
	"github.com/trustgate/trustgate/nrigate/nrilog"
	"github.com/trustgate/trustgate/pluginauth"
)

func TestMain(m *testing.M) {
	// NRI's logger is process-wide: install it before any NRI goroutine.
	nrilog.Install(slog.New(slog.DiscardHandler))
	os.Exit(m.Run())
}

// The workload-identity role of examples/nri-gateway.toml allows this
// source and destination.
const (
	socketDir   = "/run/trustgate/workload-api"
	destination = "/spiffe-workload-api"
)

// runtime is an in-process containerd: NRI's adaptation, as containerd
// builds it, with the pods and containers it reports at Synchronize.
type runtime struct {
	*adaptation.Adaptation
	socket string
	mu     sync.Mutex
	pods   []*api.PodSandbox
	ctrs   []*api.Container
	synced [][]*api.ContainerUpdate // what plugins answered to Synchronize
	upd    []*api.ContainerUpdate   // unsolicited updates
}

func newRuntime(t testing.TB, dir string, pods []*api.PodSandbox, ctrs []*api.Container) *runtime {
	t.Helper()
	r := &runtime{socket: filepath.Join(dir, "containerd-nri.sock"), pods: pods, ctrs: ctrs}
	syncFn := func(ctx context.Context, cb adaptation.SyncCB) error {
		r.mu.Lock()
		pods, ctrs := r.pods, r.ctrs
		r.mu.Unlock()
		u, err := cb(ctx, pods, ctrs)
		r.mu.Lock()
		r.synced = append(r.synced, u)
		r.mu.Unlock()
		return err
	}
	update := func(_ context.Context, u []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		r.mu.Lock()
		r.upd = append(r.upd, u...)
		r.mu.Unlock()
		return nil, nil
	}
	a, err := adaptation.New("containerd", "2.1.0", syncFn, update,
		adaptation.WithPluginPath(filepath.Join(dir, "none")), adaptation.WithPluginConfigPath(filepath.Join(dir, "none")),
		adaptation.WithSocketPath(r.socket))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	r.Adaptation = a
	return r
}

// env is a runtime with the gateway in front of it, configured from the
// shipped example with the workload-identity role's key replaced by key.
type env struct {
	rt   *runtime
	cfg  nrigate.Config
	logs *syncbuf.Buffer
	key  *pluginauth.PrivateKey
	stop func()
}

// startGateway runs a gateway with e.cfg until stop or the test's end.
func (e *env) startGateway(t testing.TB) {
	t.Helper()
	before := len(e.logs.Records())
	g, err := nrigate.New(e.cfg, slog.New(slog.NewJSONHandler(e.logs, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("gateway: %v", err)
			}
		})
	}
	t.Cleanup(e.stop)
	eventually(t, "the gateway to accept plugins", func() error {
		for _, r := range e.logs.Records()[before:] {
			if r["msg"] == "accepting plugins" {
				return nil
			}
		}
		return errors.New("not yet")
	})
}

func newEnv(t testing.TB, pods []*api.PodSandbox, ctrs []*api.Container, mutate ...func(*nrigate.Config)) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the shipped role's socket directory is under /run: needs root")
	}
	if _, err := os.Stat(socketDir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(socketDir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(socketDir) })
	}
	dir, err := os.MkdirTemp("", "tgnri")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	key, err := pluginauth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	c := nrigate.DefaultConfig()
	if err := config.LoadFile(filepath.Join("..", "..", "examples", "nri-gateway.toml"), &c); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(c.Roles, func(r nrigate.Role) bool { return r.Role == "workload-identity" })
	if i < 0 {
		t.Fatal("the example has no workload-identity role")
	}
	c.Roles[i].Keys = []string{key.Public().String()}
	e := &env{rt: newRuntime(t, dir, pods, ctrs), logs: &syncbuf.Buffer{}, key: key}
	c.UpstreamSocket = e.rt.socket
	c.Socket = filepath.Join(dir, "gw.sock")
	c.StateDir = filepath.Join(dir, "state")
	c.AllowedPeerUIDs = []uint32{uint32(os.Getuid())}
	for _, m := range mutate {
		m(&c)
	}
	e.cfg = c
	e.startGateway(t)
	return e
}

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

func pod(id, ns string, labels, annotations map[string]string) *api.PodSandbox {
	return &api.PodSandbox{Id: id, Name: id, Namespace: ns, Uid: "uid-" + id, Labels: labels, Annotations: annotations}
}

func ctr(p *api.PodSandbox, id string) *api.Container {
	return &api.Container{Id: id, PodSandboxId: p.Id, Name: "app", State: api.ContainerState_CONTAINER_CREATED,
		Linux: &api.LinuxContainer{CgroupsPath: "/kubepods/" + p.Id + "/" + id}}
}

// startPlugin runs the agent's plugin against the gateway with the key.
func (e *env) startPlugin(t testing.TB, a *nri.Attestor, match func([]cache.Selector) bool, optIn string) {
	t.Helper()
	p, err := nriplugin.New(nriplugin.Config{
		GatewaySocket: e.cfg.Socket, Key: e.key, Attestor: a,
		SocketDir: socketDir, Destination: destination, Match: match, OptInAnnotation: optIn,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func (e *env) create(p *api.PodSandbox, c *api.Container) (*api.CreateContainerResponse, error) {
	return e.rt.CreateContainer(context.Background(), &api.CreateContainerRequest{Pod: p, Container: c})
}

func injected(rsp *api.CreateContainerResponse) (mount *api.Mount, env string) {
	for _, m := range rsp.GetAdjust().GetMounts() {
		if m.Destination == destination {
			mount = m
		}
	}
	for _, kv := range rsp.GetAdjust().GetEnv() {
		if kv.Key == nriplugin.EndpointEnv {
			env = kv.Value
		}
	}
	return mount, env
}

// matchCache is the agent's cache holding one entry for k8s:ns:demo and
// k8s:pod-label:app:web, as issue 14's demo registers.
func matchCache(t testing.TB) func([]cache.Selector) bool {
	t.Helper()
	ca, err := testca.New(spiffeid.RequireTrustDomainFromString("example.org"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(cache.Config{Issuer: ca, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetEntries([]cache.Entry{{ID: "web", SPIFFEID: "spiffe://example.org/web", ParentID: "spiffe://example.org/agent",
		Selectors: []cache.Selector{{Type: "k8s", Value: "ns:demo"}, {Type: "k8s", Value: "pod-label:app:web"}}}}); err != nil {
		t.Fatal(err)
	}
	return nriplugin.MatchCache(c)
}

// TestInjectionThroughTheGateway: the agent's plugin, with its key and the
// shipped workload-identity role, gives the socket mount and env to a
// container whose pod matches an entry, or opts in by annotation, through
// the real gateway; others are untouched. A container running before the
// plugin connected is learnt from Synchronize and not updated; start,
// stop and pod removal reach the attestor's index.
func TestInjectionThroughTheGateway(t *testing.T) {
	web := pod("running", "demo", map[string]string{"app": "web"}, nil)
	running := ctr(web, "running-ctr")
	running.State = api.ContainerState_CONTAINER_RUNNING
	e := newEnv(t, []*api.PodSandbox{web}, []*api.Container{running})
	a := nri.New(nri.Config{})
	e.startPlugin(t, a, matchCache(t), "trustgate.dev/workload-api")

	newWeb := pod("web2", "demo", map[string]string{"app": "web"}, nil)
	eventually(t, "injection through the gateway", func() error {
		rsp, err := e.create(newWeb, ctr(newWeb, "web2-ctr"))
		if err != nil {
			return err
		}
		m, env := injected(rsp)
		if m == nil || env == "" {
			return fmt.Errorf("adjustment %v", rsp.GetAdjust())
		}
		if m.Source != socketDir || m.Type != "bind" || !slices.Equal(m.Options, nriplugin.MountOptions) {
			t.Fatalf("mount %v", m)
		}
		if env != "unix://"+destination+"/"+nriplugin.DefaultSocketName {
			t.Fatalf("env %q", env)
		}
		return nil
	})
	if a.Len() != 1 {
		t.Fatalf("after Synchronize the attestor knows %d containers", a.Len())
	}
	e.rt.mu.Lock()
	for _, u := range e.rt.synced {
		if len(u) != 0 {
			t.Errorf("Synchronize answered updates %v", u)
		}
	}
	if len(e.rt.upd) != 0 {
		t.Errorf("unsolicited updates %v", e.rt.upd)
	}
	e.rt.mu.Unlock()

	for _, tc := range []struct {
		name string
		pod  *api.PodSandbox
		want bool
	}{
		{"another namespace", pod("other", "prod", map[string]string{"app": "web"}, nil), false},
		{"another label", pod("db", "demo", map[string]string{"app": "db"}, nil), false},
		{"opt-in annotation", pod("opt", "prod", nil, map[string]string{"trustgate.dev/workload-api": "true"}), true},
		{"opt-in annotation not true", pod("opt2", "prod", nil, map[string]string{"trustgate.dev/workload-api": "yes"}), false},
	} {
		rsp, err := e.create(tc.pod, ctr(tc.pod, tc.pod.Id+"-ctr"))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		m, env := injected(rsp)
		if got := m != nil || env != ""; got != tc.want {
			t.Errorf("%s: injected %v, want %v (%v)", tc.name, got, tc.want, rsp.GetAdjust())
		}
		if !tc.want && (len(rsp.GetAdjust().GetMounts()) != 0 || len(rsp.GetAdjust().GetEnv()) != 0) {
			t.Errorf("%s: adjusted %v", tc.name, rsp.GetAdjust())
		}
	}

	// A container that already has something at the destination is left
	// as it is.
	own := ctr(newWeb, "own-mount")
	own.Mounts = []*api.Mount{{Destination: destination, Source: "/tmp", Type: "bind", Options: []string{"bind", "ro"}}}
	if rsp, err := e.create(newWeb, own); err != nil || len(rsp.GetAdjust().GetEnv()) != 0 {
		t.Fatalf("own mount: %v %v", rsp.GetAdjust(), err)
	}

	ctx := context.Background()
	started := ctr(newWeb, "web2-ctr")
	started.State = api.ContainerState_CONTAINER_RUNNING
	if err := e.rt.StartContainer(ctx, &api.StartContainerRequest{Pod: newWeb, Container: started}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "StartContainer to reach the index", func() error {
		if a.Len() != 2 {
			return fmt.Errorf("%d containers", a.Len())
		}
		return nil
	})
	if _, err := e.rt.StopContainer(ctx, &api.StopContainerRequest{Pod: newWeb, Container: started}); err != nil {
		t.Fatal(err)
	}
	if a.Len() != 1 {
		t.Fatalf("after StopContainer: %d containers", a.Len())
	}
	if err := e.rt.RemovePodSandbox(ctx, &api.RemovePodSandboxRequest{Pod: web}); err != nil {
		t.Fatal(err)
	}
	if a.Len() != 0 {
		t.Fatalf("after RemovePodSandbox: %d containers", a.Len())
	}
}

// rawPlugin uses the agent's key and name but asks for more than the role
// allows.
type rawPlugin struct {
	adjust func(*api.ContainerAdjustment)
}

func (p *rawPlugin) CreateContainer(_ context.Context, _ *api.PodSandbox, _ *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	adj := &api.ContainerAdjustment{}
	// What the role allows, then the extra.
	adj.AddMount(&api.Mount{Destination: destination, Type: "bind", Source: socketDir, Options: []string{"bind", "ro"}})
	adj.AddEnv(nriplugin.EndpointEnv, "unix://"+destination+"/agent.sock")
	p.adjust(adj)
	return adj, nil, nil
}

// TestAgentKeyIsRefusedBeyondItsRole: the agent's key, registered as the
// agent's plugin, asking for another env, a writable mount, another
// source, another destination or a device, is refused by the gateway and
// each refusal is audited with the key's role.
func TestAgentKeyIsRefusedBeyondItsRole(t *testing.T) {
	e := newEnv(t, nil, nil)
	for _, tc := range []struct {
		name, field string
		adjust      func(*api.ContainerAdjustment)
	}{
		{"the role's own", "", func(*api.ContainerAdjustment) {}},
		{"another env", "Env", func(a *api.ContainerAdjustment) { a.AddEnv("LD_PRELOAD", "/evil.so") }},
		{"a writable mount", "Mounts", func(a *api.ContainerAdjustment) {
			a.Mounts[0].Options = []string{"bind", "ro", "rw"}
		}},
		{"another source", "Mounts", func(a *api.ContainerAdjustment) { a.Mounts[0].Source = "/etc" }},
		{"another destination", "Mounts", func(a *api.ContainerAdjustment) {
			a.AddMount(&api.Mount{Destination: "/var/run/secrets", Type: "bind", Source: socketDir, Options: []string{"bind", "ro"}})
		}},
		{"a device", "Devices", func(a *api.ContainerAdjustment) {
			a.AddDevice(&api.LinuxDevice{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229})
		}},
		{"an annotation", "Annotations", func(a *api.ContainerAdjustment) { a.AddAnnotation("x", "y") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The previous subtest's connection may still hold the name in
			// the gateway for a moment: retry until registered.
			var s stub.Stub
			var closed chan struct{}
			eventually(t, "registration", func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				conn, err := pluginauth.Dial(ctx, e.cfg.Socket, e.key, nriplugin.DefaultPluginName, nriplugin.DefaultPluginIndex)
				if err != nil {
					return err
				}
				closed = make(chan struct{})
				done := closed
				s, err = stub.New(&rawPlugin{adjust: tc.adjust}, stub.WithPluginName(nriplugin.DefaultPluginName),
					stub.WithPluginIdx(nriplugin.DefaultPluginIndex), stub.WithConnection(conn), stub.WithOnClose(func() { close(done) }))
				if err != nil {
					conn.Close()
					return err
				}
				if err := s.Start(ctx); err != nil {
					conn.Close()
					return err
				}
				return nil
			})
			defer func() { s.Stop(); <-closed }()
			var err error
			p := pod("p-"+strings.ReplaceAll(tc.name, " ", "-"), "demo", nil, nil)
			before := len(e.logs.Records())
			var rsp *api.CreateContainerResponse
			eventually(t, "the plugin to be registered and synchronized", func() error {
				rsp, err = e.create(p, ctr(p, p.Id+"-ctr"))
				if err != nil && strings.Contains(err.Error(), "required plugin") {
					return err
				}
				// The stub's Start returns before the gateway has
				// synchronized it, and until then the gateway does not
				// consult it: the creation gets no adjustment at all. A
				// consulted plugin always adds the role's mount.
				if err == nil && len(rsp.GetAdjust().GetMounts()) == 0 && len(rsp.GetAdjust().GetEnv()) == 0 {
					return errors.New("the plugin was not consulted yet")
				}
				return nil
			})
			if tc.field == "" {
				if err != nil {
					t.Fatalf("the role's own adjustment was refused: %v", err)
				}
				if m, env := injected(rsp); m == nil || env == "" {
					t.Fatalf("adjustment %v", rsp.GetAdjust())
				}
				return
			}
			if err == nil {
				t.Fatalf("the gateway let it through: %v", rsp.GetAdjust())
			}
			var denied []string
			for _, r := range e.logs.Records()[before:] {
				if r["audit"] == "nri" && r["verdict"] == "deny" && r["role"] == "workload-identity" &&
					r["plugin"] == nriplugin.DefaultPluginIndex+"-"+nriplugin.DefaultPluginName {
					denied = append(denied, fmt.Sprint(r["field"], " ", r["key"], ": ", r["reason"]))
				}
			}
			if !slices.ContainsFunc(denied, func(s string) bool { return strings.HasPrefix(s, tc.field+" ") }) {
				t.Fatalf("no audited denial of %s; denials %q; error %v", tc.field, denied, err)
			}
		})
	}
}

// TestReconnectResynchronizes: when the gateway restarts, the plugin
// reconnects by itself, and the runtime's Synchronize rebuilds the index:
// a container that started meanwhile is known, one that went is not, and
// the plugin answers no updates.
func TestReconnectResynchronizes(t *testing.T) {
	web := pod("web", "demo", map[string]string{"app": "web"}, nil)
	first := ctr(web, "first")
	first.State = api.ContainerState_CONTAINER_RUNNING
	e := newEnv(t, []*api.PodSandbox{web}, []*api.Container{first})
	// Two processes, one in each container's cgroup, as /proc shows them.
	proc := t.TempDir()
	for pid, id := range map[string]string{"1001": "first", "1002": "second"} {
		if err := os.MkdirAll(filepath.Join(proc, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, pid, "cgroup"), []byte("0::/kubepods/web/"+id+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a := nri.New(nri.Config{ProcRoot: proc})
	e.startPlugin(t, a, matchCache(t), "")
	eventually(t, "the first Synchronize", func() error {
		if sel, _ := a.Attest(context.Background(), 1001); len(sel) == 0 {
			return errors.New("the running container is not known")
		}
		return nil
	})
	e.stop()
	second := ctr(web, "second")
	second.State = api.ContainerState_CONTAINER_RUNNING
	e.rt.mu.Lock()
	e.rt.ctrs = []*api.Container{second}
	synced := len(e.rt.synced)
	e.rt.mu.Unlock()
	e.startGateway(t)
	eventually(t, "the plugin to reconnect and resynchronize", func() error {
		rsp, err := e.create(web, ctr(web, "third"))
		if err != nil {
			return err
		}
		if m, _ := injected(rsp); m == nil {
			return fmt.Errorf("not injected: %v", rsp.GetAdjust())
		}
		return nil
	})
	e.rt.mu.Lock()
	defer e.rt.mu.Unlock()
	if len(e.rt.synced) <= synced {
		t.Fatal("no Synchronize after the restart")
	}
	for _, u := range e.rt.synced {
		if len(u) != 0 {
			t.Errorf("Synchronize answered updates %v", u)
		}
	}
	ctx := context.Background()
	if sel, err := a.Attest(ctx, 1001); err != nil || len(sel) != 0 {
		t.Fatalf("a process of the container that went: %v %v", sel, err)
	}
	if sel, err := a.Attest(ctx, 1002); err != nil || !slices.Contains(sel, cache.Selector{Type: "nri", Value: "container-id:second"}) {
		t.Fatalf("a process of the container that started meanwhile: %v %v", sel, err)
	}
}
