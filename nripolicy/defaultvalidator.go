package nripolicy

import (
	validator "github.com/containerd/nri/plugins/default-validator"

	"github.com/trustgate/trustgate/seccomp"
)

// DefaultValidatorConfig is containerd/nri's default validator
// configuration, accepted as it is so that a containerd operator's knobs
// carry over.
type DefaultValidatorConfig = validator.DefaultValidatorConfig

// FromDefaultValidator expresses NRI's default validator knobs as a role
// policy and globals that accept and refuse exactly what the default
// validator does: each Reject knob removes one permission from an
// otherwise unrestricted policy, and required plugins carry over as they
// are. A disabled validator restricts nothing.
func FromDefaultValidator(cfg DefaultValidatorConfig) (Policy, Globals) {
	p := AllowAll()
	if !cfg.Enable {
		return p, Globals{}
	}
	p.OCIHooks = !cfg.RejectOCIHookAdjustment
	p.Seccomp = seccomp.PolicyFromNRIRejects(cfg.RejectRuntimeDefaultSeccompAdjustment,
		cfg.RejectUnconfinedSeccompAdjustment, cfg.RejectCustomSeccompAdjustment)
	if cfg.RejectNamespaceAdjustment {
		p.Namespaces = nil
	}
	if cfg.RejectSysctlAdjustment {
		p.Sysctls = nil
	}
	return p, Globals{RequiredPlugins: cfg.RequiredPlugins, TolerateMissingAnnotation: cfg.TolerateMissingAnnotation}
}
