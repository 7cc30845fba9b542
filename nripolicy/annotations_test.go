package nripolicy

import (
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"

	"github.com/trustgate/trustgate/seccomp"
)

func TestRuntimeAnnotationsDenied(t *testing.T) {
	keys := []string{
		"run.oci.seccomp_bpf_data", "run.oci.keep_original_groups", "run.oci.systemd.subgroup", "run.oci.hooks.stdout",
		"run.oci.handler", "io.kubernetes.cri-o.Devices", "io.kubernetes.cri-o.userns-mode", "io.kubernetes.cri-o.TrustedSandbox",
		"io.kubernetes.cri-o.UnifiedCgroup.app", "io.kubernetes.cri-o.ShmSize", "io.kubernetes.cri-o.LinkLogs",
		"io.kubernetes.cri.container-type", "io.containerd.checkpoint.x", "io.katacontainers.config.hypervisor.path",
		"dev.gvisor.spec.mount.x.share", "seccomp.security.alpha.kubernetes.io/pod",
		"container.apparmor.security.beta.kubernetes.io/app", "org.systemd.property.DeviceAllow",
		"io.containers.trace-syscall", "cdi.k8s.io/gpu",
	}
	all := Globs{"*"}
	for _, mode := range []seccomp.Policy{{}, {Mode: seccomp.ModeTightenOnly}, {Mode: seccomp.ModeRuntimeDefaultOnly},
		{Mode: seccomp.ModeAny, Localhost: seccomp.ModeNone}} {
		p := &Policy{Annotations: all, Seccomp: mode}
		for _, k := range keys {
			for _, rm := range []bool{false, true} {
				if ok, why := decideAnnotation(p, k, rm); ok || !strings.Contains(why, "seccomp mode") {
					t.Errorf("seccomp %+v, key %s, removal %v: %v %s", mode, k, rm, ok, why)
				}
			}
		}
		if ok, why := decideAnnotation(p, "example.com/ok", false); !ok {
			t.Errorf("ordinary annotation refused: %s", why)
		}
	}
	// A role that may replace seccomp anyway gets them from its patterns.
	anyRole := &Policy{Annotations: all, Seccomp: seccomp.Policy{Mode: seccomp.ModeAny}}
	for _, k := range keys {
		if ok, why := decideAnnotation(anyRole, k, false); !ok {
			t.Errorf("seccomp any: %s refused: %s", k, why)
		}
	}
	if ok, _ := decideAnnotation(&Policy{Seccomp: seccomp.Policy{Mode: seccomp.ModeAny}}, "run.oci.handler", false); ok {
		t.Error("seccomp any without an annotation pattern allowed the key")
	}
}

// TestUnattributedChanges: what NRI hands the runtime without an owner
// record is judged by every plugin present.
func TestUnattributedChanges(t *testing.T) {
	strict := Policy{Env: Globs{"X"}}
	remover := Policy{Env: Globs{"X"}, Mounts: MountPolicy{Destinations: Globs{"/etc/hosts"}}, Annotations: Globs{"team"}}
	all := AllowAll()
	c := ctr()
	c.Mounts = []*api.Mount{{Destination: "/etc/hosts", Source: "/x/hosts", Type: "bind", Options: []string{"rbind", "ro"}}}
	c.Annotations = map[string]string{"team": "a"}
	cases := []struct {
		name  string
		roles map[string]*Policy
		adj   func(a *api.ContainerAdjustment)
		want  string
		b     func(a *api.ContainerAdjustment) // the answer of 20-b, if any
	}{
		{"mount removal by a role without the destination", map[string]*Policy{"10-a": &strict},
			func(a *api.ContainerAdjustment) { a.RemoveMount("/etc/hosts") }, "removing a mount", nil},
		{"mount removal allowed", map[string]*Policy{"10-a": &remover},
			func(a *api.ContainerAdjustment) { a.RemoveMount("/etc/hosts") }, "", nil},
		{"mount removal with a stricter plugin present", map[string]*Policy{"10-a": &remover, "20-b": &strict},
			func(a *api.ContainerAdjustment) { a.RemoveMount("/etc/hosts") }, "20-b", nil},
		{"annotation removal", map[string]*Policy{"10-a": &strict},
			func(a *api.ContainerAdjustment) { a.RemoveAnnotation("team") }, "removing annotation", nil},
		{"annotation removal allowed", map[string]*Policy{"10-a": &remover},
			func(a *api.ContainerAdjustment) { a.RemoveAnnotation("team") }, "", nil},
		{"device cgroup rule", map[string]*Policy{"10-a": &strict}, func(a *api.ContainerAdjustment) {
			a.Linux = &api.LinuxContainerAdjustment{Resources: &api.LinuxResources{Devices: []*api.LinuxDeviceCgroup{{Allow: true, Type: "b", Access: "rwm"}}}}
		}, `device cgroup rule "b *:* rwm"`, nil},
		{"device cgroup rule for allow-all", map[string]*Policy{"10-a": &all}, func(a *api.ContainerAdjustment) {
			a.Linux = &api.LinuxContainerAdjustment{Resources: &api.LinuxResources{Devices: []*api.LinuxDeviceCgroup{{Allow: true, Type: "b", Access: "rwm"}}}}
		}, "", nil},
		{"sysctl removal", map[string]*Policy{"10-a": &strict}, func(a *api.ContainerAdjustment) {
			a.Linux = &api.LinuxContainerAdjustment{Sysctl: map[string]string{api.MarkForRemoval("net.ipv4.ip_forward"): ""}}
		}, "removing sysctl", nil},
		// NRI records 10-a as the owner of "team" and nothing for 20-b's
		// removal, which the runtime may apply after 10-a's value.
		{"removal of another plugin's annotation", map[string]*Policy{"10-a": &remover, "20-b": &strict},
			func(a *api.ContainerAdjustment) { a.AddAnnotation("team", "b") }, "20-b",
			func(a *api.ContainerAdjustment) { a.RemoveAnnotation("team") }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			roles := roleMap{}
			var names []string
			for n, p := range tc.roles {
				roles[n] = Subject{Plugin: n, Role: n[3:], Policy: p}
				names = append(names, n)
			}
			v, _, _ := newValidator(t, roles, Globals{})
			rt := newRuntime(t, v, names...)
			a := &api.ContainerAdjustment{}
			tc.adj(a)
			answers := map[string]*api.ContainerAdjustment{"10-a": a}
			if tc.b != nil {
				b := &api.ContainerAdjustment{}
				tc.b(b)
				answers["20-b"] = b
			}
			_, err := rt.create(c, answers)
			if tc.want == "" && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want a refusal with %q", err, tc.want)
			}
		})
	}
}

// TestHooksFromTwoPlugins: NRI records hook injectors as "a,b"; each is
// judged by its own role.
func TestHooksFromTwoPlugins(t *testing.T) {
	hooks := Policy{OCIHooks: true}
	none := Policy{}
	hook := func() *api.ContainerAdjustment {
		a := &api.ContainerAdjustment{}
		a.AddHooks(&api.Hooks{Prestart: []*api.Hook{{Path: "/bin/true"}}})
		return a
	}
	for _, tc := range []struct {
		second *Policy
		ok     bool
	}{{&hooks, true}, {&none, false}} {
		v, _, _ := newValidator(t, roleMap{"10-a": {Plugin: "10-a", Role: "a", Policy: &hooks}, "20-b": {Plugin: "20-b", Role: "b", Policy: tc.second}}, Globals{})
		rt := newRuntime(t, v, "10-a", "20-b")
		_, err := rt.create(ctr(), map[string]*api.ContainerAdjustment{"10-a": hook(), "20-b": hook()})
		if (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), "20-b")) {
			t.Fatalf("second role %+v: %v", tc.second, err)
		}
	}
}
