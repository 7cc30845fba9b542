//go:build libseccomp && cgo

package seccomp

// The differential test: both profiles are compiled with libseccomp, the
// library runc uses, the way runc does it, into real BPF; golang.org/x/net/bpf
// runs that BPF on seccomp_data inputs. Whenever Compare says "tighter", no
// input may get a less restrictive action from the adjusted filter.
//
// Run with: go test -tags libseccomp -run Differential ./seccomp/
// (needs cgo and Debian's libseccomp-dev).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	libseccomp "github.com/seccomp/libseccomp-golang"
	"golang.org/x/net/bpf"
)

// has reports whether rank r is in the set.
func (s oracleSet) has(r int) bool { return s&(1<<r) != 0 }

// testArch is an architecture the differential test feeds inputs for.
type testArch struct {
	oci   specs.Arch
	scmp  libseccomp.ScmpArch
	audit uint32
	is32  bool
}

var testArches = []testArch{
	{specs.ArchX86_64, libseccomp.ArchAMD64, 0xC000003E, false},
	{specs.ArchX86, libseccomp.ArchX86, 0x40000003, true},
}

func libAction(a specs.LinuxSeccompAction, errno *uint) (libseccomp.ScmpAction, error) {
	ret := int16(1)
	if errno != nil {
		ret = int16(*errno)
	}
	switch a {
	case specs.ActKill, specs.ActKillThread:
		return libseccomp.ActKillThread, nil
	case specs.ActKillProcess:
		return libseccomp.ActKillProcess, nil
	case specs.ActTrap:
		return libseccomp.ActTrap, nil
	case specs.ActErrno:
		return libseccomp.ActErrno.SetReturnCode(ret), nil
	case specs.ActTrace:
		return libseccomp.ActTrace.SetReturnCode(ret), nil
	case specs.ActAllow:
		return libseccomp.ActAllow, nil
	case specs.ActLog:
		return libseccomp.ActLog, nil
	case specs.ActNotify:
		return libseccomp.ActNotify, nil
	}
	return libseccomp.ActInvalid, fmt.Errorf("action %q", a)
}

var libOps = map[specs.LinuxSeccompOperator]libseccomp.ScmpCompareOp{
	specs.OpEqualTo: libseccomp.CompareEqual, specs.OpNotEqual: libseccomp.CompareNotEqual,
	specs.OpLessThan: libseccomp.CompareLess, specs.OpLessEqual: libseccomp.CompareLessOrEqual,
	specs.OpGreaterThan: libseccomp.CompareGreater, specs.OpGreaterEqual: libseccomp.CompareGreaterEqual,
	specs.OpMaskedEqual: libseccomp.CompareMaskedEqual,
}

// errNotLoadable marks a profile runc would refuse to load.
var errNotLoadable = errors.New("profile not loadable")

// compileBPF builds the filter the way runc's InitSeccomp does (before its
// -ENOSYS patch) and returns the exported BPF program.
func compileBPF(p *specs.LinuxSeccomp, arches []testArch) (*bpf.VM, error) {
	def, err := libAction(p.DefaultAction, p.DefaultErrnoRet)
	if err != nil {
		return nil, err
	}
	f, err := libseccomp.NewFilter(def)
	if err != nil {
		return nil, fmt.Errorf("%w: new filter: %v", errNotLoadable, err)
	}
	defer f.Release()
	for _, a := range arches {
		if err := f.AddArch(a.scmp); err != nil {
			return nil, fmt.Errorf("add arch: %w", err)
		}
	}
	for _, s := range p.Syscalls {
		act, err := libAction(s.Action, s.ErrnoRet)
		if err != nil {
			return nil, err
		}
		if act == def {
			continue
		}
		var conds []libseccomp.ScmpCondition
		seen, repeated := map[uint]bool{}, false
		for _, a := range s.Args {
			c, err := libseccomp.MakeCondition(a.Index, libOps[a.Op], a.Value, a.ValueTwo)
			if err != nil {
				return nil, err
			}
			repeated = repeated || seen[a.Index]
			seen[a.Index] = true
			conds = append(conds, c)
		}
		for _, name := range s.Names {
			nr, err := libseccomp.GetSyscallFromName(name)
			if err != nil {
				continue // runc ignores names it cannot resolve
			}
			switch {
			case len(conds) == 0:
				err = f.AddRule(nr, act)
			case repeated:
				for _, c := range conds {
					if err = f.AddRuleConditional(nr, act, []libseccomp.ScmpCondition{c}); err != nil {
						break
					}
				}
			default:
				err = f.AddRuleConditional(nr, act, conds)
			}
			if err != nil {
				return nil, fmt.Errorf("%w: rule for %s: %v", errNotLoadable, name, err)
			}
		}
	}
	tmp, err := os.CreateTemp("", "bpf")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := f.ExportBPF(tmp); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(tmp)
	if err != nil {
		return nil, err
	}
	if len(raw)%8 != 0 {
		return nil, fmt.Errorf("BPF of %d bytes", len(raw))
	}
	prog := make([]bpf.Instruction, 0, len(raw)/8)
	for i := 0; i < len(raw); i += 8 {
		ri := bpf.RawInstruction{
			Op: binary.NativeEndian.Uint16(raw[i:]),
			Jt: raw[i+2], Jf: raw[i+3],
			K: binary.NativeEndian.Uint32(raw[i+4:]),
		}
		prog = append(prog, ri.Disassemble())
	}
	return bpf.NewVM(prog)
}

// seccompData lays out struct seccomp_data for x/net/bpf, whose loads are
// big-endian: each 32-bit word is stored big-endian where a little-endian
// kernel would keep it, so the filter reads the values it would in the
// kernel.
func seccompData(arch testArch, nr uint32, args [6]uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], arch.audit)
	for i, a := range args {
		if arch.is32 {
			a &= math.MaxUint32
		}
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(b[16+8*i+4:], uint32(a>>32))
	}
	return b
}

// bpfRank runs the filter and returns the action's rank in the kernel's
// precedence (0 ALLOW ... 7 KILL_PROCESS) and its data.
func bpfRank(t testing.TB, vm *bpf.VM, in []byte) (int, uint16) {
	ret, err := vm.Run(in)
	if err != nil {
		t.Fatalf("bpf: %v", err)
	}
	r := uint32(ret)
	data := uint16(r)
	switch r & 0xffff0000 {
	case 0x80000000:
		return 7, data
	case 0x00000000:
		return 6, data
	case 0x00030000:
		return 5, data
	case 0x00050000:
		return 4, data
	case 0x7fc00000:
		return 3, data
	case 0x7ff00000:
		return 2, data
	case 0x7ffc0000:
		return 1, data
	case 0x7fff0000:
		return 0, data
	}
	t.Fatalf("bpf returned unknown action %#x", r)
	return 0, 0
}

// differentialInputs are the syscall numbers and argument vectors to try on
// one architecture: the syscalls the profiles name or that changed, a spread
// of others, and the multiplexers with every sub-call number.
func differentialInputs(rng *rand.Rand, arch testArch, orig, adj *specs.LinuxSeccomp) (map[uint32][][6]uint64, map[uint32]string) {
	in := map[uint32][][6]uint64{}
	names := map[uint32]string{}
	for _, name := range append(changedNames(orig, adj), namePool...) {
		nr, err := libseccomp.GetSyscallFromNameByArch(name, arch.scmp)
		if err != nil || nr < 0 {
			continue
		}
		in[uint32(nr)] = append(in[uint32(nr)], samples(rng, name, orig, adj)...)
		names[uint32(nr)] = name
	}
	for range 16 {
		nr := uint32(rng.IntN(460))
		in[nr] = append(in[nr], [6]uint64{rng.Uint64(), rng.Uint64()})
	}
	for _, mux := range []string{"socketcall", "ipc"} {
		nr, err := libseccomp.GetSyscallFromNameByArch(mux, arch.scmp)
		if err != nil || nr < 0 {
			continue
		}
		for sub := range uint64(25) {
			in[uint32(nr)] = append(in[uint32(nr)], [6]uint64{sub, rng.Uint64()}, [6]uint64{sub})
		}
	}
	return in, names
}

func withArches(p *specs.LinuxSeccomp) *specs.LinuxSeccomp {
	q := *p
	q.Architectures = nil
	for _, a := range testArches {
		q.Architectures = append(q.Architectures, a.oci)
	}
	return &q
}

// TestDifferentialOracleMatchesLibseccomp checks the oracle, and so the
// semantics Compare assumes, against libseccomp's BPF on the real profiles
// and mutations of them.
func TestDifferentialOracleMatchesLibseccomp(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	bases := []*specs.LinuxSeccomp{withArches(mobyDefaultOCI(t)), withArches(containerdDefaultOCI(t))}
	checked := 0
	for i := range 300 {
		base := bases[i%len(bases)]
		b := make([]byte, 48)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		p, _ := pairFromBytes(base, b)
		vm, err := compileBPF(p, testArches)
		if errors.Is(err, errNotLoadable) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, arch := range testArches {
			in, names := differentialInputs(rng, arch, p, p)
			for nr, xs := range in {
				name, ok := names[nr]
				if !ok || multiplexed[name] && arch.is32 {
					continue // the oracle knows names, not numbers or multiplexers
				}
				for _, x := range xs {
					got, _ := bpfRank(t, vm, seccompData(arch, nr, x))
					want := oracleEval(p, name, x, arch.is32)
					if !want.has(got) {
						t.Fatalf("%s (%d) on %s with %#x: libseccomp gives rank %d, the oracle allows only %b\n%s", name, nr, arch.oci, x, got, want, describe(p))
					}
					checked++
				}
			}
		}
	}
	t.Logf("%d inputs agree", checked)
}

// TestDifferentialCompareSoundAgainstLibseccomp is the property: when
// Compare says tighter, libseccomp's BPF of the adjusted profile never gives
// an input a less restrictive action than that of the original.
func TestDifferentialCompareSoundAgainstLibseccomp(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	bases := []*specs.LinuxSeccomp{withArches(mobyDefaultOCI(t)), withArches(containerdDefaultOCI(t))}
	n := 600
	if testing.Short() {
		n = 100
	}
	tighter, inputs := 0, 0
	for i := range n {
		base := bases[i%len(bases)]
		b := make([]byte, 64)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		orig, adj := pairFromBytes(base, b)
		if k := differentialCheck(t, rng, orig, adj); k > 0 {
			tighter++
			inputs += k
		}
	}
	if tighter < n/20 {
		t.Fatalf("only %d of %d pairs were tighter", tighter, n)
	}
	t.Logf("%d tighter pairs, %d inputs checked", tighter, inputs)
}

// differentialCheck checks one pair and returns the number of inputs it
// tried (0 if Compare did not say tighter or a profile is not loadable).
func differentialCheck(t testing.TB, rng *rand.Rand, orig, adj *specs.LinuxSeccomp) int {
	po, err := FromOCI(orig)
	if err != nil {
		t.Fatal(err)
	}
	pa, err := FromOCI(adj)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Compare(po, pa)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Tighter() {
		return 0
	}
	vo, err := compileBPF(orig, testArches)
	if errors.Is(err, errNotLoadable) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	va, err := compileBPF(adj, testArches)
	if errors.Is(err, errNotLoadable) {
		return 0 // runc would refuse the adjusted profile: nothing loosens
	}
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for _, arch := range testArches {
		in, names := differentialInputs(rng, arch, orig, adj)
		for nr, xs := range in {
			for _, x := range xs {
				data := seccompData(arch, nr, x)
				ro, _ := bpfRank(t, vo, data)
				ra, _ := bpfRank(t, va, data)
				if ra < ro {
					t.Fatalf("Compare said tighter, but syscall %d (%s) on %s with %#x goes from rank %d to %d\norig %s\nadj %s",
						nr, names[nr], arch.oci, x, ro, ra, describe(orig), describe(adj))
				}
				count++
			}
		}
	}
	return max(count, 1)
}

func describe(p *specs.LinuxSeccomp) string {
	var b strings.Builder
	fmt.Fprintf(&b, "default %s", p.DefaultAction)
	for _, s := range p.Syscalls {
		if len(s.Names) > 8 {
			continue
		}
		fmt.Fprintf(&b, "\n  %v %s %v", s.Names, s.Action, s.Args)
	}
	return b.String()
}

func FuzzDifferentialLibseccomp(f *testing.F) {
	base := withArches(mobyDefaultOCI(f))
	f.Add([]byte{0, 1, 5, 3, 1, 1, 0, 4})
	f.Add([]byte{3, 5, 2, 8, 3, 7, 7, 1, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		orig, adj := pairFromBytes(base, b)
		differentialCheck(t, rand.New(rand.NewPCG(uint64(len(b)), 9)), orig, adj)
	})
}
