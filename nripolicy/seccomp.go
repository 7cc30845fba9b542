package nripolicy

import (
	"context"

	"github.com/containerd/nri/pkg/api"

	"github.com/trustgate/trustgate/seccomp"
)

// decideSeccomp judges a seccomp policy adjustment with the seccomp
// package's policy for the role.
func decideSeccomp(_ context.Context, p seccomp.Policy, req *api.ValidateContainerAdjustmentRequest) (bool, string) {
	linux := req.GetContainer().GetLinux()
	profile := linux.GetSeccompProfile()
	original := linux.GetSeccompPolicy()
	adjusted := req.GetAdjust().GetLinux().GetSeccompPolicy()
	kind := seccomp.KindOf(profile)
	// A missing original means "unconfined" to the seccomp package. That
	// is only true when the pod asked to be unconfined: a runtime that
	// does not report the policy it applies must not make every
	// adjustment look like a tightening.
	if original == nil && kind != seccomp.KindUnconfined && p.ModeFor(kind) == seccomp.ModeTightenOnly {
		return false, "seccomp: the runtime did not report the container's current " + kind.String() +
			" policy, so tightening cannot be proven"
	}
	if err := p.CheckNRI(profile, original, adjusted); err != nil {
		return false, err.Error()
	}
	return true, "seccomp adjustment of a " + kind.String() + " profile allowed (mode " + string(p.ModeFor(kind)) + ")"
}
