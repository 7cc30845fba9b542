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

// maxWork bounds argument vectors times clauses evaluated for one syscall,
// so that a hostile profile cannot make a comparison expensive.
const maxWork = 1 << 22

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

// span is the set of actions libseccomp may take for one input, by its
// least and most restrictive member. libseccomp does not pick the most
// restrictive of several matching rules: an unconditional rule overrides
// conditional ones, the first of several unconditional rules wins, and among
// overlapping conditional rules the shape of its decision tree decides. The
// differential test checks that it always takes one of the matching rules'
// actions, or the fallback when none matches; this is that set.
type span struct {
	lo, hi Action
}

func (s *span) add(a Action, first bool) {
	if first || a.Kind.Rank() < s.lo.Kind.Rank() {
		s.lo = a
	}
	if first || a.Kind.Rank() > s.hi.Kind.Rank() {
		s.hi = a
	}
}

// single reports whether the span holds one action only.
func (s span) single() bool { return s.lo.Same(s.hi) }

// compareSpans compares what the original and the adjusted filter may do
// for one input: looser for certain (every possible adjusted action is less
// restrictive than every original one), maybe looser, or not looser.
func compareSpans(o, a span) (sure, maybe bool) {
	return a.hi.Kind.Rank() < o.lo.Kind.Rank(), a.lo.Kind.Rank() < o.hi.Kind.Rank()
}

// mayFallThrough reports whether libseccomp's decision tree for these
// clauses may miss a matching clause and take the fallback: it branches on
// the high 32-bit word of an argument first, so when conditions on one
// argument differ in that word, an input can follow one branch and never
// reach a clause that matches it on another (found by the differential test
// with libseccomp 2.5).
func mayFallThrough(cl []clause) bool {
	var hi [MaxArgs]uint64
	var seen [MaxArgs]bool
	for _, k := range cl {
		for _, c := range k.conds {
			h := c.Value >> 32
			if seen[c.Index] && hi[c.Index] != h {
				return true
			}
			hi[c.Index], seen[c.Index] = h, true
		}
	}
	return false
}

// eval returns the span of actions for argument vector x; leaky adds the
// fallback to it (see mayFallThrough).
func eval(cl []clause, fallback Action, leaky bool, x *[MaxArgs]uint64) span {
	s := span{fallback, fallback}
	found := leaky
	for _, k := range cl {
		ok := true
		for _, c := range k.conds {
			if !c.Holds(x[c.Index]) {
				ok = false
				break
			}
		}
		if ok {
			s.add(k.act, !found)
			found = true
		}
	}
	return s
}

// compareName compares the rules for one syscall name. fo and fa are the
// actions that apply when no rule matches. explicit marks the extra pass for
// multiplexed syscalls, whose findings are Unprovable. It reports whether it
// added a loosening.
func (c *comparison) compareName(name string, o *Profile, ro []int, fo Action, a *Profile, ra []int, fa Action, explicit bool) bool {
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
			}
			if v.from.Kind != 0 {
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
				f.Reason = join(f.Reason, multiplexReason)
			}
			c.add(f)
			return true
		}
	}
	return false
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
	leakyO, leakyA := mayFallThrough(co), mayFallThrough(ca)
	if quickTighter(co, fo, leakyO, ca, fa, leakyA) {
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
	if points*(len(co)+len(ca)) > maxWork {
		return verdict{unprovable: true, reason: fmt.Sprintf("%d argument regions against %d rules are too many to check", points, len(co)+len(ca))}
	}
	var v verdict
	var maybe *verdict
	var x [MaxArgs]uint64
	var pos [MaxArgs]int
	for {
		for i := range MaxArgs {
			x[i] = reps[i][pos[i]]
		}
		so, sa := eval(co, fo, leakyO, &x), eval(ca, fa, leakyA, &x)
		sure, possibly := compareSpans(so, sa)
		switch {
		case sure:
			return verdict{from: so.lo, to: sa.hi, args: witness(&x, &used), errno: v.errno, errnoArgs: v.errnoArgs}
		case possibly && maybe == nil:
			maybe = &verdict{unprovable: true, from: so.hi, to: sa.lo, args: witness(&x, &used), reason: overlapReason}
		case so.single() && sa.single() && sa.hi.Kind.Rank() == so.hi.Kind.Rank() &&
			v.errno == nil && sa.hi.EffectiveRet() != so.hi.EffectiveRet():
			v.errno, v.errnoArgs = []Action{so.hi, sa.hi}, witness(&x, &used)
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
	if maybe != nil {
		maybe.errno, maybe.errnoArgs = v.errno, v.errnoArgs
		return *maybe
	}
	v.ok = true
	return v
}

// overlapReason explains Unprovable findings where rules overlap.
const overlapReason = "rules with different actions match here, and libseccomp's decision tree, not their severity, picks one"

// quickTighter proves the easy cases without enumeration: the least
// restrictive action the adjusted clauses can give is at least as
// restrictive as the most restrictive one the original can give.
func quickTighter(co []clause, fo Action, leakyO bool, ca []clause, fa Action, leakyA bool) bool {
	so, sa := possible(co, fo, leakyO), possible(ca, fa, leakyA)
	switch r := so.hi.Kind.Rank(); {
	case sa.lo.Kind.Rank() > r:
		return true
	case sa.lo.Kind.Rank() < r:
		return false
	}
	// Equal at the boundary: tighter if every action of that rank on either
	// side is the same one, so that no errno change can hide there.
	rank, want := so.hi.Kind.Rank(), so.hi
	for _, side := range []struct {
		cl       []clause
		fallback Action
	}{{co, fo}, {ca, fa}} {
		if side.fallback.Kind.Rank() == rank && !side.fallback.Same(want) {
			return false
		}
		for _, k := range side.cl {
			if k.act.Kind.Rank() == rank && !k.act.Same(want) {
				return false
			}
		}
	}
	return true
}

// possible returns the span of every action the clauses can produce for
// some input: all their actions, and the fallback unless a clause without
// conditions always matches and the tree cannot leak.
func possible(cl []clause, fallback Action, leaky bool) span {
	var s span
	uncond := false
	for i, k := range cl {
		s.add(k.act, i == 0)
		uncond = uncond || len(k.conds) == 0
	}
	if !uncond || leaky {
		s.add(fallback, len(cl) == 0)
	}
	return s
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
