package seccomp

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
	validator "github.com/containerd/nri/plugins/default-validator"

	"github.com/trustgate/trustgate/config"
)

var nriProfiles = map[string]*api.SecurityProfile{
	"nil":             nil,
	"runtime-default": {ProfileType: api.SecurityProfile_RUNTIME_DEFAULT},
	"unconfined":      {ProfileType: api.SecurityProfile_UNCONFINED},
	"localhost":       {ProfileType: api.SecurityProfile_LOCALHOST, LocalhostRef: "profiles/app.json"},
}

func TestKindOf(t *testing.T) {
	want := map[string]ProfileKind{"nil": KindUnconfined, "runtime-default": KindRuntimeDefault,
		"unconfined": KindUnconfined, "localhost": KindLocalhost}
	for name, sp := range nriProfiles {
		if got := KindOf(sp); got != want[name] {
			t.Errorf("%s: KindOf = %s, want %s", name, got, want[name])
		}
	}
}

// TestPolicyFromNRIRejectsMatchesNRIValidator runs NRI's own default
// validator and Policy.CheckNRI side by side on every combination of the
// three seccomp knobs and every profile kind: both must reject the same
// adjustments.
func TestPolicyFromNRIRejectsMatchesNRIValidator(t *testing.T) {
	orig := mobyDefault(t)
	tighter := orig.Clone()
	tighter.DefaultAction = Action{Kind: ActKillProcess}
	looser := orig.Clone()
	looser.Syscalls = append(looser.Syscalls, Rule{Names: []string{"kexec_load"}, Action: Action{Kind: ActAllow}})
	ctx := context.Background()
	for bits := range 8 {
		rd, un, cu := bits&1 != 0, bits&2 != 0, bits&4 != 0
		v := validator.NewDefaultValidator(&validator.DefaultValidatorConfig{Enable: true,
			RejectRuntimeDefaultSeccompAdjustment: rd, RejectUnconfinedSeccompAdjustment: un, RejectCustomSeccompAdjustment: cu})
		pol := PolicyFromNRIRejects(rd, un, cu)
		if err := pol.Validate(); err != nil {
			t.Fatalf("knobs %v/%v/%v: policy invalid: %v", rd, un, cu, err)
		}
		for spName, sp := range nriProfiles {
			for adjName, adj := range map[string]*Profile{"tighter": tighter, "looser": looser} {
				owners := api.NewOwningPlugins()
				if err := owners.ClaimSeccompPolicy("ctr", "10-plugin"); err != nil {
					t.Fatal(err)
				}
				req := &api.ValidateContainerAdjustmentRequest{
					Pod:       &api.PodSandbox{Id: "pod", Name: "pod", Namespace: "ns"},
					Container: &api.Container{Id: "ctr", Name: "ctr", Linux: &api.LinuxContainer{SeccompProfile: sp, SeccompPolicy: orig.NRI()}},
					Adjust:    &api.ContainerAdjustment{Linux: &api.LinuxContainerAdjustment{SeccompPolicy: adj.NRI()}},
					Owners:    owners,
				}
				nriErr := v.ValidateContainerAdjustment(ctx, req)
				ourErr := pol.CheckNRI(sp, orig.NRI(), adj.NRI())
				var rej *RejectedError
				if ourErr != nil && !errors.As(ourErr, &rej) {
					t.Fatalf("CheckNRI: %v", ourErr)
				}
				if (nriErr != nil) != (ourErr != nil) {
					t.Errorf("knobs rd=%v unconfined=%v custom=%v, profile %s, %s adjustment: NRI says %v, policy %+v says %v",
						rd, un, cu, spName, adjName, nriErr, pol, ourErr)
				}
			}
		}
	}
}

func TestModes(t *testing.T) {
	orig := mobyDefault(t)
	tighter := orig.Clone()
	tighter.DefaultAction = Action{Kind: ActKillProcess}
	looser := orig.Clone()
	looser.Syscalls = append(looser.Syscalls, Rule{Names: []string{"kexec_load"}, Action: Action{Kind: ActAllow}})
	type want struct{ tighter, looser bool } // accepted?
	cases := []struct {
		pol  Policy
		kind ProfileKind
		want want
	}{
		{Policy{Mode: ModeNone}, KindRuntimeDefault, want{false, false}},
		{Policy{}, KindRuntimeDefault, want{false, false}},
		{Policy{Mode: ModeAny}, KindLocalhost, want{true, true}},
		{Policy{Mode: ModeRuntimeDefaultOnly}, KindRuntimeDefault, want{true, true}},
		{Policy{Mode: ModeRuntimeDefaultOnly}, KindLocalhost, want{false, false}},
		{Policy{Mode: ModeRuntimeDefaultOnly}, KindUnconfined, want{false, false}},
		{Policy{Mode: ModeTightenOnly}, KindLocalhost, want{true, false}},
		{Policy{Mode: ModeTightenOnly}, KindUnconfined, want{true, false}},
		// Mike Brow's combination: anything on the runtime default,
		// confinement only on what the pod asked for explicitly.
		{Policy{Mode: ModeTightenOnly, RuntimeDefault: ModeAny}, KindRuntimeDefault, want{true, true}},
		{Policy{Mode: ModeTightenOnly, RuntimeDefault: ModeAny}, KindLocalhost, want{true, false}},
	}
	for _, c := range cases {
		for adjName, adj := range map[string]*Profile{"tighter": tighter, "looser": looser} {
			err := c.pol.Check(c.kind, orig, adj)
			accepted := err == nil
			wantAcc := c.want.tighter
			if adjName == "looser" {
				wantAcc = c.want.looser
			}
			if accepted != wantAcc {
				t.Errorf("policy %+v, kind %s, %s: accepted=%v (err %v), want %v", c.pol, c.kind, adjName, accepted, err, wantAcc)
			}
			var rej *RejectedError
			if err != nil && !errors.As(err, &rej) {
				t.Errorf("rejection is not a *RejectedError: %v", err)
			}
		}
	}
	err := Policy{Mode: ModeTightenOnly}.Check(KindLocalhost, orig, looser)
	if err == nil || !strings.Contains(err.Error(), "`kexec_load` on ") || !strings.Contains(err.Error(), "ERRNO -> ALLOW") {
		t.Errorf("rejection reads %v", err)
	}
}

func TestTightenOnlyAllowances(t *testing.T) {
	orig := mobyDefault(t)
	withListener := orig.Clone()
	withListener.ListenerPath = "/run/seccomp-agent/pod-123.sock"
	withListener.ListenerMetadata = "pod=123"
	withFlag := orig.Clone()
	withFlag.Flags = append(withFlag.Flags, FlagLog)
	errnoChanged := orig.Clone()
	errnoChanged.DefaultAction = Action{Kind: ActErrno, Ret: ENOSYS, RetSet: true}

	strict := Policy{Mode: ModeTightenOnly}
	lenient := Policy{Mode: ModeTightenOnly, AllowedListenerPaths: []string{"/run/seccomp-agent/*.sock"},
		AllowFlags: []string{FlagLog}, AllowErrnoChange: true, AllowArchitectureChange: true}
	if err := lenient.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, adj := range map[string]*Profile{"listener": withListener, "flag": withFlag, "errno": errnoChanged} {
		if err := strict.Check(KindLocalhost, orig, adj); err == nil {
			t.Errorf("%s: strict tighten-only accepted", name)
		}
		if err := lenient.Check(KindLocalhost, orig, adj); err != nil {
			t.Errorf("%s: lenient tighten-only rejected: %v", name, err)
		}
	}
	elsewhere := withListener.Clone()
	elsewhere.ListenerPath = "/tmp/evil.sock"
	if err := lenient.Check(KindLocalhost, orig, elsewhere); err == nil {
		t.Error("a listener outside the allowed globs was accepted")
	}
	// From unconfined, a listener still needs to be allowed.
	if err := strict.Check(KindUnconfined, nil, withListener); err == nil {
		t.Error("unconfined -> listener accepted by strict tighten-only")
	}
	if err := lenient.Check(KindUnconfined, nil, withListener); err != nil {
		t.Errorf("unconfined -> allowed listener rejected: %v", err)
	}
	if len(orig.Architectures) > 1 {
		fewer := orig.Clone()
		fewer.Architectures = fewer.Architectures[:1]
		if strict.Check(KindLocalhost, orig, fewer) == nil || lenient.Check(KindLocalhost, orig, fewer) != nil {
			t.Error("architecture allowance not honoured")
		}
	}
}

func TestPolicyTOMLAndValidate(t *testing.T) {
	var p Policy
	err := config.Decode([]byte(`
mode = "tighten-only"
runtime_default = "any"
allowed_listener_paths = ["/run/seccomp-agent/*.sock"]
allow_flags = ["SECCOMP_FILTER_FLAG_LOG"]
allow_architecture_change = false
allow_errno_change = true
`), &p)
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != ModeTightenOnly || p.RuntimeDefault != ModeAny || !p.AllowErrnoChange || len(p.AllowedListenerPaths) != 1 {
		t.Fatalf("decoded %+v", p)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := Policy{Mode: "tighten", Localhost: ModeRuntimeDefaultOnly, AllowedListenerPaths: []string{"[a-"},
		AllowFlags: []string{"SECCOMP_FILTER_FLAG_BOGUS"}}
	err = bad.Validate()
	var probs config.Problems
	if !errors.As(err, &probs) || len(probs) != 4 {
		t.Fatalf("want 4 problems, got %v", err)
	}
	if err := config.Decode([]byte(`mode = "any"`+"\n"+`allow_everything = true`), &Policy{}); err == nil {
		t.Fatal("unknown key accepted")
	}
}

func TestCheckNRIRejectsBadInput(t *testing.T) {
	pol := Policy{Mode: ModeTightenOnly}
	good := mobyDefault(t).NRI()
	for name, bad := range map[string]*api.LinuxSeccomp{
		"nil rule":   {DefaultAction: "SCMP_ACT_ERRNO", Syscalls: []*api.LinuxSyscall{nil}},
		"nil arg":    {DefaultAction: "SCMP_ACT_ERRNO", Syscalls: []*api.LinuxSyscall{{Names: []string{"read"}, Action: "SCMP_ACT_ALLOW", Args: []*api.LinuxSeccompArg{nil}}}},
		"bad action": {DefaultAction: "SCMP_ACT_MAYBE"},
		"bad op":     {DefaultAction: "SCMP_ACT_ERRNO", Syscalls: []*api.LinuxSyscall{{Names: []string{"read"}, Action: "SCMP_ACT_ALLOW", Args: []*api.LinuxSeccompArg{{Op: "SCMP_CMP_ALMOST"}}}}},
		"big index":  {DefaultAction: "SCMP_ACT_ERRNO", Syscalls: []*api.LinuxSyscall{{Names: []string{"read"}, Action: "SCMP_ACT_ALLOW", Args: []*api.LinuxSeccompArg{{Index: 1 << 31, Op: "SCMP_CMP_EQ"}}}}},
		"big errno":  {DefaultAction: "SCMP_ACT_ERRNO", DefaultErrno: &api.OptionalUInt32{Value: 1 << 20}},
	} {
		err := pol.CheckNRI(nriProfiles["localhost"], good, bad)
		var rej *RejectedError
		if err == nil || errors.As(err, &rej) {
			t.Errorf("%s: want a conversion error, got %v", name, err)
		}
	}
}
