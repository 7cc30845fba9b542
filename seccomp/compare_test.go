package seccomp

import (
	"slices"
	"strings"
	"testing"
)

func findingsOf(res *Result, kind FindingKind, subject string) []Finding {
	var out []Finding
	for _, f := range res.Findings {
		if f.Kind == kind && f.Subject == subject {
			out = append(out, f)
		}
	}
	return out
}

func TestCompareIdenticalRealProfiles(t *testing.T) {
	for name, p := range realProfiles(t) {
		t.Run(name, func(t *testing.T) {
			if len(p.Syscalls) < 10 {
				t.Fatalf("profile has only %d rules; the test data is not the real profile", len(p.Syscalls))
			}
			res := mustCompare(t, p, p.Clone())
			if !res.Tighter() || len(res.Findings) != 0 {
				t.Fatalf("a profile compared with itself: tighter=%v findings:\n%s", res.Tighter(), res)
			}
		})
	}
}

func TestDroppingAllowedSyscallIsTighter(t *testing.T) {
	for name, p := range realProfiles(t) {
		t.Run(name, func(t *testing.T) {
			adj := p.Clone()
			i := ruleFor(adj, "getpid", ActAllow)
			if i < 0 {
				t.Fatal("getpid is not allowed unconditionally by the default profile")
			}
			adj.Syscalls[i].Names = slices.DeleteFunc(adj.Syscalls[i].Names, func(n string) bool { return n == "getpid" })
			res := mustCompare(t, p, adj)
			if !res.Tighter() {
				t.Fatalf("dropping getpid from the allow list is not tighter:\n%s", res)
			}
			// And the other way round is a loosening.
			back := mustCompare(t, adj, p)
			fs := findingsOf(back, Loosened, "getpid")
			if back.Tighter() || len(fs) != 1 || fs[0].From != "ERRNO" || fs[0].To != "ALLOW" {
				t.Fatalf("re-adding getpid: want one loosening ERRNO -> ALLOW, got:\n%s", back)
			}
		})
	}
}

func TestAddingSyscallIsLooser(t *testing.T) {
	for name, p := range realProfiles(t) {
		t.Run(name, func(t *testing.T) {
			if ruleFor(p, "ptrace", ActAllow) >= 0 {
				// Docker allows ptrace on kernels >= 4.8; use a syscall it
				// never allows without CAP_SYS_BOOT instead.
				t.Log("ptrace is allowed here; using kexec_load")
			}
			target := "kexec_load"
			adj := p.Clone()
			adj.Syscalls = append(adj.Syscalls, Rule{Names: []string{target}, Action: Action{Kind: ActAllow}})
			res := mustCompare(t, p, adj)
			if res.Tighter() {
				t.Fatalf("allowing %s was accepted as tighter", target)
			}
			fs := findingsOf(res, Loosened, target)
			if len(fs) != 1 {
				t.Fatalf("want one loosening for %s, got:\n%s", target, res)
			}
			got := fs[0].String()
			if !strings.HasPrefix(got, "`"+target+"` on ") || !strings.HasSuffix(got, ": ERRNO -> ALLOW") {
				t.Errorf("finding reads %q", got)
			}
			if !slices.Contains(fs[0].Architectures, "amd64") && !slices.Contains(fs[0].Architectures, "arm64") {
				t.Errorf("finding names architectures %v, want the profile's", fs[0].Architectures)
			}
		})
	}
}

func TestErrnoToKillIsTighter(t *testing.T) {
	for name, p := range realProfiles(t) {
		t.Run(name, func(t *testing.T) {
			// The default action: ERRNO -> KILL_PROCESS.
			adj := p.Clone()
			adj.DefaultAction = Action{Kind: ActKillProcess}
			if res := mustCompare(t, p, adj); !res.Tighter() {
				t.Fatalf("default ERRNO -> KILL_PROCESS not tighter:\n%s", res)
			}
			if res := mustCompare(t, adj, p); res.Tighter() || len(findingsOf(res, Loosened, "default action")) != 1 {
				t.Fatalf("default KILL_PROCESS -> ERRNO not reported:\n%s", res)
			}
			// A syscall: kexec_load gets an explicit KILL rule.
			adj = p.Clone()
			adj.Syscalls = append(adj.Syscalls, Rule{Names: []string{"kexec_load"}, Action: Action{Kind: ActKill}})
			if res := mustCompare(t, p, adj); !res.Tighter() {
				t.Fatalf("kexec_load ERRNO -> KILL not tighter:\n%s", res)
			}
			// An allowed syscall turned into ERRNO is tighter too.
			adj = p.Clone()
			adj.Syscalls = append(adj.Syscalls, Rule{Names: []string{"getpid"}, Action: Action{Kind: ActErrno, Ret: 13, RetSet: true}})
			if res := mustCompare(t, p, adj); !res.Tighter() {
				t.Fatalf("getpid ALLOW -> ERRNO not tighter:\n%s", res)
			}
		})
	}
}

func TestErrnoValueChangeIsAChangeNotALoosening(t *testing.T) {
	p := mobyDefault(t)
	adj := p.Clone()
	adj.DefaultAction = Action{Kind: ActErrno, Ret: ENOSYS, RetSet: true}
	res := mustCompare(t, p, adj)
	fs := findingsOf(res, ErrnoChanged, "default action")
	if !res.Tighter() || len(fs) != 1 || fs[0].From != "ERRNO(1)" || fs[0].To != "ERRNO(38)" {
		t.Fatalf("EPERM -> ENOSYS default: want tighter with one errno change, got tighter=%v:\n%s", res.Tighter(), res)
	}
}

func TestListenerPathChangeIsReported(t *testing.T) {
	for name, p := range realProfiles(t) {
		t.Run(name, func(t *testing.T) {
			adj := p.Clone()
			adj.ListenerPath = "/run/seccomp-agent/pod-a.sock"
			res := mustCompare(t, p, adj)
			fs := findingsOf(res, ListenerChanged, "listener")
			if res.Tighter() || len(fs) != 1 || fs[0].To != "/run/seccomp-agent/pod-a.sock" {
				t.Fatalf("listener change: got\n%s", res)
			}
			// Metadata alone counts too.
			adj2 := adj.Clone()
			adj2.ListenerMetadata = "pod=b"
			if res := mustCompare(t, adj, adj2); len(findingsOf(res, ListenerChanged, "listener")) != 1 {
				t.Fatalf("listener metadata change not reported:\n%s", res)
			}
			// Removing the listener lets no agent act: not reported.
			if res := mustCompare(t, adj, p); !res.Tighter() {
				t.Fatalf("removing the listener reported:\n%s", res)
			}
		})
	}
}

func TestArchitecturesAndFlags(t *testing.T) {
	p := mobyDefault(t)
	if len(p.Architectures) < 2 {
		t.Skipf("profile lists %d architectures on this machine", len(p.Architectures))
	}
	dropped := p.Clone()
	dropped.Architectures = dropped.Architectures[:1]
	res := mustCompare(t, p, dropped)
	if res.Tighter() || len(res.Findings) != len(p.Architectures)-1 {
		t.Fatalf("dropping architectures: got\n%s", res)
	}
	for _, f := range res.Findings {
		if f.Kind != ArchitectureChanged || f.To != "dropped" {
			t.Errorf("unexpected finding %s", f)
		}
	}
	if res := mustCompare(t, dropped, p); res.Tighter() || res.Findings[0].To != "added" {
		t.Fatalf("adding architectures: got\n%s", res)
	}

	spec := p.Clone()
	spec.Flags = append(spec.Flags, FlagSpecAllow)
	res = mustCompare(t, p, spec)
	if fs := findingsOf(res, FlagChanged, FlagSpecAllow); res.Tighter() || len(fs) != 1 {
		t.Fatalf("setting SPEC_ALLOW: got\n%s", res)
	}
	if res := mustCompare(t, spec, p); !res.Tighter() {
		t.Fatalf("clearing SPEC_ALLOW only tightens, got\n%s", res)
	}
	logged := p.Clone()
	logged.Flags = append(logged.Flags, FlagLog)
	if res := mustCompare(t, logged, p); res.Tighter() {
		t.Fatalf("clearing SECCOMP_FILTER_FLAG_LOG not reported")
	}
}

func TestUnconfinedIsMostPermissive(t *testing.T) {
	p := mobyDefault(t)
	if res := mustCompare(t, nil, p); !res.Tighter() {
		t.Fatalf("unconfined -> default: %s", res)
	}
	res := mustCompare(t, p, nil)
	if res.Tighter() || len(findingsOf(res, Loosened, "profile")) != 1 {
		t.Fatalf("default -> unconfined: %s", res)
	}
	if res := mustCompare(t, nil, nil); !res.Tighter() {
		t.Fatalf("unconfined -> unconfined: %s", res)
	}
	allowAll := &Profile{DefaultAction: Action{Kind: ActAllow}, ListenerPath: "/run/agent.sock"}
	if res := mustCompare(t, nil, allowAll); res.Tighter() {
		t.Fatalf("unconfined -> profile with a listener must report the listener")
	}
}

func personalityRules(p *Profile) []int {
	var out []int
	for i, r := range p.Syscalls {
		if slices.Contains(r.Names, "personality") {
			out = append(out, i)
		}
	}
	return out
}

func TestArgumentConditionsAreHandledSoundly(t *testing.T) {
	p := mobyDefault(t)
	if len(personalityRules(p)) == 0 {
		t.Fatal("the default profile has no personality rules")
	}

	t.Run("new allowed value is looser with a witness", func(t *testing.T) {
		adj := p.Clone()
		adj.Syscalls = append(adj.Syscalls, Rule{Names: []string{"personality"}, Action: Action{Kind: ActAllow},
			Args: []Cond{{Index: 0, Op: OpEQ, Value: 0x400000}}})
		res := mustCompare(t, p, adj)
		fs := findingsOf(res, Loosened, "personality")
		if res.Tighter() || len(fs) != 1 || fs[0].Args != "arg0=0x400000" {
			t.Fatalf("got\n%s", res)
		}
	})
	t.Run("dropping one allowed value is tighter", func(t *testing.T) {
		adj := p.Clone()
		i := personalityRules(adj)[0]
		adj.Syscalls = slices.Delete(adj.Syscalls, i, i+1)
		if res := mustCompare(t, p, adj); !res.Tighter() {
			t.Fatalf("got\n%s", res)
		}
	})
	t.Run("a range that covers new values is looser", func(t *testing.T) {
		adj := p.Clone()
		adj.Syscalls = append(adj.Syscalls, Rule{Names: []string{"personality"}, Action: Action{Kind: ActAllow},
			Args: []Cond{{Index: 0, Op: OpLE, Value: 8}}})
		res := mustCompare(t, p, adj)
		fs := findingsOf(res, Loosened, "personality")
		if res.Tighter() || len(fs) != 1 || fs[0].Args != "arg0=0x1" {
			t.Fatalf("got\n%s", res)
		}
	})
	t.Run("a conditional KILL on top is tighter", func(t *testing.T) {
		adj := p.Clone()
		adj.Syscalls = append(adj.Syscalls, Rule{Names: []string{"personality"}, Action: Action{Kind: ActKillProcess},
			Args: []Cond{{Index: 0, Op: OpEQ, Value: 8}}})
		if res := mustCompare(t, p, adj); !res.Tighter() {
			t.Fatalf("got\n%s", res)
		}
	})
	t.Run("a narrower mask is tighter, a wider one looser", func(t *testing.T) {
		base := &Profile{DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{{Names: []string{"clone"},
			Action: Action{Kind: ActAllow}, Args: []Cond{{Index: 0, Op: OpMaskedEQ, Value: 0x7E020000}}}}}
		narrow := base.Clone()
		narrow.Syscalls[0].Args[0].Value = 0x7E030000
		if res := mustCompare(t, base, narrow); !res.Tighter() {
			t.Fatalf("more bits required clear: got\n%s", res)
		}
		res := mustCompare(t, narrow, base)
		if fs := findingsOf(res, Loosened, "clone"); res.Tighter() || len(fs) != 1 || fs[0].Args != "arg0=0x10000" {
			t.Fatalf("fewer bits required clear: got\n%s", res)
		}
	})
	t.Run("mixed operators on one argument are not provably tighter", func(t *testing.T) {
		base := &Profile{DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{{Names: []string{"ioctl"},
			Action: Action{Kind: ActAllow}, Args: []Cond{{Index: 1, Op: OpLT, Value: 0x5400}}}}}
		adj := base.Clone()
		adj.Syscalls[0].Args = []Cond{{Index: 1, Op: OpMaskedEQ, Value: 0xff00, ValueTwo: 0x5400}}
		res := mustCompare(t, base, adj)
		if res.Tighter() || len(findingsOf(res, Unprovable, "ioctl")) != 1 {
			t.Fatalf("got\n%s", res)
		}
	})
	t.Run("repeated conditions on one argument are read both ways", func(t *testing.T) {
		// runc splits [arg0 >= 10, arg0 <= 20] into two rules (OR), so the
		// original allows every value; read as AND it allows 10..20 only,
		// and then allowing 5 loosens.
		base := &Profile{DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{{Names: []string{"mmap"},
			Action: Action{Kind: ActAllow}, Args: []Cond{{Index: 0, Op: OpGE, Value: 10}, {Index: 0, Op: OpLE, Value: 20}}}}}
		adj := &Profile{DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{{Names: []string{"mmap"},
			Action: Action{Kind: ActAllow}, Args: []Cond{{Index: 0, Op: OpEQ, Value: 5}}}}}
		res := mustCompare(t, base, adj)
		fs := findingsOf(res, Loosened, "mmap")
		if res.Tighter() || len(fs) != 1 || !strings.Contains(fs[0].Reason, "AND") {
			t.Fatalf("got\n%s", res)
		}
	})
	t.Run("values past 32 bits are also read truncated", func(t *testing.T) {
		// 64-bit: every value below 2^32 was allowed, so allowing 7 only
		// tightens. Truncated to 32 bits the original allows nothing.
		base := &Profile{DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{{Names: []string{"lseek"},
			Action: Action{Kind: ActAllow}, Args: []Cond{{Index: 2, Op: OpLT, Value: 1 << 32}}}}}
		adj := &Profile{DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{{Names: []string{"lseek"},
			Action: Action{Kind: ActAllow}, Args: []Cond{{Index: 2, Op: OpEQ, Value: 7}}}}}
		res := mustCompare(t, base, adj)
		fs := findingsOf(res, Loosened, "lseek")
		if res.Tighter() || len(fs) != 1 || !strings.Contains(fs[0].Reason, "32 bits") || fs[0].Args != "arg2=0x7" {
			t.Fatalf("got\n%s", res)
		}
	})
}

func TestRulesRepeatingTheDefaultAreDropped(t *testing.T) {
	// runc drops a rule whose action equals the default, so this ERRNO(1)
	// rule never narrows the ALLOW rule, while an ERRNO(13) rule does.
	mk := func(ret uint16) *Profile {
		return &Profile{DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{
			{Names: []string{"socket"}, Action: Action{Kind: ActAllow}},
			{Names: []string{"socket"}, Action: Action{Kind: ActErrno, Ret: ret, RetSet: true}, Args: []Cond{{Index: 0, Op: OpEQ, Value: 40}}},
		}}
	}
	allowAll := &Profile{DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{{Names: []string{"socket"}, Action: Action{Kind: ActAllow}}}}
	if res := mustCompare(t, mk(1), allowAll); !res.Tighter() {
		t.Fatalf("the dropped rule was taken into account:\n%s", res)
	}
	if res := mustCompare(t, mk(13), allowAll); res.Tighter() {
		t.Fatalf("removing a live ERRNO rule was accepted")
	}
}

func TestMultiplexedSyscalls(t *testing.T) {
	// On 32-bit x86 socket(2) can also be reached as socketcall(SYS_SOCKET);
	// libseccomp adds socket's ALLOW there. The explicit socketcall ERRNO(13)
	// rule is what keeps socketcall(SYS_SOCKET) denied; without it the socket
	// rule decides, though socketcall by itself only moves to the default.
	orig := &Profile{DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{
		{Names: []string{"socket"}, Action: Action{Kind: ActAllow}},
		{Names: []string{"socketcall"}, Action: Action{Kind: ActErrno, Ret: 13, RetSet: true}},
	}}
	adj := orig.Clone()
	adj.Syscalls = adj.Syscalls[:1]
	res := mustCompare(t, orig, adj)
	fs := findingsOf(res, Unprovable, "socketcall")
	if res.Tighter() || len(fs) != 1 || !strings.Contains(fs[0].Reason, "multiplex") {
		t.Fatalf("got\n%s", res)
	}
	// Dropping socket's ALLOW is fine everywhere.
	adj = orig.Clone()
	adj.Syscalls = adj.Syscalls[1:]
	if res := mustCompare(t, orig, adj); !res.Tighter() {
		t.Fatalf("got\n%s", res)
	}
}

func TestEnosysStub(t *testing.T) {
	// With a KILL default, runc's stub gives ENOSYS past the highest named
	// syscall; dropping a name may lower that line.
	orig := &Profile{DefaultAction: Action{Kind: ActKillProcess}, Syscalls: []Rule{
		{Names: []string{"read", "write", "io_pgetevents"}, Action: Action{Kind: ActAllow}},
	}}
	adj := orig.Clone()
	adj.Syscalls[0].Names = adj.Syscalls[0].Names[:2]
	res := mustCompare(t, orig, adj)
	if fs := findingsOf(res, Unprovable, "io_pgetevents"); res.Tighter() || len(fs) != 1 {
		t.Fatalf("got\n%s", res)
	}
	// With an ERRNO default the stub changes only the errno.
	orig.DefaultAction, adj.DefaultAction = Action{Kind: ActErrno}, Action{Kind: ActErrno}
	if res := mustCompare(t, orig, adj); !res.Tighter() {
		t.Fatalf("got\n%s", res)
	}
}

func TestCompareRejectsInvalidProfiles(t *testing.T) {
	good := &Profile{DefaultAction: Action{Kind: ActErrno}}
	for name, bad := range map[string]*Profile{
		"no default":     {},
		"notify default": {DefaultAction: Action{Kind: ActNotify}},
		"bad arch":       {DefaultAction: Action{Kind: ActErrno}, Architectures: []string{"SCMP_ARCH_VAX"}},
		"bad flag":       {DefaultAction: Action{Kind: ActErrno}, Flags: []string{"SECCOMP_FILTER_FLAG_BOGUS"}},
		"no names":       {DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{{Action: Action{Kind: ActAllow}}}},
		"empty name":     {DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{{Names: []string{""}, Action: Action{Kind: ActAllow}}}},
		"bad index": {DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{{Names: []string{"read"}, Action: Action{Kind: ActAllow},
			Args: []Cond{{Index: 6, Op: OpEQ}}}}},
		"bad op": {DefaultAction: Action{Kind: ActErrno}, Syscalls: []Rule{{Names: []string{"read"}, Action: Action{Kind: ActAllow},
			Args: []Cond{{Index: 0, Op: 99}}}}},
	} {
		if _, err := Compare(good, bad); err == nil {
			t.Errorf("%s: adjusted accepted", name)
		}
		if _, err := Compare(bad, good); err == nil {
			t.Errorf("%s: original accepted", name)
		}
	}
}
