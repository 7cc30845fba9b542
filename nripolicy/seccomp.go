package nripolicy

import (
	"context"
	"fmt"

	"github.com/containerd/nri/pkg/api"
)

// SeccompMode is how much a role may change a container's seccomp policy.
type SeccompMode string

// Seccomp modes.
const (
	SeccompNone               SeccompMode = "none"
	SeccompRuntimeDefaultOnly SeccompMode = "runtime-default-only"
	SeccompTightenOnly        SeccompMode = "tighten-only"
	SeccompAny                SeccompMode = "any"
)

// SeccompPolicy governs seccomp adjustments.
type SeccompPolicy struct {
	Mode SeccompMode `toml:"mode"`
	// ListenerPaths lists the seccomp notify listener paths allowed.
	ListenerPaths Globs `toml:"listener_paths"`
}

func (s SeccompPolicy) validate() error {
	switch s.Mode {
	case "", SeccompNone, SeccompRuntimeDefaultOnly, SeccompTightenOnly, SeccompAny:
	default:
		return fmt.Errorf("mode %q: want none, runtime-default-only, tighten-only or any", s.Mode)
	}
	return s.ListenerPaths.validate()
}

func (s SeccompPolicy) decide(_ context.Context, req *api.ValidateContainerAdjustmentRequest) (bool, string) {
	switch s.Mode {
	case SeccompAny:
		return true, "seccomp adjustment allowed"
	case SeccompRuntimeDefaultOnly:
		kind := req.GetContainer().GetLinux().GetSeccompProfile().GetProfileType()
		return allowIf(kind == api.SecurityProfile_RUNTIME_DEFAULT, "seccomp adjustment of a non-runtime-default profile")
	case SeccompTightenOnly:
		return false, "seccomp tighten-only check not available"
	}
	return false, "seccomp adjustment not allowed for this role"
}
