// Package config loads trustgate's TOML configuration files.
//
// Every component (server, agent, nri-gateway) owns its configuration type;
// this package only supplies the strict decoder they share. Decoding is
// strict: a key that the target type does not declare is an error naming the
// key and its line, so a typo never silently falls back to a default.
// After decoding, the value's Validate method runs, and every problem it
// reports is returned together.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	toml "github.com/pelletier/go-toml/v2"
)

// Validator is implemented by configuration types. Validate reports every
// problem at once, each saying what is wrong and how to fix it; a Problems
// value is the natural return type.
type Validator interface {
	Validate() error
}

// LoadFile reads the TOML file at path into v, strictly, then validates v.
// Fields of v that the file leaves out keep the values they had, so callers
// fill v with defaults before calling.
func LoadFile(path string, v Validator) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if err := Decode(data, v); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if err := v.Validate(); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// Decode strictly decodes TOML data into v. Unknown keys and type mismatches
// are reported with their line numbers.
func Decode(data []byte, v any) error {
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		return nil
	}
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var p Problems
		for _, e := range strict.Errors {
			row, _ := e.Position()
			p.Addf("line %d: unknown key %q (check its spelling, or remove it)", row, strings.Join(e.Key(), "."))
		}
		return p.Err()
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		key := strings.Join(de.Key(), ".")
		if key != "" {
			return fmt.Errorf("line %d, column %d: key %q: %s", row, col, key, de.Error())
		}
		return fmt.Errorf("line %d, column %d: %s", row, col, de.Error())
	}
	var dur *DurationError
	if errors.As(err, &dur) {
		at := locateValue(data, dur.Value)
		if len(at) == 1 {
			hint := ""
			if _, err := strconv.ParseFloat(dur.Value, 64); err == nil {
				hint = fmt.Sprintf(`; for seconds write %s = "%ss"`, at[0].key, dur.Value)
			}
			return fmt.Errorf("line %d: key %q: %w%s", at[0].line, at[0].key, dur, hint)
		}
		var keys []string
		for _, a := range at {
			keys = append(keys, fmt.Sprintf("%q (line %d)", a.key, a.line))
		}
		if len(keys) > 0 {
			return fmt.Errorf("one of the keys %s: %w", strings.Join(keys, ", "), dur)
		}
		return fmt.Errorf("decode TOML: %w", err)
	}
	return fmt.Errorf("decode TOML: %w", err)
}

// Problems collects validation failures so that an operator sees all of them
// at once instead of fixing one per restart.
type Problems []string

// Addf records one problem.
func (p *Problems) Addf(format string, args ...any) {
	*p = append(*p, fmt.Sprintf(format, args...))
}

// Err returns nil when no problem was recorded, and an error listing every
// problem otherwise.
func (p Problems) Err() error {
	if len(p) == 0 {
		return nil
	}
	return p
}

// ProblemsOf splits a validation error into its problems, so that a
// configuration can report the problems of its parts among its own.
func ProblemsOf(err error) Problems {
	if err == nil {
		return nil
	}
	var ps Problems
	if errors.As(err, &ps) {
		return ps
	}
	return Problems{err.Error()}
}

// Error implements error.
func (p Problems) Error() string {
	if len(p) == 1 {
		return p[0]
	}
	return fmt.Sprintf("%d problems:\n  - %s", len(p), strings.Join(p, "\n  - "))
}

// Duration is a time.Duration written in TOML as a string such as "90s" or
// "5m".
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return &DurationError{Value: string(b), Err: err}
	}
	d.Duration = v
	return nil
}

// MarshalText formats the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }
