package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/config"
)

type durDoc struct {
	Name    string `toml:"name"`
	Session struct {
		TTL   config.Duration `toml:"ttl"`
		Sweep config.Duration `toml:"sweep"`
	} `toml:"session"`
}

// A duration without a unit is reported with its key and line, and with
// the spelling that fixes it.
func TestDurationWithoutUnitNamesKeyAndLine(t *testing.T) {
	doc := "name = \"x\"\n\n[session]\nsweep = \"1m\"\nttl = 300\n"
	var d durDoc
	err := config.Decode([]byte(doc), &d)
	if err == nil {
		t.Fatal("ttl = 300 decoded")
	}
	for _, want := range []string{`line 5`, `"session.ttl"`, `session.ttl = "300s"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

// A quoted duration without a unit is located the same way.
func TestDurationStringWithoutUnit(t *testing.T) {
	doc := "[session]\nttl = \"5\"\n"
	var d durDoc
	err := config.Decode([]byte(doc), &d)
	if err == nil || !strings.Contains(err.Error(), `line 2`) || !strings.Contains(err.Error(), `key "session.ttl"`) {
		t.Fatalf("error = %v, want line 2 and key session.ttl", err)
	}
}

// FuzzDecodeDurations: decoding any document into a type with durations
// never panics, and a refused duration always says what a duration is.
func FuzzDecodeDurations(f *testing.F) {
	for _, s := range []string{
		"[session]\nttl = 300\n",
		"[session]\nttl = \"5\"\nsweep = 5\n",
		"name = 300\n[session]\nttl = 300\n",
		"[session]\nttl = 1.5\n",
		"[[session]]\nttl = 3\n",
		"a.b.c = 1\n[session]\nttl = \"1h\"\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var d durDoc
		err := config.Decode(data, &d)
		var de *config.DurationError
		if errors.As(err, &de) && !strings.Contains(err.Error(), "not a duration") {
			t.Fatalf("duration error without its explanation: %v", err)
		}
	})
}
