package nripolicy

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/containerd/nri/pkg/api"
)

// BenchmarkValidateInjector judges what a SPIFFE injector asks for (two
// variables and a read-only socket mount, resolved on this machine), and
// a device node (stat on this machine).
func BenchmarkValidateInjector(b *testing.B) {
	dir := b.TempDir()
	p := Policy{Env: Globs{"SPIFFE_*"}, Devices: Globs{"/dev/null"},
		Mounts: MountPolicy{Sources: Globs{dir + "/**"}, Destinations: Globs{"/run/spire/sockets/*"}, ReadOnly: true}}
	a, err := NewAudit(slog.New(slog.NewJSONHandler(io.Discard, nil)), nil)
	if err != nil {
		b.Fatal(err)
	}
	v := NewValidator(roleMap{"20-injector": {Plugin: "20-injector", Role: "identity", Policy: &p}}, Globals{}, a)
	adj := &api.ContainerAdjustment{}
	adj.AddEnv("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/sockets/agent.sock")
	adj.AddEnv("SPIFFE_ID", "spiffe://example.org/w")
	adj.AddMount(&api.Mount{Source: dir, Destination: "/run/spire/sockets/x", Type: "bind", Options: []string{"bind", "ro"}})
	req := request(b, ctr(), map[string]*api.ContainerAdjustment{"20-injector": adj})
	if err := req.Owners.ClaimDevice("c1", "/dev/null", "20-injector"); err != nil {
		b.Fatal(err)
	}
	req.Adjust.Linux = &api.LinuxContainerAdjustment{Devices: []*api.LinuxDevice{{Path: "/dev/null", Type: "c", Major: 1, Minor: 3}}}
	if err := v.ValidateContainerAdjustment(context.Background(), req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := v.ValidateContainerAdjustment(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}
