package config

import (
	"fmt"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// DurationError is a duration value that does not parse, such as an
// integer without a unit.
type DurationError struct {
	// Value is the text that was given.
	Value string
	// Err is the parse error.
	Err error
}

// Error implements error.
func (e *DurationError) Error() string {
	return fmt.Sprintf("%q is not a duration: want a number with a unit, such as \"30s\" or \"5m\" (%v)", e.Value, e.Err)
}

// Unwrap returns the parse error.
func (e *DurationError) Unwrap() error { return e.Err }

// keyAt is one key-value of a TOML document and its line.
type keyAt struct {
	key  string
	line int
}

// locateValue finds the key-values of data whose value is text (a bare
// scalar such as 300, or a string whose content is text), so that a value
// refused after decoding can be reported with its key and line.
func locateValue(data []byte, text string) []keyAt {
	var p unstable.Parser
	p.Reset(data)
	var table []string
	var out []keyAt
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = keyParts(e.Key())
		case unstable.KeyValue:
			v := e.Value()
			if v == nil || string(v.Data) != text {
				continue
			}
			key := append(append([]string{}, table...), keyParts(e.Key())...)
			line := 0
			if v.Raw.Length > 0 {
				line = p.Shape(v.Raw).Start.Line
			} else if len(v.Data) > 0 {
				line = lineOf(data, v.Data)
			}
			out = append(out, keyAt{key: strings.Join(key, "."), line: line})
		}
	}
	return out
}

func keyParts(it unstable.Iterator) []string {
	var out []string
	for it.Next() {
		out = append(out, string(it.Node().Data))
	}
	return out
}

// lineOf returns the 1-based line of sub, a subslice of data, or 0.
func lineOf(data, sub []byte) int {
	off := cap(data) - cap(sub)
	if off < 0 || off > len(data) {
		return 0
	}
	return strings.Count(string(data[:off]), "\n") + 1
}
