package seccomp

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// FindingKind says what a Finding is about.
type FindingKind uint8

// The kinds of findings.
const (
	// Loosened: some input gets a less restrictive action under the adjusted
	// profile. The finding names the syscall and, where arguments matter, a
	// witness.
	Loosened FindingKind = iota + 1
	// Unprovable: the check could not prove that no input gets a less
	// restrictive action. Treated like Loosened: never accepted as tighter.
	Unprovable
	// ArchitectureChanged: an architecture was added to or dropped from the
	// profile.
	ArchitectureChanged
	// FlagChanged: a filter flag was added, or removed (removing
	// SECCOMP_FILTER_FLAG_SPEC_ALLOW only tightens and is not reported).
	FlagChanged
	// ListenerChanged: the seccomp agent's listener path or metadata changed.
	ListenerChanged
	// ErrnoChanged: an action kept its severity but returns another errno
	// (or TRACE passes another value). The syscall still does not run, so
	// this is a change, not a loosening of confinement.
	ErrnoChanged
)

func (k FindingKind) String() string {
	switch k {
	case Loosened:
		return "loosened"
	case Unprovable:
		return "not provably tighter"
	case ArchitectureChanged:
		return "architecture changed"
	case FlagChanged:
		return "flag changed"
	case ListenerChanged:
		return "listener changed"
	case ErrnoChanged:
		return "errno changed"
	}
	return fmt.Sprintf("FindingKind(%d)", uint8(k))
}

// Finding is one way in which the adjusted profile differs from the original
// that is, or may be, a loosening.
type Finding struct {
	Kind FindingKind
	// Subject is the syscall name, "default action", an architecture, a flag
	// or "listener".
	Subject string
	// Architectures the finding applies to, by libseccomp short name
	// ("amd64"); "native" when the profile lists none.
	Architectures []string
	// From and To describe the old and new state, e.g. "ERRNO" and "ALLOW".
	From, To string
	// Args is an argument witness for which From -> To happens, e.g.
	// "arg0=0x20008", when arguments matter.
	Args string
	// Reason explains Unprovable findings and others that need it.
	Reason string
}

// String renders the finding for people, e.g.
// "`ptrace` on amd64, x86, x32: ERRNO -> ALLOW".
func (f Finding) String() string {
	var b strings.Builder
	switch f.Kind {
	case ArchitectureChanged, FlagChanged:
		fmt.Fprintf(&b, "%s %s", f.Kind, f.Subject)
	default:
		fmt.Fprintf(&b, "`%s`", f.Subject)
		if len(f.Architectures) > 0 {
			b.WriteString(" on " + strings.Join(f.Architectures, ", "))
		}
		if f.Args != "" {
			b.WriteString(" when " + f.Args)
		}
	}
	if f.From != "" || f.To != "" {
		fmt.Fprintf(&b, ": %s -> %s", f.From, f.To)
	}
	if f.Kind == Unprovable {
		b.WriteString(": not provably tighter")
	}
	if f.Reason != "" {
		b.WriteString(" (" + f.Reason + ")")
	}
	return b.String()
}

// Loosening reports whether the finding stands against "adjusted only
// tightens": every kind but ErrnoChanged does, unless a policy allows it.
func (f Finding) Loosening() bool { return f.Kind != ErrnoChanged }

// Result is the outcome of Compare.
type Result struct {
	// Findings lists every loosening, unprovable case and notable change, in a
	// stable order.
	Findings []Finding
}

// Tighter reports whether the adjusted profile is at most as permissive as
// the original for every architecture, syscall and argument value, and
// changes no architecture, flag or listener: no finding is a loosening.
func (r *Result) Tighter() bool {
	for _, f := range r.Findings {
		if f.Loosening() {
			return false
		}
	}
	return true
}

// String lists the findings one per line.
func (r *Result) String() string {
	lines := make([]string, len(r.Findings))
	for i, f := range r.Findings {
		lines[i] = f.String()
	}
	return strings.Join(lines, "\n")
}

// multiplexed are the syscalls that 32-bit x86, s390 and other
// architectures also reach through socketcall(2) or ipc(2). libseccomp adds
// a rule for such a syscall to the multiplexer as well, so rules for
// different names can meet on one syscall number there.
var multiplexed = map[string]bool{
	"socketcall": true, "socket": true, "bind": true, "connect": true, "listen": true,
	"accept": true, "accept4": true, "getsockname": true, "getpeername": true,
	"socketpair": true, "send": true, "recv": true, "sendto": true, "recvfrom": true,
	"shutdown": true, "setsockopt": true, "getsockopt": true, "sendmsg": true,
	"recvmsg": true, "recvmmsg": true, "sendmmsg": true,
	"ipc": true, "semop": true, "semget": true, "semctl": true, "semtimedop": true,
	"msgsnd": true, "msgrcv": true, "msgget": true, "msgctl": true, "shmat": true,
	"shmdt": true, "shmget": true, "shmctl": true,
}

// Compare decides whether adjusted is at most as permissive as original. A
// nil profile is "unconfined". It returns an error only for a profile that
// fails Validate.
//
// The semantics are runc's on libseccomp: a rule whose action equals the
// default action is dropped; the most restrictive matching rule of a
// syscall wins and the default applies when none matches; a rule that puts
// two conditions on one argument is split into one rule per condition (runc
// issue 2735), and, for runtimes that AND them instead, that reading must
// tighten too. Syscall names are compared name by name, which is exact for
// every architecture since both profiles resolve a name the same way; a name
// that an architecture lacks is ignored there by libseccomp, and Compare may
// report it anyway. Arguments are decided exactly by enumerating one value
// per region that the conditions carve out, in 64-bit and, where a value
// does not fit, truncated 32-bit form; where that is not possible the
// finding is Unprovable.
func Compare(original, adjusted *Profile) (*Result, error) {
	if err := original.Validate(); err != nil {
		return nil, fmt.Errorf("original profile: %w", err)
	}
	if err := adjusted.Validate(); err != nil {
		return nil, fmt.Errorf("adjusted profile: %w", err)
	}
	c := comparison{res: &Result{}}
	switch {
	case original == nil && adjusted == nil:
		return c.res, nil
	case adjusted == nil:
		c.add(Finding{Kind: Loosened, Subject: "profile", From: "filtered", To: "unconfined",
			Reason: "the adjusted container runs without seccomp"})
		return c.res, nil
	case original == nil:
		// Any filter confines at least as much as none. Only a listener
		// matters: its agent may act for the container beyond what the
		// container could do itself.
		c.compareListener(&Profile{}, adjusted)
		return c.res, nil
	}
	c.arches = archList(original, adjusted)
	c.compareArchitectures(original, adjusted)
	c.compareFlags(original, adjusted)
	c.compareListener(original, adjusted)
	c.compareSyscalls(original, adjusted)
	return c.res, nil
}

type comparison struct {
	res    *Result
	arches []string
}

func (c *comparison) add(f Finding) { c.res.Findings = append(c.res.Findings, f) }

func archList(a, b *Profile) []string {
	var out []string
	for _, p := range []*Profile{a, b} {
		for _, x := range p.Architectures {
			if n := ArchName(x); !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	if len(out) == 0 {
		out = []string{"native"}
	}
	return out
}

func (c *comparison) compareArchitectures(o, a *Profile) {
	for _, x := range a.Architectures {
		if !slices.Contains(o.Architectures, x) {
			c.add(Finding{Kind: ArchitectureChanged, Subject: ArchName(x), From: "absent", To: "added"})
		}
	}
	for _, x := range o.Architectures {
		if !slices.Contains(a.Architectures, x) {
			c.add(Finding{Kind: ArchitectureChanged, Subject: ArchName(x), From: "present", To: "dropped"})
		}
	}
}

func (c *comparison) compareFlags(o, a *Profile) {
	for _, f := range a.Flags {
		if !slices.Contains(o.Flags, f) {
			c.add(Finding{Kind: FlagChanged, Subject: f, From: "unset", To: "set"})
		}
	}
	for _, f := range o.Flags {
		if f != FlagSpecAllow && !slices.Contains(a.Flags, f) {
			c.add(Finding{Kind: FlagChanged, Subject: f, From: "set", To: "unset"})
		}
	}
}

func (c *comparison) compareListener(o, a *Profile) {
	if a.ListenerPath == "" {
		// Without a listener no agent acts for the container.
		return
	}
	if o.ListenerPath != a.ListenerPath || o.ListenerMetadata != a.ListenerMetadata {
		c.add(Finding{Kind: ListenerChanged, Subject: "listener",
			From: listenerString(o), To: listenerString(a)})
	}
}

func listenerString(p *Profile) string {
	if p.ListenerPath == "" {
		return "none"
	}
	if p.ListenerMetadata == "" {
		return p.ListenerPath
	}
	return fmt.Sprintf("%s (metadata %q)", p.ListenerPath, p.ListenerMetadata)
}

// compiled is a profile as runc hands it to libseccomp: rules indexed by
// syscall name, without the rules that repeat the default action.
type compiled struct {
	def Action
	// rules maps a syscall name to the indices of its surviving rules.
	rules map[string][]int
	// named holds every syscall name the profile mentions, dropped rules
	// included (runc's -ENOSYS stub looks at all of them).
	named []string
	p     *Profile
}

func compile(p *Profile) compiled {
	c := compiled{def: p.DefaultAction, rules: make(map[string][]int, 2*len(p.Syscalls)+64), p: p}
	for i, r := range p.Syscalls {
		keep := !r.Action.Same(p.DefaultAction)
		for _, n := range r.Names {
			idx, seen := c.rules[n]
			if !seen {
				c.named = append(c.named, n)
			}
			if keep {
				c.rules[n] = append(idx, i)
			} else if !seen {
				c.rules[n] = nil
			}
		}
	}
	return c
}

func (c *comparison) compareSyscalls(o, a *Profile) {
	co, ca := compile(o), compile(a)
	if r := a.DefaultAction.Kind.Rank() - o.DefaultAction.Kind.Rank(); r < 0 {
		c.add(Finding{Kind: Loosened, Subject: "default action", Architectures: c.arches,
			From: o.DefaultAction.Kind.String(), To: a.DefaultAction.Kind.String(),
			Reason: "applies to every syscall no rule matches"})
	} else if r == 0 && a.DefaultAction.EffectiveRet() != o.DefaultAction.EffectiveRet() {
		c.add(Finding{Kind: ErrnoChanged, Subject: "default action", Architectures: c.arches,
			From: o.DefaultAction.String(), To: a.DefaultAction.String()})
	}
	names := make([]string, 0, len(co.named)+8)
	names = append(names, co.named...)
	for _, n := range ca.named {
		if _, ok := co.rules[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		ro, ra := co.rules[n], ca.rules[n]
		if o.DefaultAction == a.DefaultAction && sameRules(o, ro, a, ra) {
			continue
		}
		c.compareName(n, o, ro, o.DefaultAction, a, ra, a.DefaultAction, false)
		if multiplexed[n] {
			c.compareName(n, o, ro, Action{Kind: ActAllow}, a, ra, Action{Kind: ActAllow}, true)
		}
	}
	c.checkEnosysStub(co, ca)
}

func sameRules(o *Profile, ro []int, a *Profile, ra []int) bool {
	if len(ro) != len(ra) {
		return false
	}
	for i := range ro {
		x, y := o.Syscalls[ro[i]], a.Syscalls[ra[i]]
		if x.Action != y.Action || !slices.Equal(x.Args, y.Args) {
			return false
		}
	}
	return true
}

// checkEnosysStub covers runc's -ENOSYS stub: unless the default action is
// ALLOW, LOG or TRACE or the default errno is ENOSYS, syscalls numbered above
// every syscall the profile names get ERRNO(ENOSYS). Dropping names can move
// that line down, so syscalls that got the original's verdict may get ENOSYS
// instead. That is no loosening while nothing they could have got was more
// restrictive than ERRNO. Adding names is covered by the per-name check: a
// stub only exists when the original default is at least ERRNO, and the
// adjusted must then give at least that.
func (c *comparison) checkEnosysStub(co, ca compiled) {
	def := ca.def
	if def.Kind == ActAllow || def.Kind == ActLog || def.Kind == ActTrace || (def.RetSet && def.Ret == ENOSYS) {
		return
	}
	errnoRank := ActErrno.Rank()
	var worst []string
	for _, n := range co.named {
		if _, still := ca.rules[n]; still {
			continue
		}
		for _, i := range co.rules[n] {
			if co.p.Syscalls[i].Action.Kind.Rank() > errnoRank {
				worst = append(worst, n)
				break
			}
		}
		if co.def.Kind.Rank() > errnoRank {
			worst = append(worst, n)
		}
	}
	if len(worst) == 0 {
		return
	}
	worst = slices.Compact(worst)
	c.add(Finding{Kind: Unprovable, Subject: strings.Join(worst, ", "), Architectures: c.arches,
		Reason: "runc's -ENOSYS stub: no longer naming these may lower the highest named syscall, " +
			"so newer syscalls would get ERRNO(ENOSYS) where the original gave " + co.def.Kind.String() + " or stricter"})
}
