package nripolicy

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/adaptation/builtin"
	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"
	"google.golang.org/protobuf/proto"
)

// quiet discards NRI's log lines (one per plugin call).
type quiet struct{}

func (quiet) Debugf(context.Context, string, ...any) {}
func (quiet) Infof(context.Context, string, ...any)  {}
func (quiet) Warnf(context.Context, string, ...any)  {}
func (quiet) Errorf(context.Context, string, ...any) {}

func init() { nrilog.Set(quiet{}) }

// runtime is containerd/nri's own runtime adaptation with in-process
// (builtin) plugins whose answers a test sets, and a Validator as its
// validating plugin: what a test judges is collated by NRI itself, exactly
// as the gateway's private runtime does it.
type runtime struct {
	nri *adaptation.Adaptation
	mu  sync.Mutex
	// answers maps a plugin name ("10-a") to the adjustment it returns.
	answers map[string]*api.ContainerAdjustment
}

// newRuntime starts an adaptation with one builtin plugin per name (each
// "<index>-<base>") and v as the validator.
func newRuntime(t testing.TB, v *Validator, plugins ...string) *runtime {
	t.Helper()
	rt := &runtime{answers: map[string]*api.ContainerAdjustment{}}
	var builtins []*builtin.BuiltinPlugin
	for _, name := range plugins {
		builtins = append(builtins, &builtin.BuiltinPlugin{Index: name[:2], Base: name[3:], Handlers: builtin.BuiltinHandlers{
			CreateContainer: func(context.Context, *api.CreateContainerRequest) (*api.CreateContainerResponse, error) {
				rt.mu.Lock()
				defer rt.mu.Unlock()
				a := rt.answers[name]
				if a == nil {
					return &api.CreateContainerResponse{}, nil
				}
				return &api.CreateContainerResponse{Adjust: proto.Clone(a).(*api.ContainerAdjustment)}, nil
			},
		}})
	}
	builtins = append(builtins, &builtin.BuiltinPlugin{Index: "00", Base: "policy", Handlers: builtin.BuiltinHandlers{
		ValidateContainerAdjustment: v.ValidateContainerAdjustment,
	}})
	dir := t.TempDir()
	nri, err := adaptation.New("test", "v1",
		func(context.Context, adaptation.SyncCB) error { return nil },
		func(context.Context, []*api.ContainerUpdate) ([]*api.ContainerUpdate, error) { return nil, nil },
		adaptation.WithPluginPath(filepath.Join(dir, "none")), adaptation.WithPluginConfigPath(filepath.Join(dir, "none")),
		adaptation.WithSocketPath(filepath.Join(dir, "nri.sock")), adaptation.WithBuiltinPlugins(builtins...))
	if err != nil {
		t.Fatal(err)
	}
	if err := nri.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nri.Stop)
	rt.nri = nri
	return rt
}

// create asks the plugins to adjust c (with the given answers) and returns
// the adjustment that NRI would hand the runtime, or the validator's error.
func (rt *runtime) create(c *api.Container, answers map[string]*api.ContainerAdjustment) (*api.ContainerAdjustment, error) {
	rt.mu.Lock()
	rt.answers = answers
	rt.mu.Unlock()
	rpl, err := rt.nri.CreateContainer(context.Background(), &api.CreateContainerRequest{
		Pod:       &api.PodSandbox{Id: "pod", Name: "web", Namespace: "prod"},
		Container: proto.Clone(c).(*api.Container),
	})
	if err != nil {
		return nil, err
	}
	return rpl.GetAdjust(), nil
}
