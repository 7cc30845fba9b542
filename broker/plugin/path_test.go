package plugin_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/broker/plugin"
)

// segmentRE is the rule, as a regular expression, to cross-check
// the hand-written validator.
var segmentRE = regexp.MustCompile(`^[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-.]*$`)

func TestSplitPath(t *testing.T) {
	name, rest, err := plugin.SplitPath("resource/default/key/1.0")
	if err != nil || name != "resource" || strings.Join(rest, "|") != "default|key|1.0" {
		t.Fatalf("%q %q %v", name, rest, err)
	}
	if name, rest, err = plugin.SplitPath("resource"); err != nil || name != "resource" || len(rest) != 0 {
		t.Fatalf("%q %q %v", name, rest, err)
	}
	for _, bad := range []string{"", "/", "a/", "/a", "a//b", "a/../b", "a/./b", "..", "a/%2F", "a/b%2fc", "a/b c", "a/é", ".a", strings.Repeat("a/", 32) + "a"} {
		if _, _, err := plugin.SplitPath(bad); err == nil {
			t.Errorf("SplitPath(%q) accepted", bad)
		}
	}
}

// FuzzSplitPath checks the validator against the regular expression and
// that SplitPath's segments rejoin to its input.
func FuzzSplitPath(f *testing.F) {
	for _, s := range []string{"resource/default/key/1", "a/../b", "a%2Fb", "x/.y", "-/_/a.b", "a//b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		name, rest, err := plugin.SplitPath(p)
		segs := strings.Split(p, "/")
		want := len(segs) <= plugin.MaxSegments
		for _, s := range segs {
			if !segmentRE.MatchString(s) || len(s) > plugin.MaxSegmentLen {
				want = false
			}
		}
		if (err == nil) != want {
			t.Fatalf("SplitPath(%q) err = %v, regexp says valid = %v", p, err, want)
		}
		if err == nil && strings.Join(append([]string{name}, rest...), "/") != p {
			t.Fatalf("SplitPath(%q) = %q %q", p, name, rest)
		}
	})
}
