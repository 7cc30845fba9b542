package seccomp

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// This file holds the test oracle: a direct, rule-by-rule interpreter of a
// runtime-spec profile as runc loads it, written apart from Compare (it works
// on specs.LinuxSeccomp, not on Profile), plus a mutator that derives
// profile pairs from fuzz bytes.

// oracleRank orders runtime-spec actions by the kernel's precedence.
var oracleRank = map[specs.LinuxSeccompAction]int{
	specs.ActAllow: 0, specs.ActLog: 1, specs.ActTrace: 2, specs.ActNotify: 3, specs.ActErrno: 4,
	specs.ActTrap: 5, specs.ActKill: 6, specs.ActKillThread: 6, specs.ActKillProcess: 7,
}

// oracleAction is an action as libseccomp encodes it: rank and return code.
type oracleAction struct {
	rank int
	ret  uint
}

func oracleAct(a specs.LinuxSeccompAction, errno *uint) oracleAction {
	r := oracleAction{rank: oracleRank[a]}
	if a == specs.ActErrno || a == specs.ActTrace {
		r.ret = 1 // runc's EPERM
		if errno != nil {
			r.ret = *errno
		}
	}
	return r
}

func oracleHolds(c specs.LinuxSeccompArg, args *[6]uint64, trunc bool) bool {
	x, v, v2 := args[c.Index], c.Value, c.ValueTwo
	if trunc {
		x, v, v2 = x&math.MaxUint32, v&math.MaxUint32, v2&math.MaxUint32
	}
	switch c.Op {
	case specs.OpEqualTo:
		return x == v
	case specs.OpNotEqual:
		return x != v
	case specs.OpLessThan:
		return x < v
	case specs.OpLessEqual:
		return x <= v
	case specs.OpGreaterThan:
		return x > v
	case specs.OpGreaterEqual:
		return x >= v
	case specs.OpMaskedEqual:
		return x&v == v2&v // libseccomp masks the datum too
	}
	panic("oracle: unknown operator " + string(c.Op))
}

// oracleSet is a set of action ranks, one bit each.
type oracleSet uint16

func (s oracleSet) min() int { return bits.TrailingZeros16(uint16(s)) }
func (s oracleSet) max() int { return 15 - bits.LeadingZeros16(uint16(s)) }

// oracleEval returns the ranks of the actions runc's filter may take for
// syscall name with arguments args: those of every matching rule, or the
// default's when none matches (libseccomp picks one of the matching rules
// by the shape of its decision tree). A nil profile allows everything.
// trunc reads values as a 32-bit architecture does.
func oracleEval(p *specs.LinuxSeccomp, name string, args [6]uint64, trunc bool) oracleSet {
	if p == nil {
		return 1 << oracleRank[specs.ActAllow]
	}
	def := oracleAct(p.DefaultAction, p.DefaultErrnoRet)
	var set oracleSet
	// libseccomp's tree branches on each argument's high word first; when
	// the live rules' values on one argument differ there, an input may miss
	// a rule that matches it and fall through to the default.
	highWords := map[uint]map[uint64]bool{}
	for _, s := range p.Syscalls {
		if !slices.Contains(s.Names, name) {
			continue
		}
		act := oracleAct(s.Action, s.ErrnoRet)
		if act == def {
			continue // runc skips rules that repeat the default action
		}
		for _, a := range s.Args {
			if highWords[a.Index] == nil {
				highWords[a.Index] = map[uint64]bool{}
			}
			v := a.Value
			if trunc {
				v &= math.MaxUint32
			}
			highWords[a.Index][v>>32] = true
		}
		// runc: if some argument has two conditions, every condition
		// becomes a rule of its own.
		groups := [][]specs.LinuxSeccompArg{s.Args}
		seen := map[uint]bool{}
		for _, a := range s.Args {
			if seen[a.Index] {
				groups = nil
				for _, b := range s.Args {
					groups = append(groups, []specs.LinuxSeccompArg{b})
				}
				break
			}
			seen[a.Index] = true
		}
		for _, g := range groups {
			ok := true
			for _, c := range g {
				ok = ok && oracleHolds(c, &args, trunc)
			}
			if ok {
				set |= 1 << act.rank
			}
		}
	}
	for _, words := range highWords {
		if len(words) > 1 {
			set |= 1 << def.rank
		}
	}
	if set == 0 {
		set = 1 << def.rank
	}
	return set
}

// fuzzBytes hands out bytes of a fuzz input, then zeros.
type fuzzBytes struct {
	b []byte
}

func (f *fuzzBytes) byte() byte {
	if len(f.b) == 0 {
		return 0
	}
	c := f.b[0]
	f.b = f.b[1:]
	return c
}

func (f *fuzzBytes) intn(n int) int { return int(f.byte()) % n }

var (
	namePool    = []string{"personality", "clone", "socket", "ptrace", "getpid", "socketcall", "kexec_load", "read", "mmap", "frobnicate"}
	actionPool  = []specs.LinuxSeccompAction{specs.ActAllow, specs.ActLog, specs.ActTrace, specs.ActNotify, specs.ActErrno, specs.ActTrap, specs.ActKill, specs.ActKillThread, specs.ActKillProcess}
	opPool      = []specs.LinuxSeccompOperator{specs.OpEqualTo, specs.OpNotEqual, specs.OpLessThan, specs.OpLessEqual, specs.OpGreaterThan, specs.OpGreaterEqual, specs.OpMaskedEqual}
	valuePool   = []uint64{0, 1, 8, 38, 0x20000, 0x20008, 0x7E020000, 0xffffffff, 1 << 32, 0x100000008, math.MaxUint64}
	errnoPool   = []uint{0, 1, 13, 38}
	maxArgIndex = 3 // keep to a few argument indices so that rules interact
)

func (f *fuzzBytes) value() uint64 {
	if i := f.intn(len(valuePool) + 1); i < len(valuePool) {
		return valuePool[i]
	}
	var b [8]byte
	for i := range b {
		b[i] = f.byte()
	}
	return binary.LittleEndian.Uint64(b[:])
}

func (f *fuzzBytes) cond() specs.LinuxSeccompArg {
	return specs.LinuxSeccompArg{Index: uint(f.intn(maxArgIndex)), Op: opPool[f.intn(len(opPool))], Value: f.value(), ValueTwo: f.value()}
}

func (f *fuzzBytes) errno() *uint {
	if f.intn(2) == 0 {
		return nil
	}
	e := errnoPool[f.intn(len(errnoPool))]
	return &e
}

// mutate applies n edits chosen by f to a deep copy of p.
func mutate(p *specs.LinuxSeccomp, f *fuzzBytes, n int) *specs.LinuxSeccomp {
	q := *p
	q.Syscalls = make([]specs.LinuxSyscall, len(p.Syscalls))
	for i, s := range p.Syscalls {
		s.Names, s.Args = slices.Clone(s.Names), slices.Clone(s.Args)
		q.Syscalls[i] = s
	}
	pick := func() int { return f.intn(max(len(q.Syscalls), 1)) }
	for range n {
		switch op := f.intn(8); {
		case op == 0 && len(q.Syscalls) > 0: // drop a name
			i := pick()
			s := &q.Syscalls[i]
			if len(s.Names) <= 1 {
				q.Syscalls = slices.Delete(q.Syscalls, i, i+1)
				continue
			}
			j := f.intn(len(s.Names))
			s.Names = slices.Delete(s.Names, j, j+1)
		case op == 1: // add a rule
			s := specs.LinuxSyscall{Names: []string{namePool[f.intn(len(namePool))]}, Action: actionPool[f.intn(len(actionPool))], ErrnoRet: f.errno()}
			for range f.intn(3) {
				s.Args = append(s.Args, f.cond())
			}
			q.Syscalls = append(q.Syscalls, s)
		case op == 2 && len(q.Syscalls) > 0: // change an action
			q.Syscalls[pick()].Action = actionPool[f.intn(len(actionPool))]
		case op == 3 && len(q.Syscalls) > 0: // add a condition
			i := pick()
			q.Syscalls[i].Args = append(q.Syscalls[i].Args, f.cond())
		case op == 4: // change the default
			q.DefaultAction = actionPool[f.intn(len(actionPool))]
			if q.DefaultAction == specs.ActNotify {
				q.DefaultAction = specs.ActKillProcess
			}
			q.DefaultErrnoRet = f.errno()
		case op == 5 && len(q.Syscalls) > 0: // delete a rule
			i := pick()
			q.Syscalls = slices.Delete(q.Syscalls, i, i+1)
		case op == 6 && len(q.Syscalls) > 0: // change an errno
			q.Syscalls[pick()].ErrnoRet = f.errno()
		case op == 7 && len(q.Syscalls) > 0: // change a condition value
			i := pick()
			if a := q.Syscalls[i].Args; len(a) > 0 {
				a[f.intn(len(a))].Value = f.value()
			}
		}
	}
	return &q
}

// samples returns argument vectors for name: zero, the values the
// conditions of either profile name and their neighbours, mask patterns,
// and random values.
func samples(rng *rand.Rand, name string, ps ...*specs.LinuxSeccomp) [][6]uint64 {
	cands := [6][]uint64{}
	for i := range cands {
		cands[i] = []uint64{0, math.MaxUint64, math.MaxUint32, rng.Uint64()}
	}
	for _, p := range ps {
		if p == nil {
			continue
		}
		for _, s := range p.Syscalls {
			if !slices.Contains(s.Names, name) {
				continue
			}
			for _, a := range s.Args {
				c := &cands[a.Index]
				*c = append(*c, a.Value, a.Value-1, a.Value+1, a.ValueTwo, a.ValueTwo|(rng.Uint64()&^a.Value), rng.Uint64()&a.Value)
			}
		}
	}
	conditioned := false
	for _, c := range cands {
		conditioned = conditioned || len(c) > 4
	}
	if !conditioned {
		// No condition looks at the arguments: one vector decides.
		return [][6]uint64{{}}
	}
	out := make([][6]uint64, 0, 64)
	for range 48 {
		var x [6]uint64
		for i := range x {
			x[i] = cands[i][rng.IntN(len(cands[i]))]
		}
		out = append(out, x)
	}
	return append(out, [6]uint64{})
}

// changedNames returns the syscall names whose oracle verdict can differ
// between the profiles: every name if the default action changed, otherwise
// those whose list of rules (as runc keeps them) changed, plus a name no rule
// mentions. For the others both filters are built from the same rules and
// behave the same.
func changedNames(orig, adj *specs.LinuxSeccomp) []string {
	rulesOf := func(p *specs.LinuxSeccomp) map[string]string {
		m := map[string]string{}
		if p == nil {
			return m
		}
		def := oracleAct(p.DefaultAction, p.DefaultErrnoRet)
		for _, s := range p.Syscalls {
			act := oracleAct(s.Action, s.ErrnoRet)
			if act == def {
				continue // dropped by runc, as in oracleEval
			}
			key := fmt.Sprintf("%d/%d/%v;", act.rank, act.ret, s.Args)
			for _, n := range s.Names {
				m[n] += key
			}
		}
		return m
	}
	ro, ra := rulesOf(orig), rulesOf(adj)
	sameDefault := orig != nil && adj != nil && oracleAct(orig.DefaultAction, orig.DefaultErrnoRet) == oracleAct(adj.DefaultAction, adj.DefaultErrnoRet)
	names := []string{"never_named_syscall"}
	for _, m := range []map[string]string{ro, ra} {
		for n := range m {
			if (!sameDefault || ro[n] != ra[n]) && !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return names
}

// parseWitness reads a Finding's Args back into an argument vector.
func parseWitness(t testing.TB, s string) [6]uint64 {
	var x [6]uint64
	for _, part := range strings.Fields(s) {
		var i int
		var v string
		if _, err := fmt.Sscanf(part, "arg%d=%s", &i, &v); err != nil {
			t.Fatalf("witness %q: %v", s, err)
		}
		n, err := strconv.ParseUint(v, 0, 64)
		if err != nil {
			t.Fatalf("witness %q: %v", s, err)
		}
		x[i] = n
	}
	return x
}

// checkAgainstOracle runs Compare on a pair of runtime-spec profiles and
// holds it to the oracle: if Compare says tighter, no sampled input may get a
// less restrictive action; every Loosened finding from the plain 64-bit
// reading must be a real loosening at its witness. It reports whether
// Compare said tighter.
func checkAgainstOracle(t testing.TB, rng *rand.Rand, orig, adj *specs.LinuxSeccomp) bool {
	po, err := FromOCI(orig)
	if err != nil {
		t.Fatalf("original: %v", err)
	}
	pa, err := FromOCI(adj)
	if err != nil {
		t.Fatalf("adjusted: %v", err)
	}
	res, err := Compare(po, pa)
	if err != nil {
		t.Fatalf("Compare: %v", err)
	}
	// The rule diff that picks the names to compare must not change the
	// answer: comparing every name gives the same findings.
	full := comparison{res: &Result{}, arches: archList(po, pa)}
	full.compareSyscalls(po, pa, nil)
	var fromSyscalls []Finding
	for _, f := range res.Findings {
		if f.Kind != ArchitectureChanged && f.Kind != FlagChanged && f.Kind != ListenerChanged {
			fromSyscalls = append(fromSyscalls, f)
		}
	}
	if !reflect.DeepEqual(fromSyscalls, full.res.Findings) {
		t.Fatalf("rule diff and full comparison disagree:\n%s\n--\n%s", &Result{fromSyscalls}, full.res)
	}
	if res.Tighter() {
		for _, name := range changedNames(orig, adj) {
			for _, x := range samples(rng, name, orig, adj) {
				for _, trunc := range []bool{false, true} {
					o, a := oracleEval(orig, name, x, trunc), oracleEval(adj, name, x, trunc)
					if a.min() < o.max() {
						t.Fatalf("Compare said tighter, but %s%v (32-bit %v) may go from rank %d to %d\norig: %+v\nadj: %+v",
							name, x, trunc, o.max(), a.min(), orig, adj)
					}
				}
			}
		}
		return true
	}
	for _, f := range res.Findings {
		if f.Kind != Loosened || f.Reason != "" || f.Subject == "profile" {
			continue
		}
		name := f.Subject
		if name == "default action" {
			name = "never_named_syscall"
		}
		x := parseWitness(t, f.Args)
		if o, a := oracleEval(orig, name, x, false), oracleEval(adj, name, x, false); a.max() >= o.min() {
			t.Fatalf("finding %q is no certain loosening by the oracle (ranks %b -> %b)", f, o, a)
		}
	}
	return false
}

// pairFromBytes derives an (original, adjusted) pair from base and fuzz
// bytes: the original is base with a few edits, the adjusted has more.
func pairFromBytes(base *specs.LinuxSeccomp, b []byte) (*specs.LinuxSeccomp, *specs.LinuxSeccomp) {
	f := &fuzzBytes{b: b}
	orig := mutate(base, f, f.intn(3))
	adj := mutate(orig, f, 1+f.intn(4))
	return orig, adj
}

func TestCompareAgainstOracle(t *testing.T) {
	bases := map[string]*specs.LinuxSeccomp{
		"moby":  mobyDefaultOCI(t),
		"small": {DefaultAction: specs.ActErrno, Syscalls: []specs.LinuxSyscall{{Names: []string{"read", "getpid"}, Action: specs.ActAllow}}},
	}
	for name, base := range bases {
		n := 3000
		if name == "moby" {
			n = 1000
		}
		if testing.Short() {
			n /= 10
		}
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(len(name))))
			tighter := 0
			for range n {
				b := make([]byte, 64)
				for i := range b {
					b[i] = byte(rng.Uint32())
				}
				orig, adj := pairFromBytes(base, b)
				if checkAgainstOracle(t, rng, orig, adj) {
					tighter++
				}
			}
			// The property is only worth something if Compare said
			// "tighter" often enough.
			if tighter < n/20 {
				t.Fatalf("only %d of %d random adjustments were tighter; the test is too weak", tighter, n)
			}
			t.Logf("%d of %d adjustments tighter", tighter, n)
		})
	}
}

func FuzzCompareSound(f *testing.F) {
	base := mobyDefaultOCI(f)
	f.Add([]byte{0, 1, 5, 3, 1, 1, 0, 4})
	f.Add([]byte{1, 1, 2, 3, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{3, 5, 2, 8, 3, 7, 7, 1, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		orig, adj := pairFromBytes(base, b)
		rng := rand.New(rand.NewPCG(uint64(len(b)), 7))
		checkAgainstOracle(t, rng, orig, adj)
	})
}
