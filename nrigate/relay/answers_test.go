package relay

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	ctrdseccomp "github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/trustgate/trustgate/nrigate/wire"
)

// TestLargeAdjustmentsReachTheRuntime sends adjustments of every size
// class from a real stub plugin through the relay to a real adaptation
// runtime: each must come out of the runtime's CreateContainer. Messages
// over 4 KiB in one frame make the runtime's mux fail (ENOMEM), drop the
// plugin and create the container without its adjustment.
func TestLargeAdjustmentsReachTheRuntime(t *testing.T) {
	rt := newRuntime(t)
	chk := &rules{names: map[string]bool{"10-big": true}}
	sock, _ := gateway(t, rt, chk)
	p, err := startPlugin(t, sock, "10", "big")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the plugin's adjustment", func() bool {
		return len(createContainer(t, rt, "c0").GetAdjust().GetEnv()) == 1
	})
	for _, n := range []int{3900, 4200, 64 << 10, 1 << 20} {
		value := strings.Repeat("v", n)
		p.creating(func(a *api.ContainerAdjustment) error {
			a.AddEnv("BIG", value)
			return nil
		})
		env := createContainer(t, rt, fmt.Sprintf("env-%d", n)).GetAdjust().GetEnv()
		if len(env) != 1 || env[0].Key != "BIG" || env[0].Value != value {
			t.Fatalf("a %d-byte env value did not reach the runtime (%d env adjustments)", n, len(env))
		}
	}
	profile := api.FromOCILinuxSeccomp(ctrdseccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}}))
	if size := proto.Size(profile); size <= wire.PeerBuffer {
		t.Fatalf("the default seccomp profile is only %d bytes", size)
	}
	p.creating(func(a *api.ContainerAdjustment) error {
		a.SetLinuxSeccompPolicy(profile)
		return nil
	})
	got := createContainer(t, rt, "seccomp").GetAdjust().GetLinux().GetSeccompPolicy()
	if !proto.Equal(got, profile) {
		t.Fatalf("the seccomp adjustment did not reach the runtime: %v", got)
	}
	if lost := chk.lostRequests(); len(lost) != 0 {
		t.Fatalf("lost: %v", lost)
	}
}

// rawPlugin speaks NRI at the wire level, so that it can answer the
// runtime with ttrpc responses no stub would send.
type rawPlugin struct {
	conn net.Conn
	// answer returns the ttrpc Response body for a request of the
	// runtime, or nil for the default answer.
	answer func(method string) []byte
	mu     sync.Mutex
	seen   map[string]int
}

// startRawPlugin registers as idx-name through the relay, subscribed to the
// container events whose answers carry updates.
func startRawPlugin(t *testing.T, socket, idx, name string, answer func(method string) []byte) *rawPlugin {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p := &rawPlugin{conn: conn, answer: answer, seen: map[string]int{}}
	reg, _ := proto.Marshal(&api.RegisterPluginRequest{PluginName: name, PluginIdx: idx})
	body, _ := proto.Marshal(&ttrpc.Request{Service: runtimeService, Method: "RegisterPlugin", Payload: reg})
	if _, err := conn.Write(wire.AppendMessage(nil, wire.RuntimeService, wire.Message{StreamID: 1, Type: wire.TypeRequest, Body: body})); err != nil {
		t.Fatal(err)
	}
	go p.serve()
	return p
}

func (p *rawPlugin) serve() {
	var in wire.Stream
	for {
		f, err := wire.ReadFrame(p.conn)
		if err != nil {
			return
		}
		if f.Conn != wire.PluginService {
			continue // the answer to RegisterPlugin
		}
		in.Feed(f.Payload)
		for {
			m, ok, err := in.Next()
			if err != nil || !ok {
				break
			}
			req, err := wire.ParseRequest(m.Body)
			if err != nil {
				return
			}
			body := p.answer(req.Method)
			if body == nil {
				body = answerWith(defaultAnswer(req.Method))
			}
			p.mu.Lock()
			p.seen[req.Method]++
			p.mu.Unlock()
			out := wire.AppendMessage(nil, wire.PluginService, wire.Message{StreamID: m.StreamID, Type: wire.TypeResponse, Body: body})
			if _, err := p.conn.Write(out); err != nil {
				return
			}
		}
	}
}

// requests returns how many requests for method the plugin answered.
func (p *rawPlugin) requests(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[method]
}

func defaultAnswer(method string) proto.Message {
	switch method {
	case "Configure":
		return &api.ConfigureResponse{Events: int32(api.MustParseEventMask("CreateContainer", "UpdateContainer", "StopContainer"))}
	case "Synchronize":
		return &api.SynchronizeResponse{}
	case "CreateContainer":
		return &api.CreateContainerResponse{}
	case "UpdateContainer":
		return &api.UpdateContainerResponse{}
	case "StopContainer":
		return &api.StopContainerResponse{}
	}
	return &api.Empty{}
}

// answerWith is a successful ttrpc Response carrying m.
func answerWith(m proto.Message) []byte {
	payload, _ := proto.Marshal(m)
	b, _ := proto.Marshal(&ttrpc.Response{Payload: payload})
	return b
}

// TestEveryStatusShapeIsChecked answers each runtime request whose answer
// carries container updates with every shape of ttrpc status, to a checker
// that refuses all updates in answers. The runtime must act on no update,
// whatever the status; the checker must see every payload; and every
// error or malformed answer must be reported lost exactly once.
func TestEveryStatusShapeIsChecked(t *testing.T) {
	limit := []*api.ContainerUpdate{{ContainerId: "c2", Linux: &api.LinuxContainerUpdate{
		Resources: &api.LinuxResources{Memory: &api.LinuxMemory{Limit: api.Int64(96 << 20)}}}}}
	answers := map[string]proto.Message{
		"CreateContainer": &api.CreateContainerResponse{Update: limit},
		"UpdateContainer": &api.UpdateContainerResponse{Update: limit},
		"StopContainer":   &api.StopContainerResponse{Update: limit},
		"Synchronize":     &api.SynchronizeResponse{Update: limit},
	}
	respond := func(st *status.Status, m proto.Message) []byte {
		r := &ttrpc.Response{}
		if st != nil {
			r.Status = st.Proto()
		}
		if m != nil {
			r.Payload, _ = proto.Marshal(m)
		}
		b, _ := proto.Marshal(r)
		return b
	}
	type shape struct {
		body    func(m proto.Message) []byte
		allow   bool // the checker allows the updates
		applied bool // the runtime acts on the updates
		checked bool // the checker sees the updates
		lost    int  // Lost reports
	}
	shapes := map[string]shape{
		"absent": {body: func(m proto.Message) []byte { return respond(nil, m) }, checked: true},
		"OK with a message": {body: func(m proto.Message) []byte { return respond(status.New(codes.OK, "ok"), m) },
			checked: true},
		"OK with a message, allowed": {body: func(m proto.Message) []byte { return respond(status.New(codes.OK, "ok"), m) },
			allow: true, applied: true, checked: true},
		"error with a payload": {body: func(m proto.Message) []byte { return respond(status.New(codes.Internal, "boom"), m) },
			checked: true, lost: 1},
		"error without payload": {body: func(proto.Message) []byte { return respond(status.New(codes.Internal, "boom"), nil) },
			lost: 1},
		"malformed status": {body: func(proto.Message) []byte { return []byte{0x0a, 0x02, 0x08} }, lost: 1},
		"malformed payload": {body: func(proto.Message) []byte {
			b, _ := proto.Marshal(&ttrpc.Response{Payload: []byte{0x0a, 0xff}})
			return b
		}, lost: 1},
	}
	for method, answer := range answers {
		for name, sh := range shapes {
			t.Run(method+"/"+name, func(t *testing.T) {
				rt := newRuntime(t)
				chk := &rules{names: map[string]bool{"10-raw": true}, denyAnswers: !sh.allow}
				sock, _ := gateway(t, rt, chk)
				p := startRawPlugin(t, sock, "10", "raw", func(m string) []byte {
					if m == method {
						return sh.body(answer)
					}
					return nil
				})
				updates, callErr := callUntilAnswered(t, rt, p, method)
				if applied := slices.ContainsFunc(updates, func(u *api.ContainerUpdate) bool { return u.GetContainerId() == "c2" }); applied != sh.applied {
					t.Errorf("runtime acted on the updates: %v, want %v (call error %v)", applied, sh.applied, callErr)
				}
				if (callErr == nil) != sh.applied {
					t.Errorf("runtime call error %v", callErr)
				}
				chk.mu.Lock()
				checked := chk.answersSeen > 0
				chk.mu.Unlock()
				if checked != sh.checked {
					t.Errorf("checker saw the updates: %v, want %v", checked, sh.checked)
				}
				var lost []LostRequest
				for _, l := range chk.lostRequests() {
					if l.Method == method {
						lost = append(lost, l)
					}
				}
				if len(lost) != sh.lost {
					t.Errorf("lost reports %v, want %d", lost, sh.lost)
				}
				if method != "Synchronize" && len(lost) == 1 && lost[0].ContainerID != "c1" {
					t.Errorf("lost report names container %q", lost[0].ContainerID)
				}
			})
		}
	}
}

// callUntilAnswered makes the runtime request method until the plugin
// answers one (it joins the runtime's list only after synchronizing), and
// returns the updates the runtime acts on and its error. For Synchronize,
// which the runtime sends when the plugin connects, it waits for that.
func callUntilAnswered(t *testing.T, rt *runtime, p *rawPlugin, method string) ([]*api.ContainerUpdate, error) {
	t.Helper()
	ctx := context.Background()
	pod := &api.PodSandbox{Id: "pod0"}
	ctr := &api.Container{Id: "c1", PodSandboxId: "pod0"}
	var (
		updates []*api.ContainerUpdate
		err     error
	)
	if method == "Synchronize" {
		eventually(t, "the plugin to synchronize", func() bool { return p.requests(method) > 0 })
		// The runtime holds its sync lock from before it sends
		// Synchronize until it has the result.
		rt.BlockPluginSync().Unblock()
		rt.mu.Lock()
		defer rt.mu.Unlock()
		if len(rt.synced) == 0 {
			return nil, fmt.Errorf("synchronization failed")
		}
		return rt.synced, nil
	}
	eventually(t, "a "+method+" request to reach the plugin", func() bool {
		before := p.requests(method)
		switch method {
		case "CreateContainer":
			var rsp *api.CreateContainerResponse
			rsp, err = rt.CreateContainer(ctx, &api.CreateContainerRequest{Pod: pod, Container: ctr})
			updates = rsp.GetUpdate()
		case "UpdateContainer":
			var rsp *api.UpdateContainerResponse
			rsp, err = rt.UpdateContainer(ctx, &api.UpdateContainerRequest{Pod: pod, Container: ctr, LinuxResources: &api.LinuxResources{}})
			updates = rsp.GetUpdate()
		case "StopContainer":
			var rsp *api.StopContainerResponse
			rsp, err = rt.StopContainer(ctx, &api.StopContainerRequest{Pod: pod, Container: ctr})
			updates = rsp.GetUpdate()
		}
		return p.requests(method) > before
	})
	return updates, err
}

// TestTimedOutRequestsAreReportedLost lets a plugin overrun the runtime's
// request timeout, once with the default failure policy (the runtime drops
// the plugin) and once with KeepConnected (the runtime keeps it and drops
// the late answer): each reports the request lost exactly once.
func TestTimedOutRequestsAreReportedLost(t *testing.T) {
	adaptation.SetPluginRequestTimeout(300 * time.Millisecond)
	t.Cleanup(func() { adaptation.SetPluginRequestTimeout(adaptation.DefaultPluginRequestTimeout) })
	for name, keep := range map[string]bool{"dropped": false, "kept connected": true} {
		t.Run(name, func(t *testing.T) {
			rt := newRuntime(t)
			chk := &rules{names: map[string]bool{"10-slow": true}}
			sock, results := gateway(t, rt, chk)
			p, err := startPlugin(t, sock, "10", "slow", stub.WithFailurePolicy(&api.FailurePolicy{KeepConnected: keep}))
			if err != nil {
				t.Fatal(err)
			}
			eventually(t, "the plugin's adjustment", func() bool {
				return len(createContainer(t, rt, "c0").GetAdjust().GetEnv()) == 1
			})
			p.creating(func(*api.ContainerAdjustment) error {
				time.Sleep(time.Second)
				return nil
			})
			if env := createContainer(t, rt, "late").GetAdjust().GetEnv(); len(env) != 0 {
				t.Fatalf("adjusted: %v", env)
			}
			if keep {
				// The late answer arrives and must not confuse anything.
				time.Sleep(time.Second)
				p.creating(nil)
				if env := createContainer(t, rt, "c1").GetAdjust().GetEnv(); len(env) != 1 {
					t.Fatalf("the connection did not survive: %v", env)
				}
			} else {
				select {
				case <-results:
				case <-time.After(5 * time.Second):
					t.Fatal("the runtime did not drop the plugin")
				}
			}
			// The report comes from the relay's timer or from the end of
			// the connection, whichever sees it first; a second one would
			// come within moments.
			eventually(t, "the lost report", func() bool { return len(chk.lostRequests()) > 0 })
			time.Sleep(100 * time.Millisecond)
			lost := chk.lostRequests()
			if len(lost) != 1 || lost[0].Method != "CreateContainer" || lost[0].ContainerID != "late" {
				t.Fatalf("lost reports %+v", lost)
			}
			if keep && !strings.Contains(lost[0].Reason, "timeout") {
				t.Fatalf("reason %q", lost[0].Reason)
			}
		})
	}
}

// TestLongRefusalReachesThePlugin refuses an unsolicited update with a
// reason of 5,000 bytes: the refusal the relay writes to the plugin must be
// framed so that the plugin's mux reads it, and the plugin stays connected.
func TestLongRefusalReachesThePlugin(t *testing.T) {
	rt := newRuntime(t)
	chk := &rules{names: map[string]bool{"10-a": true}, denyUpdates: true, detail: strings.Repeat(".", 5000)}
	sock, _ := gateway(t, rt, chk)
	p, err := startPlugin(t, sock, "10", "a")
	if err != nil {
		t.Fatal(err)
	}
	upd := []*api.ContainerUpdate{{ContainerId: "c1", Linux: &api.LinuxContainerUpdate{Resources: &api.LinuxResources{Cpu: &api.LinuxCPU{Shares: api.UInt64(512)}}}}}
	if _, err := p.UpdateContainers(upd); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), chk.detail) {
		t.Fatalf("refusal: %.200v", err)
	}
	eventually(t, "the plugin's adjustment", func() bool {
		return len(createContainer(t, rt, "c0").GetAdjust().GetEnv()) == 1
	})
}
