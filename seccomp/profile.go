package seccomp

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// MaxArgs is the number of syscall arguments a seccomp filter can inspect.
const MaxArgs = 6

// Profile is an OCI LinuxSeccomp profile. A nil *Profile means "unconfined":
// no filter at all, the most permissive profile there is.
type Profile struct {
	// DefaultAction applies to every syscall that no rule matches.
	DefaultAction Action
	// Architectures are runtime-spec names such as "SCMP_ARCH_X86_64". An
	// empty list means the native architecture only.
	Architectures []string
	// Flags are seccomp(2) filter flags such as "SECCOMP_FILTER_FLAG_LOG".
	Flags []string
	// ListenerPath is the UNIX socket of the seccomp agent that receives the
	// notify file descriptor, if any.
	ListenerPath string
	// ListenerMetadata is opaque data passed to the seccomp agent.
	ListenerMetadata string
	// Syscalls are the rules, in profile order.
	Syscalls []Rule
}

// Rule gives an action to the syscalls it names, when all of its argument
// conditions hold.
type Rule struct {
	Names  []string
	Action Action
	Args   []Cond
}

// Op is a comparison operator of an argument condition.
type Op uint8

// The comparison operators of libseccomp.
const (
	OpEQ Op = iota + 1
	OpNE
	OpLT
	OpLE
	OpGT
	OpGE
	OpMaskedEQ
)

var opOCI = [...]string{
	OpEQ:       "SCMP_CMP_EQ",
	OpNE:       "SCMP_CMP_NE",
	OpLT:       "SCMP_CMP_LT",
	OpLE:       "SCMP_CMP_LE",
	OpGT:       "SCMP_CMP_GT",
	OpGE:       "SCMP_CMP_GE",
	OpMaskedEQ: "SCMP_CMP_MASKED_EQ",
}

// OCI returns the runtime-spec spelling of the operator, e.g. "SCMP_CMP_EQ".
func (o Op) OCI() string {
	if o >= OpEQ && int(o) < len(opOCI) {
		return opOCI[o]
	}
	return "SCMP_CMP_INVALID(" + strconv.Itoa(int(o)) + ")"
}

// ParseOp parses a runtime-spec operator name such as "SCMP_CMP_MASKED_EQ".
func ParseOp(s string) (Op, error) {
	for o, name := range opOCI {
		if name != "" && name == s {
			return Op(o), nil
		}
	}
	return 0, fmt.Errorf("unknown seccomp operator %q", s)
}

// Cond is a condition on one syscall argument. For OpMaskedEQ it holds when
// arg & Value == ValueTwo; for the other operators it compares arg with Value.
type Cond struct {
	Index    uint8
	Op       Op
	Value    uint64
	ValueTwo uint64
}

// Holds reports whether the condition holds for argument value x.
func (c Cond) Holds(x uint64) bool {
	switch c.Op {
	case OpEQ:
		return x == c.Value
	case OpNE:
		return x != c.Value
	case OpLT:
		return x < c.Value
	case OpLE:
		return x <= c.Value
	case OpGT:
		return x > c.Value
	case OpGE:
		return x >= c.Value
	case OpMaskedEQ:
		return x&c.Value == c.ValueTwo
	}
	return false
}

// String renders the condition as, e.g., "arg0 & 0x7e020000 == 0x0".
func (c Cond) String() string {
	arg := "arg" + strconv.Itoa(int(c.Index))
	switch c.Op {
	case OpMaskedEQ:
		return fmt.Sprintf("%s & %#x == %#x", arg, c.Value, c.ValueTwo)
	case OpEQ:
		return fmt.Sprintf("%s == %#x", arg, c.Value)
	case OpNE:
		return fmt.Sprintf("%s != %#x", arg, c.Value)
	case OpLT:
		return fmt.Sprintf("%s < %#x", arg, c.Value)
	case OpLE:
		return fmt.Sprintf("%s <= %#x", arg, c.Value)
	case OpGT:
		return fmt.Sprintf("%s > %#x", arg, c.Value)
	case OpGE:
		return fmt.Sprintf("%s >= %#x", arg, c.Value)
	}
	return arg + " " + c.Op.OCI()
}

// archNames maps runtime-spec architecture names to the short names that
// libseccomp uses (and that findings print).
var archNames = map[string]string{
	"SCMP_ARCH_X86":         "x86",
	"SCMP_ARCH_X86_64":      "amd64",
	"SCMP_ARCH_X32":         "x32",
	"SCMP_ARCH_ARM":         "arm",
	"SCMP_ARCH_AARCH64":     "arm64",
	"SCMP_ARCH_MIPS":        "mips",
	"SCMP_ARCH_MIPS64":      "mips64",
	"SCMP_ARCH_MIPS64N32":   "mips64n32",
	"SCMP_ARCH_MIPSEL":      "mipsel",
	"SCMP_ARCH_MIPSEL64":    "mipsel64",
	"SCMP_ARCH_MIPSEL64N32": "mipsel64n32",
	"SCMP_ARCH_PPC":         "ppc",
	"SCMP_ARCH_PPC64":       "ppc64",
	"SCMP_ARCH_PPC64LE":     "ppc64le",
	"SCMP_ARCH_S390":        "s390",
	"SCMP_ARCH_S390X":       "s390x",
	"SCMP_ARCH_PARISC":      "parisc",
	"SCMP_ARCH_PARISC64":    "parisc64",
	"SCMP_ARCH_RISCV64":     "riscv64",
	"SCMP_ARCH_LOONGARCH64": "loong64",
	"SCMP_ARCH_M68K":        "m68k",
	"SCMP_ARCH_SH":          "sh",
	"SCMP_ARCH_SHEB":        "sheb",
}

// ArchName returns libseccomp's short name for a runtime-spec architecture,
// e.g. "amd64" for "SCMP_ARCH_X86_64", or the input if it is unknown.
func ArchName(oci string) string {
	if n, ok := archNames[oci]; ok {
		return n
	}
	return oci
}

// Filter flags known to runtime-spec.
const (
	FlagTsync        = "SECCOMP_FILTER_FLAG_TSYNC"
	FlagLog          = "SECCOMP_FILTER_FLAG_LOG"
	FlagSpecAllow    = "SECCOMP_FILTER_FLAG_SPEC_ALLOW"
	FlagWaitKillable = "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
)

var knownFlags = []string{FlagTsync, FlagLog, FlagSpecAllow, FlagWaitKillable}

// IsKnownFlag reports whether f is a seccomp filter flag runtime-spec defines.
func IsKnownFlag(f string) bool { return slices.Contains(knownFlags, f) }

// Validate reports the first problem that would make runc refuse the
// profile, or that this package cannot reason about: an unknown action,
// operator, architecture or flag, an argument index past 5, or a rule
// without names.
func (p *Profile) Validate() error {
	if p == nil {
		return nil
	}
	if err := validAction(p.DefaultAction); err != nil {
		return fmt.Errorf("default action: %w", err)
	}
	if p.DefaultAction.Kind == ActNotify {
		return fmt.Errorf("default action: SCMP_ACT_NOTIFY cannot be the default action")
	}
	for _, a := range p.Architectures {
		if _, ok := archNames[a]; !ok {
			return fmt.Errorf("unknown seccomp architecture %q", a)
		}
	}
	for _, f := range p.Flags {
		if !IsKnownFlag(f) {
			return fmt.Errorf("unknown seccomp flag %q", f)
		}
	}
	for i, r := range p.Syscalls {
		if err := r.validate(); err != nil {
			return fmt.Errorf("syscall rule %d: %w", i, err)
		}
	}
	return nil
}

func validAction(a Action) error {
	if a.Kind < ActAllow || a.Kind > ActKillProcess {
		return fmt.Errorf("invalid action kind %d", a.Kind)
	}
	return nil
}

func (r Rule) validate() error {
	if len(r.Names) == 0 {
		return fmt.Errorf("no syscall names")
	}
	for _, n := range r.Names {
		if n == "" {
			return fmt.Errorf("empty syscall name")
		}
	}
	if err := validAction(r.Action); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(r.Names, ","), err)
	}
	for _, c := range r.Args {
		if c.Index >= MaxArgs {
			return fmt.Errorf("%s: argument index %d out of range 0..5", strings.Join(r.Names, ","), c.Index)
		}
		if c.Op < OpEQ || c.Op > OpMaskedEQ {
			return fmt.Errorf("%s: invalid operator %d", strings.Join(r.Names, ","), c.Op)
		}
	}
	return nil
}

// Clone returns a deep copy of p.
func (p *Profile) Clone() *Profile {
	if p == nil {
		return nil
	}
	q := *p
	q.Architectures = slices.Clone(p.Architectures)
	q.Flags = slices.Clone(p.Flags)
	q.Syscalls = make([]Rule, len(p.Syscalls))
	for i, r := range p.Syscalls {
		q.Syscalls[i] = Rule{Names: slices.Clone(r.Names), Action: r.Action, Args: slices.Clone(r.Args)}
	}
	return &q
}
