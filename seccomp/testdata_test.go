package seccomp

import (
	"slices"
	"testing"

	ctrdseccomp "github.com/containerd/containerd/v2/contrib/seccomp"
	mobyseccomp "github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// defaultCaps is the capability set Docker and containerd give a container
// by default; both default profiles include rules by capability.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

func specWithDefaultCaps() *specs.Spec {
	return &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{
		Bounding: slices.Clone(defaultCaps), Effective: slices.Clone(defaultCaps), Permitted: slices.Clone(defaultCaps),
	}}}
}

// mobyDefaultOCI is Docker's default profile, as moby's own package renders
// it for a container with the default capabilities on this machine.
func mobyDefaultOCI(tb testing.TB) *specs.LinuxSeccomp {
	tb.Helper()
	o, err := mobyseccomp.GetDefaultProfile(specWithDefaultCaps())
	if err != nil {
		tb.Fatalf("moby default profile: %v", err)
	}
	return o
}

// containerdDefaultOCI is containerd's default profile from its own package.
func containerdDefaultOCI(tb testing.TB) *specs.LinuxSeccomp {
	tb.Helper()
	return ctrdseccomp.DefaultProfile(specWithDefaultCaps())
}

func mustProfile(tb testing.TB, o *specs.LinuxSeccomp) *Profile {
	tb.Helper()
	p, err := FromOCI(o)
	if err != nil {
		tb.Fatalf("FromOCI: %v", err)
	}
	return p
}

func mobyDefault(tb testing.TB) *Profile       { return mustProfile(tb, mobyDefaultOCI(tb)) }
func containerdDefault(tb testing.TB) *Profile { return mustProfile(tb, containerdDefaultOCI(tb)) }

// realProfiles are the profiles the tests run against, by name.
func realProfiles(tb testing.TB) map[string]*Profile {
	return map[string]*Profile{"moby": mobyDefault(tb), "containerd": containerdDefault(tb)}
}

// ruleFor returns the index of the first rule naming name without
// conditions, or -1.
func ruleFor(p *Profile, name string, kind ActionKind) int {
	for i, r := range p.Syscalls {
		if r.Action.Kind == kind && len(r.Args) == 0 && slices.Contains(r.Names, name) {
			return i
		}
	}
	return -1
}

func mustCompare(tb testing.TB, o, a *Profile) *Result {
	tb.Helper()
	res, err := Compare(o, a)
	if err != nil {
		tb.Fatalf("Compare: %v", err)
	}
	return res
}
