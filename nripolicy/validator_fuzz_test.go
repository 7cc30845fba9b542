package nripolicy

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
	"google.golang.org/protobuf/proto"

	"github.com/trustgate/trustgate/seccomp"
)

// restrictive is FuzzValidator's role: a SPIFFE injector with a little
// more. Its oracle is withinRestrictive.
var restrictive = Policy{
	Env:         Globs{"SPIFFE_*"},
	Annotations: Globs{"example.com/*", "run.oci.*"},
	Mounts: MountPolicy{Sources: Globs{"/run/spire/sockets/**"}, Types: Globs{"tmpfs"},
		Destinations: Globs{"/run/spire/**"}, ReadOnly: true},
	Devices:   Globs{"/dev/fuse"},
	Rlimits:   Globs{"RLIMIT_NOFILE"},
	Resources: ResourcePolicy{CPU: true, Unified: Globs{"cpu.*"}, Devices: DeviceRules{"c 10:229 rw"}},
	Seccomp:   seccomp.Policy{Mode: seccomp.ModeNone},
}

// fuzzer draws choices from fuzz bytes.
type fuzzer struct{ b []byte }

func (f *fuzzer) n(max int) int {
	if len(f.b) == 0 {
		return 0
	}
	v := int(f.b[0]) % max
	f.b = f.b[1:]
	return v
}

func pick[T any](f *fuzzer, xs ...T) T { return xs[f.n(len(xs))] }

func (f *fuzzer) opt64(xs ...int64) *api.OptionalInt64 {
	if f.n(3) == 0 {
		return nil
	}
	return &api.OptionalInt64{Value: pick(f, xs...)}
}

// adjustment builds a whole ContainerAdjustment from the fuzz bytes, with
// values around the role's edges.
func (f *fuzzer) adjustment() *api.ContainerAdjustment {
	a := &api.ContainerAdjustment{}
	for range 1 + f.n(8) {
		switch f.n(24) {
		case 0:
			a.AddEnv(pick(f, "SPIFFE_ID", "SPIFFE_X", "PATH", "LD_PRELOAD"), "v")
		case 1:
			a.RemoveEnv(pick(f, "SPIFFE_ID", "PATH", "HOME"))
		case 2:
			a.AddAnnotation(pick(f, "example.com/a", "run.oci.seccomp_bpf_data", "run.oci.handler", "io.kubernetes.cri-o.Devices", "other"), "v")
		case 3:
			a.RemoveAnnotation(pick(f, "example.com/a", "team", "run.oci.keep_original_groups"))
		case 4:
			var opts []string
			for range f.n(5) {
				opts = append(opts, pick(f, "bind", "rbind", "ro", "rw", "rro", "rrw", "rshared", "remount", "nosuid", "nodev", "idmap"))
			}
			a.AddMount(&api.Mount{
				Type:        pick(f, "", "bind", "tmpfs", "proc", "/run/spire/sockets/x"),
				Source:      pick(f, "/run/spire/sockets", "/run/spire/sockets/evil", "../../..", "/etc", "tmpfs", "/run/spire/sockets/../../../etc", "/run/spire/sockets/up/spire/sockets"),
				Destination: pick(f, "/run/spire/a", "/run/spire/../etc", "/etc/x", "/proc/x", "/run/spire/b/"),
				Options:     opts,
			})
		case 5:
			a.RemoveMount(pick(f, "/run/spire/a", "/etc/hosts", "/run/spire/../etc"))
		case 6:
			n := pick(f, [2]int64{10, 229}, [2]int64{8, 0}, [2]int64{1, 1}, [2]int64{1, 3})
			a.AddDevice(&api.LinuxDevice{Path: pick(f, "/dev/fuse", "/dev/sda", "/dev/../dev/fuse"), Type: pick(f, "c", "b", "u", "p", ""), Major: n[0], Minor: n[1]})
		case 7:
			a.RemoveDevice(pick(f, "/dev/fuse", "/dev/null"))
		case 8:
			if a.Linux == nil {
				a.Linux = &api.LinuxContainerAdjustment{}
			}
			if a.Linux.Resources == nil {
				a.Linux.Resources = &api.LinuxResources{}
			}
			a.Linux.Resources.Devices = append(a.Linux.Resources.Devices, &api.LinuxDeviceCgroup{
				Allow: f.n(2) == 0, Type: pick(f, "a", "b", "c", ""), Major: f.opt64(10, 8, -1), Minor: f.opt64(229, 0, -1),
				Access: pick(f, "rw", "rwm", "", "r")})
		case 9:
			a.SetLinuxCPUShares(100)
		case 10:
			a.SetLinuxMemoryLimit(1 << 20)
		case 11:
			a.AddLinuxUnified(pick(f, "cpu.weight", "memory.max", "cpu.max"), "1")
		case 12:
			a.SetLinuxPidLimits(10)
		case 13:
			a.AddLinuxHugepageLimit("2MB", 1)
		case 14:
			a.SetLinuxBlockIOClass("x")
		case 15:
			a.SetLinuxRDTClass("x")
		case 16:
			a.AddRlimit(pick(f, "RLIMIT_NOFILE", "RLIMIT_CORE"), 1, 1)
		case 17:
			a.AddHooks(&api.Hooks{Prestart: []*api.Hook{{Path: "/bin/sh"}}})
		case 18:
			a.SetArgs([]string{"/bin/sh"})
		case 19:
			a.AddOrReplaceNamespace(&api.LinuxNamespace{Type: "network", Path: "/proc/1/ns/net"})
		case 20:
			a.SetLinuxSysctl(pick(f, "net.ipv4.ip_forward", api.MarkForRemoval("kernel.x")), "1")
		case 21:
			a.SetLinuxCgroupsPath("/x")
			oom := 1
			a.SetLinuxOomScoreAdj(&oom)
		case 22:
			a.SetLinuxSeccompPolicy(&api.LinuxSeccomp{DefaultAction: "SCMP_ACT_ALLOW"})
		case 23:
			a.AddCDIDevice(&api.CDIDevice{Name: "vendor.com/gpu=0"})
			a.AddLinuxNetDevice("eth1", &api.LinuxNetDevice{Name: "eth1"})
			a.RemoveLinuxRDT()
		}
	}
	return a
}

// withinRestrictive is the oracle: it reports the first thing in adj, as
// NRI hands it to the runtime, that the restrictive role does not allow,
// or "".
func withinRestrictive(adj *api.ContainerAdjustment) string {
	has := func(p, s string) bool { return strings.HasPrefix(s, p) }
	for _, e := range adj.GetEnv() {
		if k, _ := api.IsMarkedForRemoval(e.Key); !has("SPIFFE_", k) {
			return "env " + e.Key
		}
	}
	for k := range adj.GetAnnotations() {
		if k, _ := api.IsMarkedForRemoval(k); !has("example.com/", k) {
			return "annotation " + k
		}
	}
	for _, m := range adj.GetMounts() {
		if d, rm := m.IsMarkedForRemoval(); rm {
			if !has("/run/spire/", d) || strings.Contains(d, "..") {
				return "mount removal " + d
			}
			continue
		}
		bind, host, writable := runcView(m)
		switch {
		case bind && host != "/run/spire/sockets" && !has("/run/spire/sockets/", host):
			return "bind mount of " + host
		case !bind && m.Type != "tmpfs":
			return "mount type " + m.Type
		case writable:
			return "writable mount"
		case !has("/run/spire/", m.Destination) || strings.Contains(m.Destination, "..") || strings.HasSuffix(m.Destination, "/"):
			return "mount at " + m.Destination
		}
		for _, o := range m.Options {
			if o == "rshared" || o == "remount" || o == "idmap" {
				return "mount option " + o
			}
		}
	}
	for _, d := range adj.GetLinux().GetDevices() {
		if p, rm := d.IsMarkedForRemoval(); rm {
			if p != "/dev/fuse" {
				return "device removal " + p
			}
			continue
		}
		if d.Path != "/dev/fuse" || (d.Type != "c" && d.Type != "u") || d.Major != 10 || d.Minor != 229 {
			return "device " + d.String()
		}
	}
	r := adj.GetLinux().GetResources()
	for _, d := range r.GetDevices() {
		if d.Type != "c" || d.Major.GetValue() != 10 || d.Major == nil || d.Minor == nil || d.Minor.Value != 229 || d.Access == "" || strings.Trim(d.Access, "rw") != "" {
			return "device rule " + d.String()
		}
	}
	if m := r.GetMemory(); m != nil && !proto.Equal(m, &api.LinuxMemory{}) {
		return "memory"
	}
	for k := range r.GetUnified() {
		if !has("cpu.", k) {
			return "unified " + k
		}
	}
	if len(r.GetHugepageLimits()) > 0 || r.GetBlockioClass() != nil || r.GetRdtClass() != nil || r.GetPids() != nil {
		return "resources"
	}
	for _, l := range adj.GetRlimits() {
		if l.Type != "RLIMIT_NOFILE" {
			return "rlimit " + l.Type
		}
	}
	h := adj.GetHooks()
	l := adj.GetLinux()
	switch {
	case len(h.GetPrestart())+len(h.GetCreateRuntime())+len(h.GetCreateContainer())+len(h.GetStartContainer())+len(h.GetPoststart())+len(h.GetPoststop()) > 0:
		return "hooks"
	case len(adj.GetArgs()) > 0:
		return "args"
	case len(adj.GetCDIDevices()) > 0:
		return "CDI devices"
	case len(l.GetNamespaces()) > 0 || len(l.GetSysctl()) > 0 || len(l.GetNetDevices()) > 0:
		return "namespaces, sysctls or net devices"
	case l.GetCgroupsPath() != "" || l.GetOomScoreAdj() != nil || l.GetIoPriority() != nil || l.GetScheduler() != nil || l.GetMemoryPolicy() != nil:
		return "linux settings"
	case l.GetSeccompPolicy() != nil:
		return "seccomp"
	case l.GetRdt() != nil && !proto.Equal(l.GetRdt(), &api.LinuxRdt{}):
		return "RDT"
	}
	return ""
}

// withinRestrictiveUpdate is the oracle for container updates.
func withinRestrictiveUpdate(u *api.ContainerUpdate) string {
	adj := &api.ContainerAdjustment{Linux: &api.LinuxContainerAdjustment{Resources: u.GetLinux().GetResources()}}
	return withinRestrictive(adj)
}

// FuzzValidator: whole adjustments from a plugin with the restrictive role
// (and, with a second plugin that may change nothing, from both), collated
// by NRI itself, and whole container updates. Everything accepted must be
// within the role by the oracle; with the second plugin present, an
// accepted result must be what the first plugin alone gets.
func FuzzValidator(f *testing.F) {
	f.Add([]byte{0, 2, 0, 2, 0})
	f.Add([]byte{1, 4, 2, 1, 0, 2, 1, 3, 0, 2})
	f.Add([]byte{2, 8, 0, 2, 1, 0, 1, 0, 8, 0, 0, 1, 2, 0, 0})
	f.Add([]byte{3, 5, 1, 9, 11, 1, 6, 0, 0, 0})
	f.Add([]byte{0, 3, 1, 3, 2, 23, 17, 18, 21})
	roles := roleMap{
		"10-a": {Plugin: "10-a", Role: "restrictive", Policy: &restrictive},
		"20-b": {Plugin: "20-b", Role: "nothing", Policy: &Policy{}},
	}
	v, _, _ := newValidator(f, roles, Globals{})
	alone, both := newRuntime(f, v, "10-a"), newRuntime(f, v, "10-a", "20-b")
	c := ctr()
	c.Mounts = []*api.Mount{{Destination: "/etc/hosts", Source: "/x/hosts", Type: "bind", Options: []string{"rbind", "ro"}}}
	c.Annotations = map[string]string{"team": "a"}
	c.Linux.Devices = []*api.LinuxDevice{{Path: "/dev/null", Type: "c", Major: 1, Minor: 3}}
	f.Fuzz(func(t *testing.T, data []byte) {
		fz := &fuzzer{b: data}
		withB := fz.n(2) == 1
		a := fz.adjustment()
		answers := map[string]*api.ContainerAdjustment{"10-a": a}
		if withB {
			answers["20-b"] = fz.adjustment()
		}
		aloneAdj, aloneErr := alone.create(c, map[string]*api.ContainerAdjustment{"10-a": a})
		if aloneErr == nil {
			if why := withinRestrictive(aloneAdj); why != "" {
				t.Fatalf("accepted outside the role: %s\n%v", why, aloneAdj)
			}
		}
		if withB {
			bothAdj, err := both.create(c, answers)
			if err == nil && (aloneErr != nil || !proto.Equal(withoutEmptyRdt(aloneAdj), withoutEmptyRdt(bothAdj))) {
				t.Fatalf("a plugin that may change nothing changed the result:\nalone %v (%v)\nboth  %v", aloneAdj, aloneErr, bothAdj)
			}
		}
		// The same changes as an update.
		u := &api.ContainerUpdate{ContainerId: "c1", Linux: &api.LinuxContainerUpdate{Resources: a.GetLinux().GetResources()}}
		if err := v.CheckUpdates(context.Background(), roles["10-a"], "update", []*api.ContainerUpdate{u}); err == nil {
			if why := withinRestrictiveUpdate(u); why != "" {
				t.Fatalf("update accepted outside the role: %s\n%v", why, u)
			}
		}
	})
}

// withoutEmptyRdt returns adj without the empty RDT block NRI's collation
// adds for any plugin that answers with Linux settings.
func withoutEmptyRdt(adj *api.ContainerAdjustment) *api.ContainerAdjustment {
	adj = proto.Clone(adj).(*api.ContainerAdjustment)
	if l := adj.GetLinux(); l != nil && proto.Equal(l.GetRdt(), &api.LinuxRdt{}) {
		l.Rdt = nil
	}
	return adj
}
