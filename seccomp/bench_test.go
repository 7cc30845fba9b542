package seccomp

import "testing"

// BenchmarkCompareDockerDefault compares Docker's default profile (about 370
// syscalls) with a one-rule tightening of it: a KILL_PROCESS rule for
// getpid. The budget is 100 us per comparison.
func BenchmarkCompareDockerDefault(b *testing.B) {
	orig := mobyDefault(b)
	adj := orig.Clone()
	adj.Syscalls = append(adj.Syscalls, Rule{Names: []string{"getpid"}, Action: Action{Kind: ActKillProcess}})
	if res := mustCompare(b, orig, adj); !res.Tighter() {
		b.Fatalf("the tightening is not tighter:\n%s", res)
	}
	benchCompare(b, orig, adj)
}

func benchCompare(b *testing.B, orig, adj *Profile) {
	names := 0
	for _, r := range orig.Syscalls {
		names += len(r.Names)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compare(orig, adj); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(names), "syscalls")
}

// BenchmarkCompareDockerDefaultNewDefault changes the default action, so
// that every syscall name has to be compared.
func BenchmarkCompareDockerDefaultNewDefault(b *testing.B) {
	orig := mobyDefault(b)
	adj := orig.Clone()
	adj.DefaultAction = Action{Kind: ActKillProcess}
	if res := mustCompare(b, orig, adj); !res.Tighter() {
		b.Fatalf("the tightening is not tighter:\n%s", res)
	}
	benchCompare(b, orig, adj)
}

// BenchmarkCompareDockerDefaultArgs tightens an argument-conditioned rule
// instead, so that Compare has to enumerate argument regions.
func BenchmarkCompareDockerDefaultArgs(b *testing.B) {
	orig := mobyDefault(b)
	adj := orig.Clone()
	for i, r := range adj.Syscalls {
		if len(r.Names) == 1 && r.Names[0] == "personality" {
			adj.Syscalls = append(adj.Syscalls[:i], adj.Syscalls[i+1:]...)
			break
		}
	}
	if res := mustCompare(b, orig, adj); !res.Tighter() {
		b.Fatalf("the tightening is not tighter:\n%s", res)
	}
	benchCompare(b, orig, adj)
}
