package nripolicy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
	validator "github.com/containerd/nri/plugins/default-validator"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trustgate/trustgate/seccomp"
)

// roleMap maps plugin names to subjects.
type roleMap map[string]Subject

func (m roleMap) Lookup(p string) (Subject, bool) { s, ok := m[p]; return s, ok }

func newValidator(t testing.TB, roles roleMap, g Globals) (*Validator, *bytes.Buffer, *prometheus.Registry) {
	t.Helper()
	var buf bytes.Buffer
	reg := prometheus.NewRegistry()
	a, err := NewAudit(slog.New(slog.NewJSONHandler(&buf, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	return NewValidator(roles, g, a, WithHost(testHost)), &buf, reg
}

// request builds a validation request the way NRI's adaptation does: each
// plugin's adjustment is claimed in OwningPlugins under its name.
func request(t testing.TB, ctr *api.Container, adjust map[string]*api.ContainerAdjustment) *api.ValidateContainerAdjustmentRequest {
	t.Helper()
	owners := api.NewOwningPlugins()
	merged := &api.ContainerAdjustment{}
	id := ctr.Id
	for plugin, a := range adjust {
		for _, m := range a.Mounts {
			if err := owners.ClaimMount(id, m.Destination, plugin); err != nil {
				t.Fatal(err)
			}
			merged.Mounts = append(merged.Mounts, m)
		}
		for _, e := range a.Env {
			if err := owners.ClaimEnv(id, e.Key, plugin); err != nil {
				t.Fatal(err)
			}
			merged.Env = append(merged.Env, e)
		}
		if a.Hooks != nil {
			if err := owners.ClaimHooks(id, plugin); err != nil {
				t.Fatal(err)
			}
			merged.Hooks = a.Hooks
		}
		if l := a.Linux; l != nil {
			if merged.Linux == nil {
				merged.Linux = &api.LinuxContainerAdjustment{}
			}
			if l.SeccompPolicy != nil {
				if err := owners.ClaimSeccompPolicy(id, plugin); err != nil {
					t.Fatal(err)
				}
				merged.Linux.SeccompPolicy = l.SeccompPolicy
			}
			for _, ns := range l.Namespaces {
				if err := owners.ClaimNamespace(id, ns.Type, plugin); err != nil {
					t.Fatal(err)
				}
				merged.Linux.Namespaces = append(merged.Linux.Namespaces, ns)
			}
			for k, v := range l.Sysctl {
				if err := owners.ClaimSysctl(id, k, plugin); err != nil {
					t.Fatal(err)
				}
				if merged.Linux.Sysctl == nil {
					merged.Linux.Sysctl = map[string]string{}
				}
				merged.Linux.Sysctl[k] = v
			}
			if r := l.Resources; r != nil && r.Memory != nil && r.Memory.Limit != nil {
				if err := owners.ClaimMemLimit(id, plugin); err != nil {
					t.Fatal(err)
				}
			}
			if l.OomScoreAdj != nil {
				if err := owners.ClaimOomScoreAdj(id, plugin); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	req := &api.ValidateContainerAdjustmentRequest{
		Pod:       &api.PodSandbox{Id: "pod", Name: "web", Namespace: "prod"},
		Container: ctr,
		Adjust:    merged,
		Owners:    owners,
	}
	for p := range adjust {
		req.Plugins = append(req.Plugins, &api.PluginInstance{Name: p[3:], Index: p[:2]})
	}
	return req
}

func ctr() *api.Container { return &api.Container{Id: "c1", Name: "app", Linux: &api.LinuxContainer{}} }

func mount(src, dst string, opts ...string) *api.Mount {
	return &api.Mount{Source: src, Destination: dst, Type: "bind", Options: append([]string{"bind"}, opts...)}
}

func TestMountPolicy(t *testing.T) {
	p := Policy{Mounts: MountPolicy{Sources: Globs{"/var/lib/agent/**"}, Destinations: Globs{"/run/agent/*"}, ReadOnly: true}}
	v, _, _ := newValidator(t, roleMap{"10-agent": {Plugin: "10-agent", Role: "agent", Policy: &p}}, Globals{})
	cases := []struct {
		name string
		m    *api.Mount
		ok   bool
	}{
		{"allowed", mount("/var/lib/agent/sock", "/run/agent/sock", "ro"), true},
		{"nested source", mount("/var/lib/agent/a/b", "/run/agent/x", "ro"), true},
		{"writable", mount("/var/lib/agent/sock", "/run/agent/sock", "rw"), false},
		{"bad source", mount("/etc", "/run/agent/etc", "ro"), false},
		{"dotdot source", mount("/var/lib/agent/../../../etc", "/run/agent/etc", "ro"), false},
		{"bad destination", mount("/var/lib/agent/sock", "/etc/passwd", "ro"), false},
		{"dotdot destination", mount("/var/lib/agent/sock", "/run/agent/../../etc", "ro"), false},
		{"relative source", mount("var/lib/agent/x", "/run/agent/x", "ro"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			adj := &api.ContainerAdjustment{}
			adj.AddMount(tc.m)
			err := v.ValidateContainerAdjustment(context.Background(), request(t, ctr(), map[string]*api.ContainerAdjustment{"10-agent": adj}))
			if (err == nil) != tc.ok {
				t.Fatalf("got %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrDenied) {
				t.Fatalf("error does not wrap ErrDenied: %v", err)
			}
		})
	}
}

func TestEachOwnerJudgedByOwnRole(t *testing.T) {
	strict := Policy{}
	loose := AllowAll()
	v, logs, reg := newValidator(t, roleMap{
		"10-strict": {Plugin: "10-strict", Role: "strict", Fingerprint: "fp-strict", Policy: &strict},
		"20-loose":  {Plugin: "20-loose", Role: "loose", Fingerprint: "fp-loose", Policy: &loose},
	}, Globals{})
	a1 := &api.ContainerAdjustment{}
	a1.AddEnv("FROM_STRICT", "1")
	a2 := &api.ContainerAdjustment{}
	a2.AddEnv("FROM_LOOSE", "1")
	a2.AddHooks(&api.Hooks{Prestart: []*api.Hook{{Path: "/bin/true"}}})
	err := v.ValidateContainerAdjustment(context.Background(), request(t, ctr(), map[string]*api.ContainerAdjustment{"10-strict": a1, "20-loose": a2}))
	if err == nil || !strings.Contains(err.Error(), "10-strict") || strings.Contains(err.Error(), "20-loose") {
		t.Fatalf("want only the strict plugin refused, got %v", err)
	}
	if got := testutil.ToFloat64(mustCounter(t, reg, "strict", "deny")); got != 1 {
		t.Fatalf("strict deny counter %v", got)
	}
	if got := testutil.ToFloat64(mustCounter(t, reg, "loose", "allow")); got != 2 {
		t.Fatalf("loose allow counter %v", got)
	}
	// The audit log has one record per decision with the required fields.
	var denied map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		if rec["verdict"] == "deny" {
			denied = rec
		}
	}
	want := map[string]any{"plugin": "10-strict", "key_fingerprint": "fp-strict", "role": "strict", "pod": "prod/web",
		"container": "c1", "field": "Env", "key": "FROM_STRICT"}
	for k, v := range want {
		if denied[k] != v {
			t.Fatalf("audit record %s = %v, want %v (record %v)", k, denied[k], v, denied)
		}
	}
	if !strings.Contains(denied["reason"].(string), "FROM_STRICT") {
		t.Fatalf("audit reason %v", denied["reason"])
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, role, verdict string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if mf.GetName() == "trustgate_nri_decisions_total" && labels["role"] == role && labels["verdict"] == verdict {
				return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x", Help: "x"}, func() float64 { return m.GetCounter().GetValue() })
			}
		}
	}
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x", Help: "x"}, func() float64 { return 0 })
}

func TestUnknownPluginAndUnknownFieldAreRefused(t *testing.T) {
	all := AllowAll()
	v, _, _ := newValidator(t, roleMap{"10-known": {Plugin: "10-known", Role: "r", Policy: &all}}, Globals{})
	adj := &api.ContainerAdjustment{}
	adj.AddEnv("X", "1")
	err := v.ValidateContainerAdjustment(context.Background(), request(t, ctr(), map[string]*api.ContainerAdjustment{"10-stranger": adj}))
	if err == nil || !strings.Contains(err.Error(), "did not connect through the gateway") {
		t.Fatalf("stranger: %v", err)
	}
	// A field number this package does not know is refused even for an
	// allow-all role.
	if ok, reason := decide(context.Background(), &all, claim{field: api.Field(999)}, nil, osHost{}); ok || !strings.Contains(reason, "not covered") {
		t.Fatalf("unknown field: %v %s", ok, reason)
	}
}

func TestSeccompTightenOnly(t *testing.T) {
	p := Policy{Seccomp: seccomp.Policy{Mode: seccomp.ModeTightenOnly}}
	v, _, _ := newValidator(t, roleMap{"10-sec": {Plugin: "10-sec", Role: "sec", Policy: &p}}, Globals{})
	base := &api.LinuxSeccomp{DefaultAction: "SCMP_ACT_ERRNO", Syscalls: []*api.LinuxSyscall{
		{Names: []string{"read", "write", "ptrace"}, Action: "SCMP_ACT_ALLOW"},
	}}
	withPod := func(kind api.SecurityProfile_ProfileType, original *api.LinuxSeccomp) *api.Container {
		c := ctr()
		c.Linux.SeccompProfile = &api.SecurityProfile{ProfileType: kind}
		c.Linux.SeccompPolicy = original
		return c
	}
	adjust := func(sp *api.LinuxSeccomp) map[string]*api.ContainerAdjustment {
		a := &api.ContainerAdjustment{}
		a.SetLinuxSeccompPolicy(sp)
		return map[string]*api.ContainerAdjustment{"10-sec": a}
	}
	tighter := &api.LinuxSeccomp{DefaultAction: "SCMP_ACT_ERRNO", Syscalls: []*api.LinuxSyscall{
		{Names: []string{"read", "write"}, Action: "SCMP_ACT_ALLOW"},
	}}
	looser := &api.LinuxSeccomp{DefaultAction: "SCMP_ACT_ERRNO", Syscalls: []*api.LinuxSyscall{
		{Names: []string{"read", "write", "ptrace", "mount"}, Action: "SCMP_ACT_ALLOW"},
	}}
	if err := v.ValidateContainerAdjustment(context.Background(), request(t, withPod(api.SecurityProfile_RUNTIME_DEFAULT, base), adjust(tighter))); err != nil {
		t.Fatalf("tightening refused: %v", err)
	}
	err := v.ValidateContainerAdjustment(context.Background(), request(t, withPod(api.SecurityProfile_RUNTIME_DEFAULT, base), adjust(looser)))
	if err == nil || !strings.Contains(err.Error(), "mount") {
		t.Fatalf("loosening accepted or unexplained: %v", err)
	}
	// Without the original policy, nothing is provably tighter.
	err = v.ValidateContainerAdjustment(context.Background(), request(t, withPod(api.SecurityProfile_RUNTIME_DEFAULT, nil), adjust(tighter)))
	if err == nil || !strings.Contains(err.Error(), "cannot be proven") {
		t.Fatalf("missing original: %v", err)
	}
}

func TestUpdatesChecked(t *testing.T) {
	p := Policy{Resources: ResourcePolicy{CPU: true, Unified: Globs{"cpu.*"}}}
	v, _, _ := newValidator(t, nil, Globals{})
	subj := Subject{Plugin: "10-x", Role: "x", Policy: &p}
	ok := []*api.ContainerUpdate{{ContainerId: "c1", Linux: &api.LinuxContainerUpdate{Resources: &api.LinuxResources{
		Cpu: &api.LinuxCPU{Shares: api.UInt64(100)}, Unified: map[string]string{"cpu.weight": "5"}}}}}
	if err := v.CheckUpdates(context.Background(), subj, "unsolicited-update", ok); err != nil {
		t.Fatal(err)
	}
	bad := []*api.ContainerUpdate{{ContainerId: "c1", Linux: &api.LinuxContainerUpdate{Resources: &api.LinuxResources{
		Memory: &api.LinuxMemory{Limit: api.Int64(1)}, Unified: map[string]string{"memory.max": "1"}}}}}
	err := v.CheckUpdates(context.Background(), subj, "update", bad)
	if err == nil || !strings.Contains(err.Error(), "memory resources") || !strings.Contains(err.Error(), "memory.max") {
		t.Fatalf("got %v", err)
	}
}

func TestPolicyValidate(t *testing.T) {
	p := Policy{Env: Globs{"[bad"}, Namespaces: Globs{"netwrok"}, Seccomp: seccomp.Policy{Mode: "loose"}}
	err := p.Validate("roles.x.policy")
	for _, want := range []string{"roles.x.policy.env", "netwrok", "roles.x.policy.seccomp"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("want %q in %v", want, err)
		}
	}
}

// TestDefaultValidatorKnobsAgreeWithUpstream runs every combination of the
// default validator's knobs over a set of adjustments through containerd/nri's
// own DefaultValidator and through the role FromDefaultValidator makes:
// their verdicts must be the same.
func TestDefaultValidatorKnobsAgreeWithUpstream(t *testing.T) {
	base := &api.LinuxSeccomp{DefaultAction: "SCMP_ACT_ERRNO", Syscalls: []*api.LinuxSyscall{{Names: []string{"read"}, Action: "SCMP_ACT_ALLOW"}}}
	adjustments := map[string]func() *api.ContainerAdjustment{
		"env": func() *api.ContainerAdjustment { a := &api.ContainerAdjustment{}; a.AddEnv("A", "1"); return a },
		"hooks": func() *api.ContainerAdjustment {
			a := &api.ContainerAdjustment{}
			a.AddHooks(&api.Hooks{Prestart: []*api.Hook{{Path: "/x"}}})
			return a
		},
		"seccomp": func() *api.ContainerAdjustment {
			a := &api.ContainerAdjustment{}
			a.SetLinuxSeccompPolicy(base)
			return a
		},
		"namespace": func() *api.ContainerAdjustment {
			a := &api.ContainerAdjustment{}
			a.AddOrReplaceNamespace(&api.LinuxNamespace{Type: "network", Path: "/proc/1/ns/net"})
			return a
		},
		"sysctl": func() *api.ContainerAdjustment {
			a := &api.ContainerAdjustment{}
			a.SetLinuxSysctl("net.ipv4.ip_forward", "1")
			return a
		},
		"mount": func() *api.ContainerAdjustment {
			a := &api.ContainerAdjustment{}
			a.AddMount(mount("/x", "/y"))
			return a
		},
	}
	kinds := []*api.SecurityProfile{nil, {ProfileType: api.SecurityProfile_RUNTIME_DEFAULT},
		{ProfileType: api.SecurityProfile_UNCONFINED}, {ProfileType: api.SecurityProfile_LOCALHOST, LocalhostRef: "p"}}
	compared := 0
	for bits := range 1 << 7 {
		cfg := validator.DefaultValidatorConfig{
			Enable:                                bits&1 != 0,
			RejectOCIHookAdjustment:               bits&2 != 0,
			RejectRuntimeDefaultSeccompAdjustment: bits&4 != 0,
			RejectUnconfinedSeccompAdjustment:     bits&8 != 0,
			RejectCustomSeccompAdjustment:         bits&16 != 0,
			RejectNamespaceAdjustment:             bits&32 != 0,
			RejectSysctlAdjustment:                bits&64 != 0,
		}
		upstream := validator.NewDefaultValidator(&cfg)
		pol, glob := FromDefaultValidator(cfg)
		ours, _, _ := newValidator(t, roleMap{"10-p": {Plugin: "10-p", Role: "default", Policy: &pol}}, glob)
		for name, mk := range adjustments {
			for _, kind := range kinds {
				c := ctr()
				c.Linux.SeccompProfile = kind
				c.Linux.SeccompPolicy = base
				req := request(t, c, map[string]*api.ContainerAdjustment{"10-p": mk()})
				var upErr error
				if cfg.Enable {
					upErr = upstream.ValidateContainerAdjustment(context.Background(), req)
				}
				ourErr := ours.ValidateContainerAdjustment(context.Background(), req)
				if (upErr == nil) != (ourErr == nil) {
					t.Fatalf("knobs %+v, adjustment %s, profile %v: upstream %v, trustgate %v", cfg, name, kind, upErr, ourErr)
				}
				compared++
			}
		}
	}
	t.Logf("%d verdicts compared with NRI's default validator", compared)
}

func TestRequiredPluginsAgreeWithUpstream(t *testing.T) {
	cfg := validator.DefaultValidatorConfig{Enable: true, RequiredPlugins: []string{"need"}, TolerateMissingAnnotation: "tolerate-missing"}
	upstream := validator.NewDefaultValidator(&cfg)
	pol, glob := FromDefaultValidator(cfg)
	ours, _, _ := newValidator(t, roleMap{}, glob)
	_ = pol
	for _, ann := range []map[string]string{nil, {"tolerate-missing": "true"}, {"tolerate-missing": "false"},
		{"required-plugins.noderesource.dev": "[\"other\"]"}, {"tolerate-missing": "bogus"}} {
		for _, plugins := range [][]*api.PluginInstance{nil, {{Name: "need", Index: "10"}}, {{Name: "need", Index: "10"}, {Name: "other", Index: "20"}}} {
			req := &api.ValidateContainerAdjustmentRequest{
				Pod:       &api.PodSandbox{Id: "p", Annotations: ann},
				Container: ctr(), Owners: api.NewOwningPlugins(), Plugins: plugins,
			}
			up := upstream.ValidateContainerAdjustment(context.Background(), req)
			us := ours.ValidateContainerAdjustment(context.Background(), req)
			if (up == nil) != (us == nil) {
				t.Fatalf("annotations %v plugins %v: upstream %v, trustgate %v", ann, plugins, up, us)
			}
		}
	}
}
