// Command testplugin is the NRI plugin of the end-to-end suite: a real
// containerd/nri stub that either authenticates to the trustgate gateway
// (pluginauth.Dial and stub.WithConnection) or dials a runtime's NRI socket
// directly, and answers CreateContainer as a pluginspec.Spec file says. It
// reports what happens as JSON lines (pluginspec.Event) on stdout.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"google.golang.org/protobuf/proto"

	"github.com/trustgate/trustgate/e2e/internal/pluginspec"
	"github.com/trustgate/trustgate/pluginauth"
)

func main() {
	var (
		socket    = flag.String("socket", "", "NRI socket: the gateway's (with -key) or the runtime's")
		keyFile   = flag.String("key", "", "private key file; authenticate to the gateway with it")
		name      = flag.String("name", "e2e", "plugin name")
		idx       = flag.String("idx", "50", "plugin index")
		specFile  = flag.String("spec", "", "JSON pluginspec.Spec file")
		reconnect = flag.Bool("reconnect", false, "reconnect when the connection ends")
	)
	flag.Parse()
	if err := run(*socket, *keyFile, *name, *idx, *specFile, *reconnect); err != nil {
		fmt.Fprintln(os.Stderr, "testplugin:", err)
		os.Exit(1)
	}
}

func run(socket, keyFile, name, idx, specFile string, reconnect bool) error {
	var spec pluginspec.Spec
	if specFile != "" {
		b, err := os.ReadFile(specFile)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &spec); err != nil {
			return fmt.Errorf("%s: %w", specFile, err)
		}
	}
	var key *pluginauth.PrivateKey
	if keyFile != "" {
		k, err := pluginauth.LoadPrivateKeyFile(keyFile)
		if err != nil {
			return err
		}
		key = k
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	for {
		err := connectOnce(ctx, socket, key, name, idx, &spec)
		emit(pluginspec.Event{Event: "closed", Error: errString(err)})
		if !reconnect || ctx.Err() != nil {
			return nil
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return nil
		}
	}
}

// connectOnce registers the plugin and serves until the connection ends.
func connectOnce(ctx context.Context, socket string, key *pluginauth.PrivateKey, name, idx string, spec *pluginspec.Spec) error {
	p := &plugin{spec: spec}
	opts := []stub.Option{stub.WithPluginName(name), stub.WithPluginIdx(idx)}
	if key != nil {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pluginauth.Dial(dctx, socket, key, name, idx)
		cancel()
		if err != nil {
			return err
		}
		if spec.OKStatusUpdate != nil {
			defer conn.Close()
			return runRaw(ctx, conn, name, idx, spec)
		}
		opts = append(opts, stub.WithConnection(conn))
	} else {
		opts = append(opts, stub.WithSocketPath(socket))
	}
	s, err := stub.New(p, opts...)
	if err != nil {
		return err
	}
	p.stub = s
	return s.Run(ctx)
}

var emitMu sync.Mutex

func emit(e pluginspec.Event) {
	b, _ := json.Marshal(e)
	emitMu.Lock()
	defer emitMu.Unlock()
	_, _ = os.Stdout.Write(append(b, '\n'))
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

type plugin struct {
	spec *pluginspec.Spec
	stub stub.Stub
}

func (p *plugin) mine(pod *api.PodSandbox) bool {
	return p.spec.Pod == "" || pod.GetName() == p.spec.Pod
}

// Synchronize reports the synchronization; the suite then waits for the
// runtime to log the plugin as added.
func (p *plugin) Synchronize(context.Context, []*api.PodSandbox, []*api.Container) ([]*api.ContainerUpdate, error) {
	emit(pluginspec.Event{Event: "synchronized"})
	return nil, nil
}

// CreateContainer returns the adjustment the spec describes.
func (p *plugin) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	if !p.mine(pod) {
		return nil, nil, nil
	}
	emit(pluginspec.Event{Event: "create", Container: ctr.GetId(), Pod: pod.GetName()})
	if p.spec.SleepMillis > 0 {
		time.Sleep(time.Duration(p.spec.SleepMillis) * time.Millisecond)
	}
	a := &api.ContainerAdjustment{}
	for _, k := range sortedKeys(p.spec.Env) {
		a.AddEnv(k, p.spec.Env[k])
	}
	for _, k := range sortedKeys(p.spec.Annotations) {
		a.AddAnnotation(k, p.spec.Annotations[k])
	}
	for _, m := range p.spec.Mounts {
		a.AddMount(&api.Mount{Source: m.Source, Destination: m.Destination, Type: m.Type, Options: m.Options})
	}
	for _, d := range p.spec.Devices {
		a.AddDevice(&api.LinuxDevice{Path: d.Path, Type: d.Type, Major: d.Major, Minor: d.Minor, FileMode: api.FileMode(0o666)})
	}
	if len(p.spec.SeccompDeny) > 0 {
		sp, err := tightened(ctr.GetLinux().GetSeccompPolicy(), p.spec.SeccompDeny)
		if err != nil {
			return nil, nil, err
		}
		a.SetLinuxSeccompPolicy(sp)
	}
	var updates []*api.ContainerUpdate
	if cu := p.spec.CreateUpdate; cu != nil {
		u := &api.ContainerUpdate{ContainerId: cu.Container}
		u.SetLinuxMemoryLimit(cu.MemoryLimit)
		updates = append(updates, u)
	}
	return a, updates, nil
}

// PostStartContainer sends the spec's unsolicited update, if any.
func (p *plugin) PostStartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	if !p.mine(pod) || p.spec.UpdateMemoryLimit == 0 {
		return nil
	}
	id := ctr.GetId()
	go func() {
		u := &api.ContainerUpdate{ContainerId: id}
		u.SetLinuxMemoryLimit(p.spec.UpdateMemoryLimit)
		_, err := p.stub.UpdateContainers([]*api.ContainerUpdate{u})
		emit(pluginspec.Event{Event: "update", Container: id, Error: errString(err)})
	}()
	return nil
}

// tightened returns orig without the allow rules for deny, plus a rule
// that fails deny with EPERM.
func tightened(orig *api.LinuxSeccomp, deny []string) (*api.LinuxSeccomp, error) {
	if orig == nil {
		return nil, fmt.Errorf("the runtime reported no seccomp policy to tighten")
	}
	sp := proto.Clone(orig).(*api.LinuxSeccomp)
	var rules []*api.LinuxSyscall
	for _, r := range sp.Syscalls {
		if r.Action == "SCMP_ACT_ALLOW" {
			r.Names = slices.DeleteFunc(r.Names, func(n string) bool { return slices.Contains(deny, n) })
			if len(r.Names) == 0 {
				continue
			}
		}
		rules = append(rules, r)
	}
	sp.Syscalls = append(rules, &api.LinuxSyscall{Names: deny, Action: "SCMP_ACT_ERRNO", ErrnoRet: &api.OptionalUInt32{Value: uint32(syscall.EPERM)}})
	return sp, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
