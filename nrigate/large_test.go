package nrigate

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	ctrdseccomp "github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/nri/pkg/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

// defaultSeccomp is containerd's default seccomp profile in NRI's form.
func defaultSeccomp() *api.LinuxSeccomp {
	return api.FromOCILinuxSeccomp(ctrdseccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}}))
}

// TestLargeAdjustmentsThroughTheGateway sends adjustments over 4 KiB through
// the whole gateway (authenticated connection, relay, policy, upstream): an
// injector's env values up to 1 MiB, and a tighten-only role's tightening
// of containerd's default seccomp profile, which is always over 4 KiB.
func TestLargeAdjustmentsThroughTheGateway(t *testing.T) {
	e := newEnv(t, nil)
	var value string
	p, err := e.connect(e.keys["injector"], "20", "injector", func(a *api.ContainerAdjustment) { a.AddEnv("INJECTED_BIG", value) })
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{3900, 4200, 64 << 10, 1 << 20} {
		p.mu.Lock()
		value = strings.Repeat("v", n)
		p.mu.Unlock()
		eventually(t, fmt.Sprintf("a %d-byte env value", n), func() error {
			rsp, err := e.rt.create(context.Background())
			if err != nil {
				return err
			}
			if got := envOf(rsp)["INJECTED_BIG"]; len(got) != n {
				return fmt.Errorf("env value of %d bytes", len(got))
			}
			return nil
		})
	}
	p.Stop()

	original := defaultSeccomp()
	tightened := proto.Clone(original).(*api.LinuxSeccomp)
	i := slices.IndexFunc(tightened.Syscalls, func(s *api.LinuxSyscall) bool {
		return s.Action == "SCMP_ACT_ALLOW" && slices.Contains(s.Names, "ptrace")
	})
	if i < 0 {
		t.Fatal("the default profile does not allow ptrace")
	}
	tightened.Syscalls[i].Names = slices.DeleteFunc(slices.Clone(tightened.Syscalls[i].Names), func(n string) bool { return n == "ptrace" })
	if proto.Size(tightened) <= 4096 {
		t.Fatalf("the tightened profile is only %d bytes", proto.Size(tightened))
	}
	if _, err := e.connect(e.keys["security"], "30", "security", func(a *api.ContainerAdjustment) { a.SetLinuxSeccompPolicy(tightened) }); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the tightened seccomp profile", func() error {
		rsp, err := e.rt.CreateContainer(context.Background(), &api.CreateContainerRequest{
			Pod: &api.PodSandbox{Id: "pod0", Name: "web", Namespace: "prod", Uid: "u0"},
			Container: &api.Container{Id: nextID(), PodSandboxId: "pod0", Name: "app", State: api.ContainerState_CONTAINER_CREATED,
				Linux: &api.LinuxContainer{
					SeccompProfile: &api.SecurityProfile{ProfileType: api.SecurityProfile_RUNTIME_DEFAULT},
					SeccompPolicy:  original,
				}},
		})
		if err != nil {
			return err
		}
		if !proto.Equal(rsp.GetAdjust().GetLinux().GetSeccompPolicy(), tightened) {
			return fmt.Errorf("seccomp adjustment %d bytes", proto.Size(rsp.GetAdjust().GetLinux().GetSeccompPolicy()))
		}
		return nil
	})
	if lost := e.lostRecords(); len(lost) != 0 {
		t.Fatalf("lost: %v", lost)
	}
}
