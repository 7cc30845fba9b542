package seccomp

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
)

// maxPoints bounds the argument vectors compareName enumerates for one
// syscall; beyond it the answer is Unprovable.
const maxPoints = 1 << 16

// maxMaskBits bounds the bits that MASKED_EQ conditions on one argument may
// inspect together before enumeration gives up.
const maxMaskBits = 14

// clause is one rule as libseccomp sees it: an action and a conjunction of
// argument conditions.
type clause struct {
	act   Action
	conds []Cond
}

// semantics says how a rule with several conditions on one argument reads.
type semantics uint8

const (
	// splitRepeated is runc's reading: one rule per condition (OR).
	splitRepeated semantics = iota
	// andRepeated is the plain reading: all conditions must hold (AND).
	andRepeated
)

func repeatsIndex(r Rule) bool {
	var seen [MaxArgs]bool
	for _, c := range r.Args {
		if seen[c.Index] {
			return true
		}
		seen[c.Index] = true
	}
	return false
}

func clauses(p *Profile, idx []int, sem semantics, mask uint64) []clause {
	out := make([]clause, 0, len(idx))
	for _, i := range idx {
		r := p.Syscalls[i]
		conds := r.Args
		if mask != math.MaxUint64 {
			conds = make([]Cond, len(r.Args))
			for j, c := range r.Args {
				c.Value &= mask
				c.ValueTwo &= mask
				conds[j] = c
			}
		}
		if sem == splitRepeated && repeatsIndex(r) {
			for j := range conds {
				out = append(out, clause{act: r.Action, conds: conds[j : j+1]})
			}
			continue
		}
		out = append(out, clause{act: r.Action, conds: conds})
	}
	return out
}

// eval returns the action for argument vector x: the most restrictive
// matching clause, or the fallback when none matches.
func eval(cl []clause, fallback Action, x *[MaxArgs]uint64) Action {
	best, found := fallback, false
	for _, k := range cl {
		ok := true
		for _, c := range k.conds {
			if !c.Holds(x[c.Index]) {
				ok = false
				break
			}
		}
		if ok && (!found || k.act.Kind.Rank() > best.Kind.Rank()) {
			best, found = k.act, true
		}
	}
	return best
}

// compareName compares the rules for one syscall name. fo and fa are the
// actions that apply when no rule matches. explicit marks the extra pass for
// multiplexed syscalls, whose findings are Unprovable.
func (c *comparison) compareName(name string, o *Profile, ro []int, fo Action, a *Profile, ra []int, fa Action, explicit bool) {
	repeat, wide := false, false
	for _, set := range []struct {
		p   *Profile
		idx []int
	}{{o, ro}, {a, ra}} {
		for _, i := range set.idx {
			r := set.p.Syscalls[i]
			repeat = repeat || repeatsIndex(r)
			for _, cd := range r.Args {
				wide = wide || cd.Value > math.MaxUint32 || (cd.Op == OpMaskedEQ && cd.ValueTwo > math.MaxUint32)
			}
		}
	}
	sems := []semantics{splitRepeated}
	if repeat {
		sems = append(sems, andRepeated)
	}
	masks := []uint64{math.MaxUint64}
	if wide {
		masks = append(masks, math.MaxUint32)
	}
	errnoSeen := false
	for _, mask := range masks {
		for _, sem := range sems {
			co, ca := clauses(o, ro, sem, mask), clauses(a, ra, sem, mask)
			v := decide(co, fo, ca, fa, mask)
			if v.errno != nil && !errnoSeen && !explicit {
				errnoSeen = true
				c.add(Finding{Kind: ErrnoChanged, Subject: name, Architectures: c.arches,
					From: v.errno[0].String(), To: v.errno[1].String(), Args: v.errnoArgs})
			}
			if v.ok {
				continue
			}
			f := Finding{Kind: Loosened, Subject: name, Architectures: c.arches, Args: v.args, Reason: v.reason}
			if v.unprovable {
				f.Kind = Unprovable
			} else {
				f.From, f.To = v.from.Kind.String(), v.to.Kind.String()
			}
			if mask != math.MaxUint64 {
				f.Reason = join(f.Reason, "with condition values truncated to 32 bits, as on 32-bit architectures")
			}
			if sem == andRepeated {
				f.Reason = join(f.Reason, "reading repeated conditions on one argument as AND, as runtimes other than runc may")
			}
			if explicit {
				f.Kind = Unprovable
				f.Reason = join(f.Reason, "where socketcall(2) or ipc(2) multiplex this syscall, "+
					"its rules meet those of related syscalls on one syscall number, "+
					"and this change could let a rule of theirs decide")
			}
			c.add(f)
			return
		}
	}
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// verdict is the outcome of deciding one syscall.
type verdict struct {
	ok         bool
	unprovable bool
	from, to   Action
	args       string
	reason     string
	// errno, when set, is an original and adjusted action of the same
	// severity with different return codes, at errnoArgs.
	errno     []Action
	errnoArgs string
}

// decide checks that, for every argument vector, the adjusted clauses give
// an action at least as restrictive as the original ones.
func decide(co []clause, fo Action, ca []clause, fa Action, mask uint64) verdict {
	if quickTighter(co, fo, ca, fa) {
		return verdict{ok: true}
	}
	var used [MaxArgs]bool
	for _, cl := range [][]clause{co, ca} {
		for _, k := range cl {
			for _, cd := range k.conds {
				used[cd.Index] = true
			}
		}
	}
	var reps [MaxArgs][]uint64
	points := 1
	for i := range MaxArgs {
		if !used[i] {
			reps[i] = []uint64{0}
			continue
		}
		r, err := representatives(i, co, ca, mask)
		if err != nil {
			return verdict{unprovable: true, reason: err.Error()}
		}
		reps[i] = r
		points *= len(r)
		if points > maxPoints {
			return verdict{unprovable: true, reason: fmt.Sprintf("more than %d argument regions to check", maxPoints)}
		}
	}
	var v verdict
	var x [MaxArgs]uint64
	var pos [MaxArgs]int
	for {
		for i := range MaxArgs {
			x[i] = reps[i][pos[i]]
		}
		ao, aa := eval(co, fo, &x), eval(ca, fa, &x)
		switch d := aa.Kind.Rank() - ao.Kind.Rank(); {
		case d < 0:
			return verdict{from: ao, to: aa, args: witness(&x, &used), errno: v.errno, errnoArgs: v.errnoArgs}
		case d == 0 && v.errno == nil && aa.EffectiveRet() != ao.EffectiveRet():
			v.errno, v.errnoArgs = []Action{ao, aa}, witness(&x, &used)
		}
		// Advance the odometer.
		i := 0
		for ; i < MaxArgs; i++ {
			pos[i]++
			if pos[i] < len(reps[i]) {
				break
			}
			pos[i] = 0
		}
		if i == MaxArgs {
			break
		}
	}
	v.ok = true
	return v
}

// quickTighter proves the easy cases without enumeration: the least
// restrictive action the adjusted clauses can give is strictly more
// restrictive than the most restrictive one the original can give, or both
// sides can only ever give the same single action.
func quickTighter(co []clause, fo Action, ca []clause, fa Action) bool {
	hiO, onlyO := bounds(co, fo, true)
	loA, onlyA := bounds(ca, fa, false)
	if loA.Kind.Rank() > hiO.Kind.Rank() {
		return true
	}
	return onlyO && onlyA && hiO.Same(loA)
}

// bounds returns the most (high) or least restrictive action the clauses can
// produce, and whether they can produce only that one action.
func bounds(cl []clause, fallback Action, high bool) (Action, bool) {
	uncond := false
	var best Action
	for _, k := range cl {
		if len(k.conds) == 0 && (!uncond || k.act.Kind.Rank() > best.Kind.Rank()) {
			uncond, best = true, k.act
		}
	}
	// With an unconditional clause the fallback never applies, and nothing
	// below that clause's action can win.
	single := true
	var ext Action
	first := true
	consider := func(a Action) {
		if uncond && a.Kind.Rank() < best.Kind.Rank() {
			return
		}
		if first {
			ext, first = a, false
			return
		}
		if !a.Same(ext) {
			single = false
		}
		if (high && a.Kind.Rank() > ext.Kind.Rank()) || (!high && a.Kind.Rank() < ext.Kind.Rank()) {
			ext = a
		}
	}
	if !uncond {
		consider(fallback)
	}
	for _, k := range cl {
		consider(k.act)
	}
	if !high && uncond {
		// The least the clauses can give is the best unconditional action.
		return best, single
	}
	return ext, single
}

// representatives returns argument values for index i, one in every region
// within which all conditions on i keep their truth value.
func representatives(i int, co, ca []clause, mask uint64) ([]uint64, error) {
	var interval, masked bool
	var bitsUsed uint64
	vals := []uint64{0, mask}
	for _, cl := range [][]clause{co, ca} {
		for _, k := range cl {
			for _, cd := range k.conds {
				if int(cd.Index) != i {
					continue
				}
				if cd.Op == OpMaskedEQ {
					masked = true
					bitsUsed |= cd.Value
					continue
				}
				interval = true
				v := cd.Value
				vals = append(vals, v)
				if v > 0 {
					vals = append(vals, v-1)
				}
				if v < mask {
					vals = append(vals, v+1)
				}
			}
		}
	}
	switch {
	case interval && masked:
		return nil, fmt.Errorf("arg%d mixes MASKED_EQ with ordered comparisons", i)
	case masked:
		if n := bits.OnesCount64(bitsUsed); n > maxMaskBits {
			return nil, fmt.Errorf("arg%d: MASKED_EQ conditions inspect %d bits together, more than %d", i, n, maxMaskBits)
		}
		// Every subset of the inspected bits; other bits do not matter.
		out := []uint64{0}
		for sub := bitsUsed; sub != 0; sub = (sub - 1) & bitsUsed {
			out = append(out, sub)
		}
		return out, nil
	}
	slices.Sort(vals)
	return slices.Compact(vals), nil
}

func witness(x *[MaxArgs]uint64, used *[MaxArgs]bool) string {
	var parts []string
	for i := range MaxArgs {
		if used[i] {
			parts = append(parts, fmt.Sprintf("arg%d=%#x", i, x[i]))
		}
	}
	return strings.Join(parts, " ")
}
