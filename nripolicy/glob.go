package nripolicy

import (
	"fmt"
	"path"
	"slices"
	"strings"
)

// Globs is a list of patterns in path.Match syntax. A pattern ending in
// "/**" also matches everything below its directory, and "*" alone matches
// any value.
type Globs []string

// validate reports the first malformed pattern.
func (g Globs) validate() error {
	for _, p := range g {
		if p == "" {
			return fmt.Errorf("empty pattern")
		}
		if _, err := path.Match(strings.TrimSuffix(p, "/**"), ""); err != nil {
			return fmt.Errorf("pattern %q: %w", p, err)
		}
	}
	return nil
}

// Match reports whether v matches any pattern.
func (g Globs) Match(v string) bool {
	for _, p := range g {
		if p == "*" {
			return true
		}
		if dir, ok := strings.CutSuffix(p, "/**"); ok {
			if v == dir || strings.HasPrefix(v, dir+"/") {
				return true
			}
			if m, _ := path.Match(dir, v); m {
				return true
			}
			continue
		}
		if m, _ := path.Match(p, v); m {
			return true
		}
	}
	return false
}

// matchPath matches a filesystem path after cleaning it, so that ".."
// cannot walk out of an allowed directory. Relative paths never match.
func (g Globs) matchPath(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	return g.Match(path.Clean(p))
}

// matchesEveryPath reports whether g matches every absolute path.
func (g Globs) matchesEveryPath() bool {
	return slices.Contains(g, "*") || slices.Contains(g, "/**")
}
