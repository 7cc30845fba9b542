package workloadapi

import (
	"os"
	"strconv"
	"testing"
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
