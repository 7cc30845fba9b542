package nrigate

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/trustgate/trustgate/pluginauth"
)

// runtimeHelperEnv, when set to a socket path, turns the test binary into
// a stand-in runtime: NRI's adaptation with containerd's default 2s
// plugin request timeout. NRI's timeouts are process-wide setters, so a
// runtime with its own timeout must live in its own process, as containerd
// does; the gateway under test sets its own in the test process.
const runtimeHelperEnv = "TRUSTGATE_TEST_RUNTIME_SOCKET"

// runtimeReply is the helper's answer to one container creation.
type runtimeReply struct {
	Err string            `json:"err"`
	Env map[string]string `json:"env"`
}

// runtimeHelper serves NRI on socket, creates one container per line read
// on stdin, and writes one runtimeReply per creation on stdout.
func runtimeHelper(socket string) int {
	adaptation.SetPluginRequestTimeout(adaptation.DefaultPluginRequestTimeout)
	noSync := func(ctx context.Context, cb adaptation.SyncCB) error { _, err := cb(ctx, nil, nil); return err }
	noUpdate := func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		return nil, nil
	}
	none := filepath.Join(filepath.Dir(socket), "none")
	a, err := adaptation.New("containerd", "2.4.2", noSync, noUpdate,
		adaptation.WithPluginPath(none), adaptation.WithPluginConfigPath(none), adaptation.WithSocketPath(socket))
	if err == nil {
		err = a.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer a.Stop()
	fmt.Println("ready")
	in, out := bufio.NewScanner(os.Stdin), json.NewEncoder(os.Stdout)
	for in.Scan() {
		rsp, err := a.CreateContainer(context.Background(), &api.CreateContainerRequest{
			Pod:       &api.PodSandbox{Id: "pod0", Name: "web", Namespace: "prod", Uid: "u0"},
			Container: &api.Container{Id: in.Text(), PodSandboxId: "pod0", Name: "app", State: api.ContainerState_CONTAINER_CREATED},
		})
		r := runtimeReply{Env: map[string]string{}}
		if err != nil {
			r.Err = err.Error()
		}
		for _, kv := range rsp.GetAdjust().GetEnv() {
			r.Env[kv.Key] = kv.Value
		}
		if err := out.Encode(r); err != nil {
			return 1
		}
	}
	return 0
}

// remoteRuntime is a runtimeHelper process.
type remoteRuntime struct {
	socket string
	in     io.Writer
	out    *json.Decoder
}

func startRemoteRuntime(t *testing.T) *remoteRuntime {
	t.Helper()
	dir, err := os.MkdirTemp("", "tgrt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := &remoteRuntime{socket: filepath.Join(dir, "nri.sock")}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), runtimeHelperEnv+"="+r.socket)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("runtime helper: %v", err)
		}
	})
	br := bufio.NewReader(out)
	if line, err := br.ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("runtime helper: %q %v", line, err)
	}
	r.in, r.out = in, json.NewDecoder(br)
	return r
}

func (r *remoteRuntime) create(t *testing.T) runtimeReply {
	t.Helper()
	if _, err := fmt.Fprintln(r.in, nextID()); err != nil {
		t.Fatal(err)
	}
	var rep runtimeReply
	if err := r.out.Decode(&rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// slowPlugin sleeps in CreateContainer, ignoring its context, as a hung
// plugin does.
type slowPlugin struct{ sleep time.Duration }

func (p *slowPlugin) CreateContainer(context.Context, *api.PodSandbox, *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	time.Sleep(p.sleep)
	adj := &api.ContainerAdjustment{}
	adj.AddEnv("INJECTED_SLOW", "1")
	return adj, nil, nil
}

// TestSlowPluginDoesNotStopCreation: a plugin that sleeps 6s in
// CreateContainer, behind the gateway, in front of a runtime with
// containerd's 2s timeout. The gateway drops the plugin's answer before
// the runtime times the gateway out: creation succeeds, with the other
// plugin's adjustment and without the slow one's, three times out of
// three. The slow plugin asks to stay connected after a timeout, so it is
// asked, and times out, every time.
func TestSlowPluginDoesNotStopCreation(t *testing.T) {
	rt := startRemoteRuntime(t)
	e := newEnv(t, func(_ *env, c *Config) { c.UpstreamSocket = rt.socket })
	if _, err := e.connect(e.keys["injector"], "20", "injector", func(a *api.ContainerAdjustment) { a.AddEnv("INJECTED_ID", "x") }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pluginauth.Dial(ctx, e.cfg.Socket, e.keys["trusted"], "trusted", "40")
	if err != nil {
		t.Fatal(err)
	}
	s, err := stub.New(&slowPlugin{sleep: 6 * time.Second}, stub.WithPluginName("trusted"), stub.WithPluginIdx("40"),
		stub.WithConnection(conn), stub.WithFailurePolicy(&api.FailurePolicy{KeepConnected: true}))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	eventually(t, "both plugins synchronized", func() error {
		n := 0
		for _, r := range e.logs.Records() {
			if r["msg"] == "plugin registered" {
				n++
			}
		}
		if n < 2 {
			return fmt.Errorf("%d registered", n)
		}
		return nil
	})
	for i := range 3 {
		start := time.Now()
		rep := rt.create(t)
		if rep.Err != "" || rep.Env["INJECTED_ID"] != "x" {
			t.Fatalf("creation %d of 3 after %v: err %q, env %v", i+1, time.Since(start), rep.Err, rep.Env)
		}
		if rep.Env["INJECTED_SLOW"] != "" {
			t.Fatalf("creation %d: the slow plugin's adjustment arrived", i+1)
		}
	}
}

func TestRequestTimeoutDerivedAndChecked(t *testing.T) {
	c := DefaultConfig()
	if got := c.requestTimeout(); got != 1500*time.Millisecond {
		t.Fatalf("derived request timeout %v, want 1.5s for containerd's 2s", got)
	}
	if w := c.timeoutWarning(); w != "" {
		t.Fatalf("default config warns: %s", w)
	}
	c.RequestTimeout = pluginauth.Duration(1900 * time.Millisecond)
	if c.Validate() != nil || c.timeoutWarning() == "" {
		t.Fatalf("1.9s of 2s: want valid with a warning, got %v %q", c.Validate(), c.timeoutWarning())
	}
	c.RequestTimeout = pluginauth.Duration(2 * time.Second)
	if err := c.Validate(); err == nil {
		t.Fatal("request_timeout equal to the runtime's accepted")
	}
	c.RuntimeRequestTimeout = pluginauth.Duration(5 * time.Second)
	if err := c.Validate(); err != nil || c.timeoutWarning() != "" {
		t.Fatalf("2s under 5s: %v %q", err, c.timeoutWarning())
	}
}
