// Package doctest finds the fenced code blocks of the project's Markdown
// documents (README.md, docs/*.md, examples/*/README.md) and the marker
// that says how the tests check each one.
//
// Every fenced block must be preceded, on the line directly above its
// opening fence, by an HTML comment
//
//	<!-- doctest: KIND key=value key="value with spaces" ... -->
//
// An unmarked block is an error, so a new example is checked or explicitly
// excused. The kinds are:
//
//   - run: a sh block that the test runs with bash against a real
//     `trustgate server --dev`; attribute expect=REGEXP must match the
//     block's standard output, and needs="tool ..." names the commands it
//     needs beyond bash, curl and openssl (the document's run blocks are
//     skipped where one is missing). The run blocks of one document run in
//     order in one bash process (set -euo pipefail), in a fresh directory,
//     with TRUSTGATE_ADMIN_TOKEN set to the dev server's admin token and
//     the built trustgate first in PATH; the text 127.0.0.1:8080 becomes
//     the dev server's address and `go run ./cmd/trustgate` becomes
//     `trustgate`. setup=NAME runs testdata/NAME.sh first, in the same
//     shell: setup=attest attests with the sample TEE and sets TOKEN.
//   - config: a toml block decoded strictly into the configuration type
//     named by type= (broker, nri-gateway); validate=true also validates
//     the result, on top of the embedded defaults.
//   - input: a json block that is a policy input document, named by name=.
//   - rego: a policy compiled with the policy package and evaluated against
//     the named inputs of the same document: each attribute INPUT=allow,
//     INPUT=deny or INPUT=grant:a,b states the expected decision;
//     save=FILE writes the policy into the directory the run blocks use.
//   - file: the block is the content of the repository file path=, verbatim;
//     with type= (and validate=true) it is also checked as a config block.
//   - skip: checked by nothing; reason= says why.
package doctest

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

// Block is one fenced code block of a Markdown document.
type Block struct {
	// File is the document's path, as given to Parse.
	File string
	// Line is the 1-based line of the opening fence.
	Line int
	// Lang is the first word of the fence's info string ("sh", "toml").
	Lang string
	// Kind is the marker's kind ("run", "config", ...).
	Kind string
	// Attrs are the marker's key=value attributes.
	Attrs map[string]string
	// Text is the block's content, each line ending in a newline, with the
	// fence's indentation removed.
	Text string
}

// Where names the block for error messages: file:line.
func (b Block) Where() string { return fmt.Sprintf("%s:%d", b.File, b.Line) }

// Kinds are the marker kinds Parse accepts.
var Kinds = map[string]bool{"run": true, "config": true, "input": true, "rego": true, "file": true, "skip": true}

var (
	markerRE = regexp.MustCompile(`^\s*<!--\s*doctest:\s*(.*?)\s*-->\s*$`)
	attrRE   = regexp.MustCompile(`^([A-Za-z0-9_.-]+)=("((?:[^"\\]|\\.)*)"|[^"\s]\S*)`)
)

// Parse returns the fenced blocks of a Markdown document. It fails on a
// block without a marker, a malformed marker, an unknown kind, or a fence
// that is never closed.
func Parse(file string, data []byte) ([]Block, error) {
	var (
		blocks []Block
		prev   string
		cur    *Block
		indent string
		fence  string
		body   strings.Builder
		n      int
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimLeft(line, " ")
		if cur != nil {
			if strings.HasPrefix(trimmed, fence) && strings.TrimSpace(strings.TrimPrefix(trimmed, fence)) == "" {
				cur.Text = body.String()
				blocks = append(blocks, *cur)
				cur = nil
				prev = line
				continue
			}
			body.WriteString(strings.TrimPrefix(line, indent))
			body.WriteByte('\n')
			continue
		}
		if strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~") {
			indent = line[:len(line)-len(trimmed)]
			fence = trimmed[:3]
			for len(fence) < len(trimmed) && trimmed[len(fence)] == fence[0] {
				fence += fence[:1]
			}
			info := strings.Fields(trimmed[len(fence):])
			b := Block{File: file, Line: n}
			if len(info) > 0 {
				b.Lang = info[0]
			}
			m := markerRE.FindStringSubmatch(prev)
			if m == nil {
				return nil, fmt.Errorf("%s: fenced block without a marker: put <!-- doctest: KIND ... --> on the line above (kinds: run, config, input, rego, file, skip)", b.Where())
			}
			var err error
			if b.Kind, b.Attrs, err = parseMarker(m[1]); err != nil {
				return nil, fmt.Errorf("%s: %w", b.Where(), err)
			}
			cur = &b
			body.Reset()
		}
		prev = line
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if cur != nil {
		return nil, fmt.Errorf("%s: fenced block is never closed", cur.Where())
	}
	return blocks, nil
}

// parseMarker splits a marker's text into its kind and attributes.
func parseMarker(s string) (string, map[string]string, error) {
	kind, rest, _ := strings.Cut(s, " ")
	if !Kinds[kind] {
		return "", nil, fmt.Errorf("doctest marker: unknown kind %q (want run, config, input, rego, file or skip)", kind)
	}
	attrs := map[string]string{}
	rest = strings.TrimSpace(rest)
	for rest != "" {
		m := attrRE.FindStringSubmatch(rest)
		if m == nil {
			return "", nil, fmt.Errorf("doctest marker: cannot parse %q: want key=value or key=\"value\"", rest)
		}
		v := m[2]
		if strings.HasPrefix(v, `"`) {
			v = strings.NewReplacer(`\"`, `"`, `\\`, `\`).Replace(m[3])
		}
		if _, dup := attrs[m[1]]; dup {
			return "", nil, fmt.Errorf("doctest marker: attribute %q given twice", m[1])
		}
		attrs[m[1]] = v
		rest = strings.TrimSpace(rest[len(m[0]):])
	}
	if kind == "skip" && attrs["reason"] == "" {
		return "", nil, fmt.Errorf("doctest marker: skip needs reason=\"...\"")
	}
	return kind, attrs, nil
}
