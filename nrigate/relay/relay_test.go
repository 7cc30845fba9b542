package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
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
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	"github.com/trustgate/trustgate/nrigate/nrilog"
	"github.com/trustgate/trustgate/nrigate/wire"
)

func TestMain(m *testing.M) {
	nrilog.Install(slog.New(slog.DiscardHandler))
	os.Exit(m.Run())
}

// eventually polls cond until it holds or five seconds pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rules is a Checker with fixed answers.
type rules struct {
	names       map[string]bool // "idx-name" allowed to register
	denyUpdates bool
	detail      string // appended to the reason for refused updates
	denyAnswers bool
	sawRegister chan *api.RegisterPluginRequest
	mu          sync.Mutex
	updatesSeen int
	answersSeen int
	lost        []LostRequest
}

func (r *rules) Lost(_ context.Context, l LostRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lost = append(r.lost, l)
}

// lostRequests returns what Lost reported so far.
func (r *rules) lostRequests() []LostRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lost)
}

func (r *rules) Register(_ context.Context, req *api.RegisterPluginRequest) error {
	if r.sawRegister != nil {
		r.sawRegister <- req
	}
	if !r.names[req.PluginIdx+"-"+req.PluginName] {
		return fmt.Errorf("key does not own %s-%s", req.PluginIdx, req.PluginName)
	}
	return nil
}

func (r *rules) Updates(_ context.Context, event string, u []*api.ContainerUpdate) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if event == "unsolicited-update" {
		r.updatesSeen++
		if r.denyUpdates {
			return errors.New("role may not update containers" + r.detail)
		}
		return nil
	}
	r.answersSeen++
	if r.denyAnswers {
		return errors.New("role may not change resources")
	}
	return nil
}

// runtime is an NRI runtime built from containerd/nri's adaptation, as
// containerd builds its own.
type runtime struct {
	*adaptation.Adaptation
	socket  string
	mu      sync.Mutex
	updates []*api.ContainerUpdate
	// synced holds the updates in plugins' answers to Synchronize.
	synced []*api.ContainerUpdate
}

func newRuntime(t *testing.T) *runtime {
	t.Helper()
	dir := t.TempDir()
	rt := &runtime{socket: filepath.Join(dir, "nri.sock")}
	syncFn := func(ctx context.Context, cb adaptation.SyncCB) error {
		u, err := cb(ctx, nil, nil)
		rt.mu.Lock()
		rt.synced = append(rt.synced, u...)
		rt.mu.Unlock()
		return err
	}
	updateFn := func(_ context.Context, u []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		rt.mu.Lock()
		rt.updates = append(rt.updates, u...)
		rt.mu.Unlock()
		return nil, nil
	}
	a, err := adaptation.New("test-runtime", "1.0", syncFn, updateFn,
		adaptation.WithPluginPath(filepath.Join(dir, "plugins")),
		adaptation.WithPluginConfigPath(filepath.Join(dir, "conf.d")),
		adaptation.WithSocketPath(rt.socket))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	rt.Adaptation = a
	return rt
}

// gateway accepts plugin connections on a socket and relays each accepted
// one to the runtime.
func gateway(t *testing.T, rt *runtime, chk Checker) (socket string, results chan error) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "gw.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	results = make(chan error, 16)
	log := slog.New(slog.DiscardHandler)
	go func() {
		for {
			pc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c, _, err := Accept(context.Background(), pc, chk, 2*time.Second, log)
				if err != nil {
					pc.Close()
					results <- err
					return
				}
				rc, err := net.Dial("unix", rt.socket)
				if err != nil {
					pc.Close()
					results <- err
					return
				}
				results <- c.Run(context.Background(), rc)
			}()
		}
	}()
	return socket, results
}

// plugin is a real NRI stub plugin.
type plugin struct {
	stub.Stub
	conn         net.Conn
	synced       chan struct{}
	update       []*api.ContainerUpdate
	createUpdate []*api.ContainerUpdate

	mu sync.Mutex
	// onCreate, when set, adjusts created containers in place of the
	// default adjustment, or fails the request.
	onCreate func(*api.ContainerAdjustment) error
}

// creating sets the plugin's onCreate.
func (p *plugin) creating(f func(*api.ContainerAdjustment) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onCreate = f
}

func (p *plugin) Synchronize(context.Context, []*api.PodSandbox, []*api.Container) ([]*api.ContainerUpdate, error) {
	close(p.synced)
	return nil, nil
}

func (p *plugin) CreateContainer(_ context.Context, _ *api.PodSandbox, c *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	adj := &api.ContainerAdjustment{}
	p.mu.Lock()
	f := p.onCreate
	p.mu.Unlock()
	if f == nil {
		adj.AddEnv("ADJUSTED_BY", "plugin")
	} else if err := f(adj); err != nil {
		return nil, nil, err
	}
	return adj, p.createUpdate, nil
}

func (p *plugin) UpdateContainer(_ context.Context, _ *api.PodSandbox, c *api.Container, _ *api.LinuxResources) ([]*api.ContainerUpdate, error) {
	return p.update, nil
}

func startPlugin(t *testing.T, socket, idx, name string, opts ...stub.Option) (*plugin, error) {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	p := &plugin{conn: conn, synced: make(chan struct{})}
	s, err := stub.New(p, append([]stub.Option{stub.WithPluginName(name), stub.WithPluginIdx(idx), stub.WithConnection(conn),
		stub.WithOnClose(func() {})}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	p.Stub = s
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	t.Cleanup(s.Stop)
	select {
	case <-p.synced:
	case <-time.After(5 * time.Second):
		t.Fatal("plugin not synchronized")
	}
	return p, nil
}

func createContainer(t *testing.T, rt *runtime, id string) *api.CreateContainerResponse {
	t.Helper()
	rsp, err := rt.CreateContainer(context.Background(), &api.CreateContainerRequest{
		Pod:       &api.PodSandbox{Id: "pod0", Name: "pod0", Namespace: "default", Uid: "uid0"},
		Container: &api.Container{Id: id, PodSandboxId: "pod0", Name: "c-" + id, State: api.ContainerState_CONTAINER_CREATED},
	})
	if err != nil {
		t.Fatalf("create container: %v", err)
	}
	return rsp
}

func TestAllowedPluginAdjustsThroughRelay(t *testing.T) {
	rt := newRuntime(t)
	sock, _ := gateway(t, rt, &rules{names: map[string]bool{"10-good": true}})
	if _, err := startPlugin(t, sock, "10", "good"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the plugin's adjustment", func() bool {
		env := createContainer(t, rt, "c1").GetAdjust().GetEnv()
		return len(env) == 1 && env[0].Key == "ADJUSTED_BY" && env[0].Value == "plugin"
	})
}

func TestRegistrationUnderForeignNameIsCut(t *testing.T) {
	rt := newRuntime(t)
	chk := &rules{names: map[string]bool{"10-good": true}, sawRegister: make(chan *api.RegisterPluginRequest, 1)}
	sock, results := gateway(t, rt, chk)
	_, err := startPlugin(t, sock, "10", "impostor")
	if err == nil {
		t.Fatal("plugin registered under a name it does not own")
	}
	if req := <-chk.sawRegister; req.PluginName != "impostor" {
		t.Fatalf("checker saw %v", req)
	}
	if gwErr := <-results; !errors.Is(gwErr, ErrRefused) || !strings.Contains(gwErr.Error(), "10-impostor") {
		t.Fatalf("gateway error %v", gwErr)
	}
	// The runtime never saw it: a container gets no adjustment.
	if adj := createContainer(t, rt, "c1").GetAdjust(); len(adj.GetEnv()) != 0 {
		t.Fatalf("refused plugin adjusted a container: %v", adj)
	}
}

func TestUnsolicitedUpdatesAreChecked(t *testing.T) {
	rt := newRuntime(t)
	chk := &rules{names: map[string]bool{"10-a": true}}
	sock, _ := gateway(t, rt, chk)
	p, err := startPlugin(t, sock, "10", "a")
	if err != nil {
		t.Fatal(err)
	}
	upd := []*api.ContainerUpdate{{ContainerId: "c1", Linux: &api.LinuxContainerUpdate{Resources: &api.LinuxResources{Cpu: &api.LinuxCPU{Shares: api.UInt64(512)}}}}}
	if _, err := p.UpdateContainers(upd); err != nil {
		t.Fatalf("allowed update: %v", err)
	}
	rt.mu.Lock()
	n := len(rt.updates)
	rt.mu.Unlock()
	if n != 1 {
		t.Fatalf("runtime got %d updates, want 1", n)
	}
	chk.mu.Lock()
	chk.denyUpdates = true
	chk.mu.Unlock()
	_, err = p.UpdateContainers(upd)
	if err == nil || !strings.Contains(err.Error(), "PermissionDenied") && !strings.Contains(err.Error(), "may not update") {
		t.Fatalf("refused update: %v", err)
	}
	rt.mu.Lock()
	n = len(rt.updates)
	rt.mu.Unlock()
	if n != 1 {
		t.Fatalf("refused update reached the runtime (%d updates)", n)
	}
	// The connection survives a refusal.
	chk.mu.Lock()
	chk.denyUpdates = false
	chk.mu.Unlock()
	if _, err := p.UpdateContainers(upd); err != nil {
		t.Fatalf("connection broken after refusal: %v", err)
	}
}

func TestUpdatesInAnswersAreChecked(t *testing.T) {
	rt := newRuntime(t)
	chk := &rules{names: map[string]bool{"10-a": true}}
	sock, _ := gateway(t, rt, chk)
	p, err := startPlugin(t, sock, "10", "a")
	if err != nil {
		t.Fatal(err)
	}
	p.update = []*api.ContainerUpdate{{ContainerId: "c2", Linux: &api.LinuxContainerUpdate{Resources: &api.LinuxResources{Memory: &api.LinuxMemory{Limit: api.Int64(1 << 30)}}}}}
	req := &api.UpdateContainerRequest{
		Pod:            &api.PodSandbox{Id: "pod0"},
		Container:      &api.Container{Id: "c1", PodSandboxId: "pod0"},
		LinuxResources: &api.LinuxResources{},
	}
	// The plugin joins the runtime's list only after synchronizing.
	eventually(t, "the plugin's answer to be checked", func() bool {
		rsp, err := rt.UpdateContainer(context.Background(), req)
		if err != nil {
			t.Fatalf("allowed answer refused: %v", err)
		}
		chk.mu.Lock()
		defer chk.mu.Unlock()
		return chk.answersSeen > 0 && slices.ContainsFunc(rsp.GetUpdate(), func(u *api.ContainerUpdate) bool { return u.GetContainerId() == "c2" })
	})
	chk.mu.Lock()
	chk.denyAnswers = true
	chk.mu.Unlock()
	_, err = rt.UpdateContainer(context.Background(), req)
	if err == nil || !strings.Contains(err.Error(), "may not change resources") {
		t.Fatalf("refused UpdateContainer answer: %v", err)
	}
	// Updates in a CreateContainer answer are checked too: NRI validates
	// only the created container's adjustment, not updates to others.
	p.createUpdate = p.update
	_, err = rt.CreateContainer(context.Background(), &api.CreateContainerRequest{
		Pod:       &api.PodSandbox{Id: "pod0"},
		Container: &api.Container{Id: "c3", PodSandboxId: "pod0"},
	})
	if err == nil || !strings.Contains(err.Error(), "may not change resources") {
		t.Fatalf("refused CreateContainer answer: %v", err)
	}
}

func TestStalledPluginTimesOutAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	start := time.Now()
	_, _, err := Accept(context.Background(), b, &rules{}, 100*time.Millisecond, slog.New(slog.DiscardHandler))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want a timeout, got %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("deadline not applied")
	}
}

// encode is m in ttrpc's wire format, unframed.
func encode(m wire.Message) []byte {
	hdr := binary.BigEndian.AppendUint32(nil, uint32(len(m.Body)))
	hdr = binary.BigEndian.AppendUint32(hdr, m.StreamID)
	return append(append(hdr, m.Type, m.Flags), m.Body...)
}

// rawFrame is one frame with any payload, shaped as no ttrpc writer would.
func rawFrame(id uint32, payload []byte) []byte {
	hdr := binary.BigEndian.AppendUint32(nil, id)
	return append(binary.BigEndian.AppendUint32(hdr, uint32(len(payload))), payload...)
}

func TestAcceptRefusesMalformedStreams(t *testing.T) {
	regBody := func(service, method string, payload proto.Message) []byte {
		p, _ := proto.Marshal(payload)
		b, _ := proto.Marshal(&ttrpc.Request{Service: service, Method: method, Payload: p})
		return encode(wire.Message{StreamID: 1, Type: wire.TypeRequest, Body: b})
	}
	cases := map[string][]byte{
		"oversized frame":  {0, 0, 0, 2, 0xff, 0xff, 0xff, 0xff},
		"unknown conn":     rawFrame(7, []byte("x")),
		"oversized msg":    rawFrame(wire.RuntimeService, []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0}),
		"not registration": rawFrame(wire.RuntimeService, regBody(runtimeService, "UpdateContainers", &api.UpdateContainersRequest{})),
		"response first":   rawFrame(wire.RuntimeService, encode(wire.Message{StreamID: 1, Type: wire.TypeResponse})),
		"bad payload":      rawFrame(wire.RuntimeService, encode(wire.Message{StreamID: 1, Type: wire.TypeRequest, Body: []byte{0x0a, 0xff}})),
		"truncated":        rawFrame(wire.RuntimeService, regBody(runtimeService, "RegisterPlugin", &api.RegisterPluginRequest{PluginName: "a", PluginIdx: "10"}))[:20],
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			a, b := net.Pipe()
			go func() { _, _ = a.Write(data); a.Close() }()
			_, _, err := Accept(context.Background(), b, &rules{names: map[string]bool{"10-a": true}}, time.Second, slog.New(slog.DiscardHandler))
			if err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
