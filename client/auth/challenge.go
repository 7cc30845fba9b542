package auth

import (
	"errors"
	"fmt"
	"strings"
)

// Challenge is one authentication challenge of a WWW-Authenticate header
// (RFC 7235, section 4.1).
type Challenge struct {
	// Scheme is the auth-scheme, lower-cased ("bearer", "basic").
	Scheme string
	// Token68 is the token68 form of the challenge, if it used one.
	Token68 string
	// Params holds the auth-params; names are lower-cased, values unquoted.
	Params map[string]string
}

// ErrInvalidChallenge reports a WWW-Authenticate value that does not follow
// RFC 7235.
var ErrInvalidChallenge = errors.New("invalid WWW-Authenticate challenge")

// maxChallengeLen bounds the input ParseChallenges accepts.
const maxChallengeLen = 16 << 10

// ParseChallenges parses one or more WWW-Authenticate header values. Each
// value may carry several comma-separated challenges; quoted strings may hold
// commas and backslash escapes; schemes and parameter names are matched
// case-insensitively.
func ParseChallenges(values ...string) ([]Challenge, error) {
	var out []Challenge
	total := 0
	for _, v := range values {
		total += len(v)
		if total > maxChallengeLen {
			return nil, fmt.Errorf("%w: longer than %d bytes", ErrInvalidChallenge, maxChallengeLen)
		}
		cs, err := parseChallengeList(v)
		if err != nil {
			return nil, err
		}
		out = append(out, cs...)
	}
	return out, nil
}

type lexer struct {
	s   string
	pos int
}

func (l *lexer) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: at offset %d: %s", ErrInvalidChallenge, l.pos, fmt.Sprintf(format, args...))
}

func (l *lexer) eof() bool { return l.pos >= len(l.s) }

func (l *lexer) skipOWS() {
	for l.pos < len(l.s) && (l.s[l.pos] == ' ' || l.s[l.pos] == '\t') {
		l.pos++
	}
}

// skipListSeparators skips OWS and commas (empty list elements are allowed).
func (l *lexer) skipListSeparators() {
	for l.pos < len(l.s) && (l.s[l.pos] == ' ' || l.s[l.pos] == '\t' || l.s[l.pos] == ',') {
		l.pos++
	}
}

func (l *lexer) token() string {
	start := l.pos
	for l.pos < len(l.s) && isTChar(l.s[l.pos]) {
		l.pos++
	}
	return l.s[start:l.pos]
}

func parseChallengeList(v string) ([]Challenge, error) {
	l := &lexer{s: v}
	var out []Challenge
	for {
		l.skipListSeparators()
		if l.eof() {
			return out, nil
		}
		scheme := l.token()
		if scheme == "" {
			return nil, l.errorf("expected auth-scheme, found %q", l.s[l.pos])
		}
		c := Challenge{Scheme: strings.ToLower(scheme), Params: map[string]string{}}
		if l.eof() || l.s[l.pos] == ',' {
			out = append(out, c)
			continue
		}
		if l.s[l.pos] != ' ' && l.s[l.pos] != '\t' {
			return nil, l.errorf("expected space after auth-scheme %q", scheme)
		}
		l.skipOWS()
		if t, ok := l.token68(); ok {
			c.Token68 = t
			out = append(out, c)
			continue
		}
		if err := l.params(&c); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// token68 reads a token68 if one stands alone before the next comma or the
// end; otherwise it leaves the position unchanged.
func (l *lexer) token68() (string, bool) {
	start := l.pos
	i := l.pos
	for i < len(l.s) && isToken68Char(l.s[i]) {
		i++
	}
	if i == start {
		return "", false
	}
	for i < len(l.s) && l.s[i] == '=' {
		i++
	}
	j := i
	for j < len(l.s) && (l.s[j] == ' ' || l.s[j] == '\t') {
		j++
	}
	if j < len(l.s) && l.s[j] != ',' {
		return "", false
	}
	l.pos = j
	return l.s[start:i], true
}

// params reads auth-params until the end or the start of the next challenge.
func (l *lexer) params(c *Challenge) error {
	for first := true; ; first = false {
		mark := l.pos
		l.skipListSeparators()
		if l.eof() {
			return nil
		}
		name := l.token()
		if name == "" {
			return l.errorf("expected auth-param, found %q", l.s[l.pos])
		}
		l.skipOWS()
		if l.eof() || l.s[l.pos] != '=' {
			if first {
				return l.errorf("expected '=' after parameter %q", name)
			}
			// A token not followed by '=' starts the next challenge.
			l.pos = mark
			return nil
		}
		l.pos++
		l.skipOWS()
		var val string
		if !l.eof() && l.s[l.pos] == '"' {
			var err error
			if val, err = l.quoted(); err != nil {
				return err
			}
		} else if val = l.token(); val == "" {
			return l.errorf("expected value for parameter %q", name)
		}
		key := strings.ToLower(name)
		if _, dup := c.Params[key]; dup {
			return l.errorf("parameter %q repeated", key)
		}
		c.Params[key] = val
		l.skipOWS()
		if !l.eof() && l.s[l.pos] != ',' {
			return l.errorf("expected ',' after parameter %q", name)
		}
	}
}

// quoted reads a quoted-string and returns its unescaped content.
func (l *lexer) quoted() (string, error) {
	l.pos++ // opening quote
	var b strings.Builder
	for l.pos < len(l.s) {
		ch := l.s[l.pos]
		switch {
		case ch == '"':
			l.pos++
			return b.String(), nil
		case ch == '\\':
			if l.pos+1 >= len(l.s) {
				return "", l.errorf("unterminated escape")
			}
			e := l.s[l.pos+1]
			if !isQuotedPairChar(e) {
				return "", l.errorf("bad escaped byte 0x%02x", e)
			}
			b.WriteByte(e)
			l.pos += 2
		case ch == '\t' || ch == ' ' || ch >= 0x21 && ch != 0x7f:
			b.WriteByte(ch)
			l.pos++
		default:
			return "", l.errorf("control byte 0x%02x in quoted string", ch)
		}
	}
	return "", l.errorf("unterminated quoted string")
}

// isTChar reports whether c is an RFC 7230 tchar.
func isTChar(c byte) bool {
	if isAlnum(c) {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isToken68Char(c byte) bool {
	return isAlnum(c) || strings.IndexByte("-._~+/", c) >= 0
}

func isQuotedPairChar(c byte) bool {
	return c == '\t' || c == ' ' || c >= 0x21 && c != 0x7f
}
