package seccomp

import (
	"fmt"
	"slices"
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
// The semantics are runc's on libseccomp:
//   - a rule whose action equals the default action is dropped;
//   - a rule that puts two conditions on one argument is split into one rule
//     per condition (runc issue 2735); for runtimes that AND them instead,
//     that reading must tighten too;
//   - for one input, libseccomp takes the action of one of the matching rules,
//     or the default when none matches, but not necessarily the most
//     restrictive one (an unconditional rule overrides conditional ones, and
//     overlapping rules are picked by its decision tree), and where
//     conditions on one argument differ in the high 32-bit word it may miss
//     a matching rule and take the default. Compare therefore works with the
//     set of actions each side may take: the adjusted profile is tighter for
//     an input only if its least restrictive possible action is at least as
//     restrictive as the original's most restrictive one. Where the sets
//     overlap the finding is Unprovable.
//
// Syscall names are compared name by name, which is exact for every
// architecture since both profiles resolve a name the same way; a name that
// an architecture lacks is ignored there by libseccomp, and Compare may
// report it anyway. Arguments are decided by enumerating one value per
// region that the conditions carve out, in 64-bit and, where a value does not
// fit, truncated 32-bit form (as 32-bit architectures compare); where that
// is not possible the finding is Unprovable. The differential test
// (build tag libseccomp) checks these semantics against libseccomp's BPF.
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
	c.compareSyscalls(original, adjusted, touchedNames(original, adjusted))
	return c.res, nil
}

type comparison struct {
	res    *Result
	arches []string
}

// multiplexReason explains Unprovable findings of multiplexed syscalls.
const multiplexReason = "where socketcall(2) or ipc(2) multiplex this syscall, " +
	"its rules meet those of related syscalls on one syscall number, " +
	"and this change could let a rule of theirs decide"

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

// nameRef says that rule names a syscall. live is false for a rule that
// repeats the default action, which runc drops.
type nameRef struct {
	name string
	rule int
	live bool
}

// compiled is a profile as runc hands it to libseccomp: one reference per
// (syscall name, rule), sorted by name and then rule order.
type compiled struct {
	def  Action
	refs []nameRef
	p    *Profile
}

func compile(p *Profile, only map[string]bool) compiled {
	return compiled{def: p.DefaultAction, refs: refsOf(p, only), p: p}
}

// maxTouched bounds the names touchedNames hands back; past it, comparing
// every name is cheaper than looking the touched ones up.
const maxTouched = 32

// touchedNames diffs the rule lists of two profiles with the same default
// action and returns every name whose list of rules may differ: the names of
// rules outside the common prefix and suffix, except those that a rule
// keeps in place when only its names changed. It returns nil if the default
// actions differ or more than maxTouched names would need a look.
func touchedNames(o, a *Profile) map[string]bool {
	if o.DefaultAction != a.DefaultAction {
		return nil
	}
	x, y := o.Syscalls, a.Syscalls
	for len(x) > 0 && len(y) > 0 && sameRule(x[0], y[0]) {
		x, y = x[1:], y[1:]
	}
	for len(x) > 0 && len(y) > 0 && sameRule(x[len(x)-1], y[len(y)-1]) {
		x, y = x[:len(x)-1], y[:len(y)-1]
	}
	out := map[string]bool{}
	mark := func(names ...string) bool {
		for _, n := range names {
			out[n] = true
		}
		return len(out) <= maxTouched
	}
	if len(x) == len(y) {
		for i := range x {
			if x[i].Action == y[i].Action && slices.Equal(x[i].Args, y[i].Args) {
				if !mark(namesDiff(x[i].Names, y[i].Names)...) {
					return nil
				}
				continue
			}
			if !mark(x[i].Names...) || !mark(y[i].Names...) {
				return nil
			}
		}
		return out
	}
	for _, r := range x {
		if !mark(r.Names...) {
			return nil
		}
	}
	for _, r := range y {
		if !mark(r.Names...) {
			return nil
		}
	}
	return out
}

func sameRule(x, y Rule) bool {
	return x.Action == y.Action && slices.Equal(x.Names, y.Names) && slices.Equal(x.Args, y.Args)
}

// namesDiff walks two name lists in step and returns every name it cannot
// pair up; a name appearing both paired and unpaired is returned too, so the
// result covers every name whose occurrences differ.
func namesDiff(x, y []string) []string {
	var out []string
	i, j := 0, 0
	for i < len(x) && j < len(y) {
		switch {
		case x[i] == y[j]:
			i, j = i+1, j+1
		case i+1 < len(x) && x[i+1] == y[j]:
			out = append(out, x[i])
			i++
		case j+1 < len(y) && x[i] == y[j+1]:
			out = append(out, y[j])
			j++
		default:
			out = append(out, x[i], y[j])
			i, j = i+1, j+1
		}
	}
	out = append(out, x[i:]...)
	return append(out, y[j:]...)
}

// refsOf lists the (name, rule) references of p for the names in only (all
// names if only is nil), sorted by name and then rule.
func refsOf(p *Profile, only map[string]bool) []nameRef {
	n := 0
	for _, r := range p.Syscalls {
		n += len(r.Names)
	}
	if only != nil {
		n = 2 * len(only)
	}
	refs := make([]nameRef, 0, n)
	for i, r := range p.Syscalls {
		live := !r.Action.Same(p.DefaultAction)
		for _, name := range r.Names {
			if only == nil || only[name] {
				refs = append(refs, nameRef{name: name, rule: i, live: live})
			}
		}
	}
	// The references are in rule order already; a stable sort by name keeps
	// that order within a name.
	slices.SortStableFunc(refs, func(a, b nameRef) int { return strings.Compare(a.name, b.name) })
	return refs
}

// group returns the references for the name at refs[i], and the index past
// them.
func group(refs []nameRef, i int) ([]nameRef, int) {
	j := i + 1
	for j < len(refs) && refs[j].name == refs[i].name {
		j++
	}
	return refs[i:j], j
}

// live returns the indices of the rules in g that runc keeps.
func live(g []nameRef) []int {
	var out []int
	for _, r := range g {
		if r.live {
			out = append(out, r.rule)
		}
	}
	return out
}

// compareSyscalls compares the rules of the names in only, or of all names
// if only is nil, and the default actions.
func (c *comparison) compareSyscalls(o, a *Profile, only map[string]bool) {
	co := compile(o, only)
	var ca compiled
	if only == nil && slices.EqualFunc(o.Syscalls, a.Syscalls, sameRule) {
		// Only the default action changed: reuse the sorted references,
		// with the adjusted profile's idea of which rules runc keeps.
		ca = compiled{def: a.DefaultAction, refs: slices.Clone(co.refs), p: a}
		for i, r := range ca.refs {
			ca.refs[i].live = !a.Syscalls[r.rule].Action.Same(a.DefaultAction)
		}
	} else {
		ca = compile(a, only)
	}
	if r := a.DefaultAction.Kind.Rank() - o.DefaultAction.Kind.Rank(); r < 0 {
		c.add(Finding{Kind: Loosened, Subject: "default action", Architectures: c.arches,
			From: o.DefaultAction.Kind.String(), To: a.DefaultAction.Kind.String(),
			Reason: "applies to every syscall no rule matches"})
	} else if r == 0 && a.DefaultAction.EffectiveRet() != o.DefaultAction.EffectiveRet() {
		c.add(Finding{Kind: ErrnoChanged, Subject: "default action", Architectures: c.arches,
			From: o.DefaultAction.String(), To: a.DefaultAction.String()})
	}
	sameDefault := o.DefaultAction == a.DefaultAction
	var dropped [][]nameRef // names the original mentions and the adjusted does not
	i, j := 0, 0
	for i < len(co.refs) || j < len(ca.refs) {
		var go_, ga []nameRef
		switch {
		case j == len(ca.refs) || (i < len(co.refs) && co.refs[i].name < ca.refs[j].name):
			go_, i = group(co.refs, i)
			dropped = append(dropped, go_)
		case i == len(co.refs) || ca.refs[j].name < co.refs[i].name:
			ga, j = group(ca.refs, j)
		default:
			go_, i = group(co.refs, i)
			ga, j = group(ca.refs, j)
		}
		if sameDefault && sameRules(o, go_, a, ga) {
			continue
		}
		var name string
		if len(go_) > 0 {
			name = go_[0].name
		} else {
			name = ga[0].name
		}
		if c.compareConstant(name, o, go_, a, ga) {
			continue
		}
		ro, ra := live(go_), live(ga)
		if !c.compareName(name, o, ro, o.DefaultAction, a, ra, a.DefaultAction, false) && multiplexed[name] {
			c.compareName(name, o, ro, Action{Kind: ActAllow}, a, ra, Action{Kind: ActAllow}, true)
		}
	}
	c.checkEnosysStub(co, ca, dropped)
}

// constantSpan returns the span of actions the rules in g give regardless
// of arguments, or false if some rule has conditions.
func constantSpan(p *Profile, g []nameRef, fallback Action) (span, bool) {
	s := span{fallback, fallback}
	found := false
	for _, r := range g {
		if !r.live {
			continue
		}
		rule := p.Syscalls[r.rule]
		if len(rule.Args) > 0 {
			return span{}, false
		}
		s.add(rule.Action, !found)
		found = true
	}
	return s, true
}

// compareConstant handles a name whose rules have no conditions on either
// side, the common case, without enumerating arguments; it reports whether
// it did.
func (c *comparison) compareConstant(name string, o *Profile, go_ []nameRef, a *Profile, ga []nameRef) bool {
	so, ok := constantSpan(o, go_, o.DefaultAction)
	if !ok {
		return false
	}
	sa, ok := constantSpan(a, ga, a.DefaultAction)
	if !ok {
		return false
	}
	sure, maybe := compareSpans(so, sa)
	switch {
	case sure:
		c.add(Finding{Kind: Loosened, Subject: name, Architectures: c.arches, From: so.lo.Kind.String(), To: sa.hi.Kind.String()})
		return true
	case maybe:
		c.add(Finding{Kind: Unprovable, Subject: name, Architectures: c.arches, From: so.hi.Kind.String(), To: sa.lo.Kind.String(),
			Reason: "several unconditional rules with different actions; libseccomp keeps the first"})
		return true
	case so.single() && sa.single() && sa.hi.Kind.Rank() == so.hi.Kind.Rank() && sa.hi.EffectiveRet() != so.hi.EffectiveRet():
		c.add(Finding{Kind: ErrnoChanged, Subject: name, Architectures: c.arches, From: so.hi.String(), To: sa.hi.String()})
	}
	if multiplexed[name] {
		eo, _ := constantSpan(o, go_, Action{Kind: ActAllow})
		ea, _ := constantSpan(a, ga, Action{Kind: ActAllow})
		if _, maybe := compareSpans(eo, ea); maybe {
			c.add(Finding{Kind: Unprovable, Subject: name, Architectures: c.arches, Reason: multiplexReason})
		}
	}
	return true
}

// sameRules reports whether the rules that runc keeps for one name are the
// same on both sides.
func sameRules(o *Profile, go_ []nameRef, a *Profile, ga []nameRef) bool {
	i, j := 0, 0
	for {
		for i < len(go_) && !go_[i].live {
			i++
		}
		for j < len(ga) && !ga[j].live {
			j++
		}
		if i == len(go_) || j == len(ga) {
			return i == len(go_) && j == len(ga)
		}
		x, y := o.Syscalls[go_[i].rule], a.Syscalls[ga[j].rule]
		if x.Action != y.Action || !slices.Equal(x.Args, y.Args) {
			return false
		}
		i++
		j++
	}
}

// checkEnosysStub covers runc's -ENOSYS stub: unless the default action is
// ALLOW, LOG or TRACE or the default errno is ENOSYS, syscalls numbered above
// every syscall the profile names get ERRNO(ENOSYS). Dropping names can move
// that line down, so syscalls that got the original's verdict may get ENOSYS
// instead. That is no loosening while nothing they could have got was more
// restrictive than ERRNO. Adding names is covered by the per-name check: a
// stub only exists when the original default is at least ERRNO, and the
// adjusted must then give at least that.
func (c *comparison) checkEnosysStub(co, ca compiled, dropped [][]nameRef) {
	def := ca.def
	if len(dropped) == 0 || def.Kind == ActAllow || def.Kind == ActLog || def.Kind == ActTrace || (def.RetSet && def.Ret == ENOSYS) {
		return
	}
	errnoRank := ActErrno.Rank()
	var worst []string
	for _, g := range dropped {
		strict := co.def.Kind.Rank() > errnoRank
		for _, r := range g {
			strict = strict || (r.live && co.p.Syscalls[r.rule].Action.Kind.Rank() > errnoRank)
		}
		if strict {
			worst = append(worst, g[0].name)
		}
	}
	if len(worst) == 0 {
		return
	}
	c.add(Finding{Kind: Unprovable, Subject: strings.Join(worst, ", "), Architectures: c.arches,
		Reason: "runc's -ENOSYS stub: no longer naming these may lower the highest named syscall, " +
			"so newer syscalls would get ERRNO(ENOSYS) where the original gave " + co.def.Kind.String() + " or stricter"})
}
