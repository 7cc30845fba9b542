package plugin

import "fmt"

// Limits on a plugin path.
const (
	// MaxSegments bounds the segments after /kbs/v0/, the plugin name
	// included.
	MaxSegments = 32
	// MaxSegmentLen bounds one segment.
	MaxSegmentLen = 255
)

// ValidSegment reports whether s is a valid path segment: one or more of
// [a-zA-Z0-9_-] followed by any of [a-zA-Z0-9_.-], so "." and ".." and
// anything percent-encoded never are, and at most MaxSegmentLen bytes.
func ValidSegment(s string) bool {
	if len(s) == 0 || len(s) > MaxSegmentLen || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// SplitPath splits the escaped path after /kbs/v0/ into the plugin name and
// the segments after it, validating each. It works on the escaped form, so
// an encoded slash (%2F) is an invalid segment, never a separator.
func SplitPath(escaped string) (name string, rest []string, err error) {
	n := 1
	for i := 0; i < len(escaped); i++ {
		if escaped[i] == '/' {
			n++
		}
	}
	if n > MaxSegments {
		return "", nil, fmt.Errorf("path has %d segments, at most %d are allowed", n, MaxSegments)
	}
	segs := make([]string, 0, n)
	start := 0
	for i := 0; i <= len(escaped); i++ {
		if i < len(escaped) && escaped[i] != '/' {
			continue
		}
		seg := escaped[start:i]
		if !ValidSegment(seg) {
			return "", nil, fmt.Errorf("path segment %d (%.40q) is invalid: want [a-zA-Z0-9_-] then [a-zA-Z0-9_.-], at most %d bytes", len(segs)+1, seg, MaxSegmentLen)
		}
		segs = append(segs, seg)
		start = i + 1
	}
	return segs[0], segs[1:], nil
}
