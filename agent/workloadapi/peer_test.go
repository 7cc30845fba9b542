package workloadapi

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseStartTime(t *testing.T) {
	// comm may hold spaces and parentheses: fields count from the last ')'.
	line := "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10"
	st, err := ParseStartTime([]byte(line))
	if err != nil || st != "98765" {
		t.Fatalf("%q %v, want 98765", st, err)
	}
	for _, bad := range []string{"", "42 (x S 1", "42 (x) S 1 2 3", "42 (x) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 nan 1"} {
		if _, err := ParseStartTime([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	raw, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skip(err)
	}
	if _, err := ParseStartTime(raw); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseStartTime(f *testing.F) {
	if raw, err := os.ReadFile("/proc/self/stat"); err == nil {
		f.Add(raw)
	}
	f.Add([]byte("1 ((x) )) R 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 7 0 0"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		st, err := ParseStartTime(raw)
		if err != nil {
			return
		}
		if _, err := strconv.ParseUint(st, 10, 64); err != nil {
			t.Fatalf("returned a non-number %q", st)
		}
	})
}

// TestAliveFallback: without a kernel-given pidfd, Alive compares the
// start time, so a PID now naming another process is refused.
func TestAliveFallback(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := int32(cmd.Process.Pid)
	st, err := readStartTime("/proc", pid)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.PidfdOpen(int(pid), 0)
	if err != nil {
		t.Fatal(err)
	}
	same := &Caller{PID: pid, procRoot: "/proc", startTime: st, pidfd: fd}
	defer same.close()
	if err := same.Alive(); err != nil {
		t.Fatalf("live caller: %v", err)
	}
	// The same PID with another start time is another process.
	other := &Caller{PID: pid, procRoot: "/proc", startTime: st + "0", pidfd: -1}
	if err := other.Alive(); !errors.Is(err, ErrCallerGone) {
		t.Fatalf("reused PID: %v", err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err := same.Alive(); !errors.Is(err, ErrCallerGone) {
		t.Fatalf("reaped caller: %v", err)
	}
	exact := &Caller{PID: pid, procRoot: "/proc", startTime: st, pidfd: fd, exact: true}
	if err := exact.Alive(); !errors.Is(err, ErrCallerGone) {
		t.Fatalf("reaped caller with a kernel pidfd: %v", err)
	}
}
