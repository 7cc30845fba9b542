package seccomp

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/containerd/nri/pkg/api"

	"github.com/trustgate/trustgate/config"
)

// ProfileKind is the kind of seccomp profile a pod asked for.
type ProfileKind uint8

// The profile kinds of CRI and NRI.
const (
	// KindRuntimeDefault is the container runtime's default profile.
	KindRuntimeDefault ProfileKind = iota + 1
	// KindUnconfined is no profile at all.
	KindUnconfined
	// KindLocalhost is a custom profile from a file on the node.
	KindLocalhost
)

func (k ProfileKind) String() string {
	switch k {
	case KindRuntimeDefault:
		return "runtime-default"
	case KindUnconfined:
		return "unconfined"
	case KindLocalhost:
		return "localhost"
	}
	return fmt.Sprintf("ProfileKind(%d)", uint8(k))
}

// KindOf classifies the profile that NRI reports for a container. A missing
// profile is unconfined, as NRI's default validator treats it.
func KindOf(sp *api.SecurityProfile) ProfileKind {
	if sp == nil {
		return KindUnconfined
	}
	switch sp.GetProfileType() {
	case api.SecurityProfile_RUNTIME_DEFAULT:
		return KindRuntimeDefault
	case api.SecurityProfile_LOCALHOST:
		return KindLocalhost
	}
	return KindUnconfined
}

// Mode is a rule for seccomp adjustments, after the rule set that the NRI
// maintainers asked for.
type Mode string

// The modes.
const (
	// ModeNone rejects every adjustment.
	ModeNone Mode = "none"
	// ModeRuntimeDefaultOnly allows any adjustment of the runtime's default
	// profile and rejects adjustments of every other kind.
	ModeRuntimeDefaultOnly Mode = "runtime-default-only"
	// ModeTightenOnly allows an adjustment only if Compare finds it at most as
	// permissive as the original, up to the changes the policy allows.
	ModeTightenOnly Mode = "tighten-only"
	// ModeAny allows every adjustment.
	ModeAny Mode = "any"
)

// Policy decides which seccomp adjustments a plugin may make.
type Policy struct {
	// Mode applies to every profile kind without an override below. Empty
	// means ModeNone.
	Mode Mode `toml:"mode"`
	// RuntimeDefault, Unconfined and Localhost override Mode for one profile
	// kind; each may be "none", "tighten-only" or "any", or empty for Mode.
	RuntimeDefault Mode `toml:"runtime_default"`
	Unconfined     Mode `toml:"unconfined"`
	Localhost      Mode `toml:"localhost"`
	// AllowedListenerPaths are path.Match globs; under tighten-only an
	// adjusted listener path (or metadata) is allowed if its path matches one.
	AllowedListenerPaths []string `toml:"allowed_listener_paths"`
	// AllowArchitectureChange lets tighten-only accept added or dropped
	// architectures.
	AllowArchitectureChange bool `toml:"allow_architecture_change"`
	// AllowFlags lists filter flags that tighten-only lets a plugin set or
	// unset, e.g. "SECCOMP_FILTER_FLAG_LOG".
	AllowFlags []string `toml:"allow_flags"`
	// AllowErrnoChange lets tighten-only accept a different errno for an
	// action of unchanged severity.
	AllowErrnoChange bool `toml:"allow_errno_change"`
}

// Validate reports every problem with the policy.
func (p Policy) Validate() error {
	var probs config.Problems
	switch p.Mode {
	case "", ModeNone, ModeRuntimeDefaultOnly, ModeTightenOnly, ModeAny:
	default:
		probs.Addf("seccomp mode %q: want none, runtime-default-only, tighten-only or any", p.Mode)
	}
	for _, o := range []struct {
		name string
		mode Mode
	}{{"runtime_default", p.RuntimeDefault}, {"unconfined", p.Unconfined}, {"localhost", p.Localhost}} {
		switch o.mode {
		case "", ModeNone, ModeTightenOnly, ModeAny:
		default:
			probs.Addf("seccomp %s %q: want none, tighten-only or any", o.name, o.mode)
		}
	}
	for _, g := range p.AllowedListenerPaths {
		if _, err := path.Match(g, ""); err != nil {
			probs.Addf("seccomp allowed_listener_paths %q: %v", g, err)
		}
	}
	for _, f := range p.AllowFlags {
		if !IsKnownFlag(f) {
			probs.Addf("seccomp allow_flags: unknown flag %q, want one of %s", f, strings.Join(knownFlags, ", "))
		}
	}
	return probs.Err()
}

// ModeFor returns the mode that applies to adjustments of a profile of kind
// k: the kind's override if set, otherwise Mode, with runtime-default-only
// resolved to "any" or "none".
func (p Policy) ModeFor(k ProfileKind) Mode {
	var o Mode
	switch k {
	case KindRuntimeDefault:
		o = p.RuntimeDefault
	case KindUnconfined:
		o = p.Unconfined
	case KindLocalhost:
		o = p.Localhost
	}
	if o != "" {
		return o
	}
	switch p.Mode {
	case "":
		return ModeNone
	case ModeRuntimeDefaultOnly:
		if k == KindRuntimeDefault {
			return ModeAny
		}
		return ModeNone
	}
	return p.Mode
}

// PolicyFromNRIRejects expresses the seccomp knobs of NRI's default validator
// (RejectRuntimeDefaultSeccompAdjustment, RejectUnconfinedSeccompAdjustment,
// RejectCustomSeccompAdjustment) as a Policy that accepts and rejects exactly
// the same adjustments.
func PolicyFromNRIRejects(rejectRuntimeDefault, rejectUnconfined, rejectCustom bool) Policy {
	switch {
	case !rejectRuntimeDefault && !rejectUnconfined && !rejectCustom:
		return Policy{Mode: ModeAny}
	case rejectRuntimeDefault && rejectUnconfined && rejectCustom:
		return Policy{Mode: ModeNone}
	case !rejectRuntimeDefault && rejectUnconfined && rejectCustom:
		return Policy{Mode: ModeRuntimeDefaultOnly}
	}
	p := Policy{Mode: ModeAny}
	if rejectRuntimeDefault {
		p.RuntimeDefault = ModeNone
	}
	if rejectUnconfined {
		p.Unconfined = ModeNone
	}
	if rejectCustom {
		p.Localhost = ModeNone
	}
	return p
}

// RejectedError is the error Check returns for an adjustment the policy
// does not allow.
type RejectedError struct {
	Kind ProfileKind
	Mode Mode
	// Findings are the disallowed findings under tighten-only; empty for
	// ModeNone.
	Findings []Finding
}

func (e *RejectedError) Error() string {
	msg := fmt.Sprintf("seccomp adjustment of a %s profile rejected (mode %s)", e.Kind, e.Mode)
	if len(e.Findings) == 0 {
		return msg
	}
	parts := make([]string, len(e.Findings))
	for i, f := range e.Findings {
		parts[i] = f.String()
	}
	return msg + ": " + strings.Join(parts, "; ")
}

// Check decides whether a plugin may replace original (nil: unconfined) with
// adjusted (nil: unconfined) in a container whose pod asked for a profile of
// kind k. It returns nil if allowed, a *RejectedError if not, and another
// error if a profile is invalid.
func (p Policy) Check(k ProfileKind, original, adjusted *Profile) error {
	mode := p.ModeFor(k)
	switch mode {
	case ModeAny:
		return nil
	case ModeTightenOnly:
	default:
		return &RejectedError{Kind: k, Mode: mode}
	}
	res, err := Compare(original, adjusted)
	if err != nil {
		return fmt.Errorf("seccomp adjustment of a %s profile: %w", k, err)
	}
	var bad []Finding
	for _, f := range res.Findings {
		if !p.allows(f, adjusted) {
			bad = append(bad, f)
		}
	}
	if len(bad) > 0 {
		return &RejectedError{Kind: k, Mode: mode, Findings: bad}
	}
	return nil
}

// CheckNRI is Check on NRI's types: the container's SecurityProfile, its
// current seccomp policy and the policy a plugin's adjustment sets.
func (p Policy) CheckNRI(sp *api.SecurityProfile, original, adjusted *api.LinuxSeccomp) error {
	o, err := FromNRI(original)
	if err != nil {
		return fmt.Errorf("original seccomp policy: %w", err)
	}
	a, err := FromNRI(adjusted)
	if err != nil {
		return fmt.Errorf("adjusted seccomp policy: %w", err)
	}
	return p.Check(KindOf(sp), o, a)
}

func (p Policy) allows(f Finding, adjusted *Profile) bool {
	switch f.Kind {
	case ArchitectureChanged:
		return p.AllowArchitectureChange
	case FlagChanged:
		return slices.Contains(p.AllowFlags, f.Subject)
	case ListenerChanged:
		for _, g := range p.AllowedListenerPaths {
			if ok, _ := path.Match(g, adjusted.ListenerPath); ok {
				return true
			}
		}
		return false
	case ErrnoChanged:
		return p.AllowErrnoChange
	}
	return false
}
