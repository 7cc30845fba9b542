package unix

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/trustgate/trustgate/agent/attestor"
)

func has(sel []attestor.Selector, v string) bool {
	return slices.Contains(sel, attestor.Selector{Type: "unix", Value: v})
}

func TestAttestSelf(t *testing.T) {
	sel, err := New(Config{}).Attest(context.Background(), int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	uid := strconv.Itoa(os.Geteuid())
	if !has(sel, "uid:"+uid) || !has(sel, "gid:"+strconv.Itoa(os.Getegid())) {
		t.Fatalf("selectors %v", sel)
	}
	if u, err := user.LookupId(uid); err == nil && !has(sel, "user:"+u.Username) {
		t.Fatalf("no user:%s in %v", u.Username, sel)
	}
	for _, s := range sel {
		if strings.HasPrefix(s.Value, "path:") || strings.HasPrefix(s.Value, "sha256:") {
			t.Fatalf("path selectors without discover_workload_path: %v", sel)
		}
	}
}

func TestAttestWorkloadPath(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	a := New(Config{DiscoverWorkloadPath: true})
	for range 2 { // the second call is served from the hash cache
		sel, err := a.Attest(context.Background(), int32(os.Getpid()))
		if err != nil {
			t.Fatal(err)
		}
		if !has(sel, "path:"+exe) || !has(sel, "sha256:"+hex.EncodeToString(sum[:])) {
			t.Fatalf("selectors %v, want path %s", sel, exe)
		}
	}
	if _, err := New(Config{DiscoverWorkloadPath: true, WorkloadSizeLimit: 1024}).Attest(context.Background(), int32(os.Getpid())); err == nil {
		t.Fatal("a binary over workload_size_limit was hashed")
	}
	sel, err := New(Config{DiscoverWorkloadPath: true, WorkloadSizeLimit: -1}).Attest(context.Background(), int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if !has(sel, "path:"+exe) || slices.ContainsFunc(sel, func(s attestor.Selector) bool { return strings.HasPrefix(s.Value, "sha256:") }) {
		t.Fatalf("negative limit: %v", sel)
	}
}

// TestAttestOtherUser: a process started as nobody with a supplementary
// group gets that process's selectors, not ours.
func TestAttestOtherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{100}}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sel, err := New(Config{}).Attest(context.Background(), int32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"uid:65534", "gid:65534", "supplementary_gid:100"} {
		if !has(sel, want) {
			t.Errorf("no %s in %v", want, sel)
		}
	}
	if u, err := user.LookupId("65534"); err == nil && !has(sel, "user:"+u.Username) {
		t.Errorf("no user:%s in %v", u.Username, sel)
	}
	if g, err := user.LookupGroupId("100"); err == nil && !has(sel, "supplementary_group:"+g.Name) {
		t.Errorf("no supplementary_group:%s in %v", g.Name, sel)
	}
	if has(sel, "uid:0") {
		t.Errorf("root's selector in %v", sel)
	}
}

func TestAttestGoneProcess(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{}).Attest(context.Background(), int32(cmd.Process.Pid)); err == nil {
		t.Fatal("attested a reaped process")
	}
	if _, err := New(Config{}).Attest(context.Background(), 0); err == nil {
		t.Fatal("attested pid 0")
	}
}

func TestParseStatus(t *testing.T) {
	st, err := ParseStatus([]byte("Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t9 10 \n"))
	if err != nil {
		t.Fatal(err)
	}
	if st.UID != 2 || st.GID != 6 || !slices.Equal(st.Groups, []uint32{9, 10}) {
		t.Fatalf("%+v: want effective ids 2/6 and groups 9,10", st)
	}
	for _, bad := range []string{"", "Uid:\t1\n", "Uid:\t1\t2\nGid:\tx\ty\n", "Uid:\t1\t2\nGid:\t1\t2\nGroups:\tq\n", "Uid:\t1\t99999999999\nGid:\t1\t2\n"} {
		if _, err := ParseStatus([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func FuzzParseStatus(f *testing.F) {
	if raw, err := os.ReadFile("/proc/self/status"); err == nil {
		f.Add(raw)
	}
	f.Add([]byte("Uid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t9 10\n"))
	f.Add([]byte("Uid:\nGid:\t\t\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		st, err := ParseStatus(raw)
		if err != nil {
			return
		}
		if _, err := ParseStatus(raw); err != nil {
			t.Fatal("not deterministic")
		}
		_ = st
	})
}

func BenchmarkAttest(b *testing.B) {
	for _, c := range []struct {
		name string
		cfg  Config
	}{{"ids", Config{}}, {"path+sha256", Config{DiscoverWorkloadPath: true}}} {
		b.Run(c.name, func(b *testing.B) {
			a := New(c.cfg)
			pid := int32(os.Getpid())
			for b.Loop() {
				if _, err := a.Attest(context.Background(), pid); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
