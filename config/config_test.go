package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type sample struct {
	Listen string `toml:"listen"`
	Store  struct {
		Path string `toml:"path"`
	} `toml:"store"`
	Timeout int `toml:"timeout_seconds"`
}

func (s *sample) Validate() error {
	var p Problems
	if s.Listen == "" {
		p.Addf("listen is empty: set it to a host:port such as 127.0.0.1:8080")
	}
	if s.Timeout <= 0 {
		p.Addf("timeout_seconds is %d: it must be positive", s.Timeout)
	}
	return p.Err()
}

func TestDecodeUnknownKeyNamesKeyAndLine(t *testing.T) {
	data := []byte("listen = \"x\"\n\n[store]\npaht = \"/tmp/db\"\n")
	var s sample
	err := Decode(data, &s)
	if err == nil {
		t.Fatal("unknown key accepted")
	}
	msg := err.Error()
	if !strings.Contains(msg, `"store.paht"`) || !strings.Contains(msg, "line 4") {
		t.Fatalf("error %q does not name the key and line", msg)
	}
}

func TestDecodeTypeMismatchHasLine(t *testing.T) {
	var s sample
	err := Decode([]byte("listen = \"x\"\ntimeout_seconds = \"ten\"\n"), &s)
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("want a line-2 error, got %v", err)
	}
}

func TestLoadFileValidatesAndReportsAll(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(path, []byte("listen = \"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := sample{}
	err := LoadFile(path, &s)
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	if !strings.Contains(err.Error(), "2 problems") || !strings.Contains(err.Error(), "timeout_seconds") {
		t.Fatalf("want both problems, got %v", err)
	}
}

func TestLoadFileKeepsDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(path, []byte("listen = \"127.0.0.1:1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := sample{Timeout: 7}
	if err := LoadFile(path, &s); err != nil {
		t.Fatal(err)
	}
	if s.Timeout != 7 || s.Listen != "127.0.0.1:1" {
		t.Fatalf("got %+v", s)
	}
}

func TestLoadFileMissing(t *testing.T) {
	var s sample
	if err := LoadFile(filepath.Join(t.TempDir(), "none.toml"), &s); err == nil {
		t.Fatal("missing file accepted")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("listen = \"a\"\n[store]\npath = \"b\"\n"))
	f.Add([]byte("[[x]]\ny=1"))
	f.Add([]byte("listen = \"\\u00\""))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s sample
		_ = Decode(data, &s) // must not panic
	})
}

func TestProblemsOf(t *testing.T) {
	if ProblemsOf(nil) != nil {
		t.Fatal("nil error has problems")
	}
	var p Problems
	p.Addf("a")
	p.Addf("b")
	if got := ProblemsOf(fmt.Errorf("wrapped: %w", p.Err())); len(got) != 2 || got[1] != "b" {
		t.Fatalf("got %v", got)
	}
	if got := ProblemsOf(errors.New("plain")); len(got) != 1 || got[0] != "plain" {
		t.Fatalf("got %v", got)
	}
}
