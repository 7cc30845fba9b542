// Package policy decides, with an OPA rego policy, whether an attested
// caller may make a request to a broker plugin.
//
// The policy is one rego module in package "policy". Its rule
// data.policy.allow must be exactly true for a request to pass; anything
// else (undefined, false, another value, an evaluation error) denies. An
// optional data.policy.reason, of any type, is recorded in the audit log
// beside the verdict. For the broker's token service, the optional rule
// data.policy.grant (a set or array of action strings) names the actions
// granted on input.scope; "*" grants every requested action. The input
// document is described by Input.
//
// An Engine holds the compiled policy as a prepared query, so that
// evaluation does no parsing or compilation. Set compiles a new text before
// it stores it, so that a policy that does not compile is refused with its
// line and column and the one in force stays. The text lives in the store
// (store.Policies), so replicas sharing a database converge on it through
// Refresh.
package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/trustgate/trustgate/store"
)

// Name is the store.Policies name of the resource policy.
const Name = "resource-policy"

// DenyAll is the policy in force until an administrator sets one.
const DenyAll = `package policy

# Nothing is allowed until an administrator sets a policy:
#   POST /kbs/v0/resource-policy {"policy": "<base64url of the rego text>"}
default allow := false
`

// DevRegistry is the registry service that SampleDev grants pull and push
// on; `trustgate server --dev` lists it in token_service.services.
const DevRegistry = "registry.dev.local"

// SampleDev is the policy of development brokers (trustgate server --dev):
// callers attested by the sample TEE, which no hardware backs, may do
// everything the docs show, and nothing is granted to anyone else.
const SampleDev = `package policy

# trustgate server --dev: the sample TEE, which no hardware backs, may use
# every plugin the docs show. Never use this policy in production.
default allow := false

sample if input.claims.tee == "sample"

# KBS resources: read them (admins write them).
allow if {
	sample
	input.plugin == "resource"
	input.method == "GET"
}

# Nebula certificates (GET ca, POST credential) and SPIFFE SVIDs.
allow if {
	sample
	input.plugin in {"nebula-ca", "svid"}
}

# Scoped tokens for the dev registry: pull and push on any repository.
grant contains action if {
	sample
	input.plugin == "token"
	input.service == "` + DevRegistry + `"
	input.scope.type == "repository"
	some action in input.scope.actions
	action in {"pull", "push"}
}

reason := "sample TEE (dev policy)" if allow
`

// decisionModule wraps the administrator's module so that one prepared
// query yields both the verdict and the reason, whether or not the policy
// defines a reason, and so that only a boolean true allows.
const decisionModule = `package trustgate_decision

default allow := false

allow if data.policy.allow == true

default reason := null

reason := data.policy.reason

default grant := null

grant := data.policy.grant
`

const decisionQuery = "x := [data.trustgate_decision.allow, data.trustgate_decision.reason, data.trustgate_decision.grant]"

// denied builtins could make a decision depend on the network or the
// host, or stall it: a policy decides from its input alone.
var denied = []string{"http.send", "net.lookup_ip_addr", "opa.runtime", "trace"}

// CompileError is a policy text that does not compile. Problems carry
// their line and column.
type CompileError struct {
	Problems []Problem
}

// Problem is one compile problem at a line and column of the policy text.
type Problem struct {
	Line    int    `json:"line"`
	Column  int    `json:"column"`
	Message string `json:"message"`
}

func (e *CompileError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = fmt.Sprintf("%d:%d: %s", p.Line, p.Column, p.Message)
	}
	return "policy does not compile: " + strings.Join(parts, "; ")
}

// Prepared is a compiled policy, ready to evaluate. It is safe for
// concurrent use.
type Prepared struct {
	query rego.PreparedEvalQuery
	text  string
}

// Compile parses and compiles a policy text.
func Compile(ctx context.Context, text string) (*Prepared, error) {
	mod, err := ast.ParseModuleWithOpts("policy.rego", text, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		return nil, compileError(err)
	}
	if mod == nil {
		return nil, &CompileError{Problems: []Problem{{Line: 1, Column: 1, Message: "empty policy: want a rego module in package policy"}}}
	}
	if got := mod.Package.Path.String(); got != "data.policy" {
		loc := mod.Package.Location
		return nil, &CompileError{Problems: []Problem{{Line: loc.Row, Column: loc.Col, Message: fmt.Sprintf("package is %s: want \"package policy\"", strings.TrimPrefix(got, "data."))}}}
	}
	caps := ast.CapabilitiesForThisVersion()
	caps.Builtins = slices.DeleteFunc(slices.Clone(caps.Builtins), func(b *ast.Builtin) bool { return slices.Contains(denied, b.Name) })
	q, err := rego.New(
		rego.Query(decisionQuery),
		rego.ParsedModule(mod),
		rego.Module("trustgate_decision.rego", decisionModule),
		rego.Capabilities(caps),
		rego.SetRegoVersion(ast.RegoV1),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, compileError(err)
	}
	return &Prepared{query: q, text: text}, nil
}

func compileError(err error) error {
	var errs ast.Errors
	if errors.As(err, &errs) && len(errs) > 0 {
		ce := &CompileError{}
		for _, e := range errs {
			p := Problem{Message: e.Code + ": " + e.Message}
			if e.Location != nil {
				p.Line, p.Column = e.Location.Row, e.Location.Col
			}
			p.Line, p.Column = max(p.Line, 1), max(p.Column, 1)
			ce.Problems = append(ce.Problems, p)
		}
		return ce
	}
	var one *ast.Error
	if errors.As(err, &one) {
		p := Problem{Message: one.Code + ": " + one.Message}
		if one.Location != nil {
			p.Line, p.Column = one.Location.Row, one.Location.Col
		}
		p.Line, p.Column = max(p.Line, 1), max(p.Column, 1)
		return &CompileError{Problems: []Problem{p}}
	}
	return fmt.Errorf("policy: compile: %w", err)
}

// Decision is the outcome of one evaluation.
type Decision struct {
	// Allow is true only when data.policy.allow is true.
	Allow bool
	// Reason is data.policy.reason: a string as is, any other value as
	// JSON, empty when undefined.
	Reason string
	// Revision is the store revision of the policy that decided (0 for
	// the built-in default).
	Revision int64
	// Grant is data.policy.grant, the actions granted on input.scope by a
	// token service request: its string members, sorted; empty when the
	// rule is undefined or not a set or array.
	Grant []string
}

// Eval evaluates the policy over in.
func (p *Prepared) Eval(ctx context.Context, in *Input) (Decision, error) {
	rs, err := p.query.Eval(ctx, rego.EvalParsedInput(in.value()))
	if err != nil {
		return Decision{}, fmt.Errorf("policy: evaluate: %w", err)
	}
	if len(rs) != 1 {
		return Decision{}, fmt.Errorf("policy: evaluate: %d results, want 1", len(rs))
	}
	pair, ok := rs[0].Bindings["x"].([]any)
	if !ok || len(pair) != 3 {
		return Decision{}, errors.New("policy: evaluate: unexpected result shape")
	}
	var d Decision
	d.Allow, _ = pair[0].(bool)
	switch r := pair[1].(type) {
	case nil:
	case string:
		d.Reason = r
	default:
		b, err := json.Marshal(r)
		if err != nil {
			return Decision{}, fmt.Errorf("policy: reason: %w", err)
		}
		d.Reason = string(b)
	}
	// A rego set or array arrives as a slice; anything else grants nothing.
	if acts, ok := pair[2].([]any); ok {
		for _, a := range acts {
			if s, ok := a.(string); ok {
				d.Grant = append(d.Grant, s)
			}
		}
		slices.Sort(d.Grant)
		d.Grant = slices.Compact(d.Grant)
	}
	return d, nil
}

// Options configure an Engine.
type Options struct {
	// Store holds the policy text under Name.
	Store store.Policies
	// Default is the policy in force while the store holds none (default
	// DenyAll). It is compiled, not stored.
	Default string
	// Log receives policy changes.
	Log *slog.Logger
}

// current is the policy in force.
type current struct {
	prepared *Prepared
	revision int64
}

// Engine holds the policy in force and replaces it on update. It is safe
// for concurrent use.
type Engine struct {
	opts  Options
	cur   atomic.Pointer[current]
	setMu sync.Mutex // serialises Set and Refresh
}

// New loads the stored policy, or compiles opts.Default when there is none.
func New(ctx context.Context, opts Options) (*Engine, error) {
	if opts.Store == nil {
		return nil, errors.New("policy: Options.Store is required")
	}
	if opts.Default == "" {
		opts.Default = DenyAll
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{opts: opts}
	def, err := Compile(ctx, opts.Default)
	if err != nil {
		return nil, fmt.Errorf("policy: default policy: %w", err)
	}
	e.cur.Store(&current{prepared: def})
	if err := e.Refresh(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// Refresh loads the stored policy when its revision differs from the one
// in force, so that a replica picks up another's update. A stored text that
// does not compile (written by an older version, say) is logged and the
// policy in force stays.
func (e *Engine) Refresh(ctx context.Context) error {
	e.setMu.Lock()
	defer e.setMu.Unlock()
	p, err := e.opts.Store.Get(ctx, Name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("policy: load: %w", err)
	}
	if p.Revision == e.cur.Load().revision {
		return nil
	}
	prep, err := Compile(ctx, p.Text)
	if err != nil {
		e.opts.Log.Error("stored resource policy does not compile; keeping the one in force", "revision", p.Revision, "err", err)
		return nil
	}
	e.cur.Store(&current{prepared: prep, revision: p.Revision})
	e.opts.Log.Info("resource policy loaded", "revision", p.Revision)
	return nil
}

// Set compiles text and, if it compiles, stores it and puts it in force at
// once. A text that does not compile returns a *CompileError and changes
// nothing.
func (e *Engine) Set(ctx context.Context, text string) (int64, error) {
	prep, err := Compile(ctx, text)
	if err != nil {
		return 0, err
	}
	e.setMu.Lock()
	defer e.setMu.Unlock()
	p, err := e.opts.Store.Put(ctx, Name, text)
	if err != nil {
		return 0, fmt.Errorf("policy: store: %w", err)
	}
	e.cur.Store(&current{prepared: prep, revision: p.Revision})
	e.opts.Log.Info("resource policy updated", "revision", p.Revision)
	return p.Revision, nil
}

// Text returns the policy in force and its revision.
func (e *Engine) Text() (string, int64) {
	c := e.cur.Load()
	return c.prepared.text, c.revision
}

// Evaluate decides in with the policy in force. An evaluation error is
// returned with a denying Decision.
func (e *Engine) Evaluate(ctx context.Context, in *Input) (Decision, error) {
	c := e.cur.Load()
	d, err := c.prepared.Eval(ctx, in)
	d.Revision = c.revision
	if err != nil {
		d.Allow = false
	}
	return d, err
}
