package policy_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/policy"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/sqlite"
)

func openStore(t testing.TB) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "p.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func input(method string, path ...string) *policy.Input {
	return &policy.Input{Method: method, Plugin: "resource", Path: path, Query: map[string]string{},
		Claims: policy.Claims{SPIFFEID: "spiffe://example.org/node/a", TEE: "sample", Selectors: []string{"sample:svn:1"}, TCB: map[string]any{"svn": "1"}}}
}

const getOnly = `package policy

default allow := false

allow if {
	input.method == "GET"
	input["resource-path"] == "/default/key/1"
	input.claims["tcb-status"].svn == "1"
}

reason := sprintf("%s may %s", [input.claims.spiffe_id, input.method]) if allow
`

func TestDefaultDeniesEverything(t *testing.T) {
	ctx := context.Background()
	e, err := policy.New(ctx, policy.Options{Store: openStore(t).Policies()})
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.Evaluate(ctx, input("GET", "default", "key", "1"))
	if err != nil || d.Allow {
		t.Fatalf("default policy: %+v, %v; want deny", d, err)
	}
}

func TestPolicySeesMethodAndReason(t *testing.T) {
	ctx := context.Background()
	e, err := policy.New(ctx, policy.Options{Store: openStore(t).Policies()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Set(ctx, getOnly); err != nil {
		t.Fatal(err)
	}
	d, err := e.Evaluate(ctx, input("GET", "default", "key", "1"))
	if err != nil || !d.Allow || d.Reason != "spiffe://example.org/node/a may GET" || d.Revision != 1 {
		t.Fatalf("GET: %+v, %v", d, err)
	}
	for _, in := range []*policy.Input{input("DELETE", "default", "key", "1"), input("GET", "default", "key", "2")} {
		d, err = e.Evaluate(ctx, in)
		if err != nil || d.Allow || d.Reason != "" {
			t.Fatalf("%s %v: %+v, %v; want deny without reason", in.Method, in.Path, d, err)
		}
	}
}

func TestOnlyBooleanTrueAllows(t *testing.T) {
	ctx := context.Background()
	for _, text := range []string{
		"package policy\nallow := \"yes\"\n",
		"package policy\nallow := 1\n",
		"package policy\nallow := {\"x\": true}\n",
		"package policy\nallow := input.method\n",
		"package policy\nallow := input.claims[\"tcb-status\"]\n",
	} {
		p, err := policy.Compile(ctx, text)
		var ce *policy.CompileError
		if errors.As(err, &ce) {
			continue // the type checker saw allow is not boolean
		}
		if err != nil {
			t.Fatal(err)
		}
		d, err := p.Eval(ctx, input("GET", "a"))
		if err != nil || d.Allow {
			t.Errorf("%q: %+v, %v; want deny", text, d, err)
		}
	}
}

func TestCompileErrorKeepsPolicyInForce(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	e, err := policy.New(ctx, policy.Options{Store: st.Policies()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Set(ctx, getOnly); err != nil {
		t.Fatal(err)
	}
	bad := "package policy\n\nallow if {\n\tinput.method == \"GET\" )\n}\n"
	_, err = e.Set(ctx, bad)
	var ce *policy.CompileError
	if !errors.As(err, &ce) {
		t.Fatalf("Set(bad) = %v, want *CompileError", err)
	}
	if ce.Problems[0].Line != 4 || ce.Problems[0].Column == 0 || !strings.Contains(err.Error(), "4:") {
		t.Fatalf("problem %+v (%v): want line 4 with a column", ce.Problems[0], err)
	}
	text, rev := e.Text()
	if text != getOnly || rev != 1 {
		t.Fatalf("policy in force changed to revision %d", rev)
	}
	stored, err := st.Policies().Get(ctx, policy.Name)
	if err != nil || stored.Text != getOnly {
		t.Fatalf("stored policy changed: %v", err)
	}
	if d, _ := e.Evaluate(ctx, input("GET", "default", "key", "1")); !d.Allow {
		t.Fatal("old policy no longer allows")
	}
}

func TestCompileErrors(t *testing.T) {
	ctx := context.Background()
	for name, c := range map[string]struct {
		text string
		line int
	}{
		"wrong package":   {"package other\nallow := true\n", 1},
		"unsafe variable": {"package policy\n\nallow if {\n\tx == 1\n}\n", 4},
		"type error":      {"package policy\n\nallow if {\n\tcount(1)\n}\n", 4},
		"network builtin": {"package policy\n\nallow if {\n\thttp.send({\"method\": \"get\", \"url\": \"http://x\"})\n}\n", 4},
		"empty":           {"", 1},
	} {
		_, err := policy.Compile(ctx, c.text)
		var ce *policy.CompileError
		if !errors.As(err, &ce) {
			t.Errorf("%s: %v, want *CompileError", name, err)
			continue
		}
		if ce.Problems[0].Line != c.line {
			t.Errorf("%s: %v: want line %d", name, err, c.line)
		}
	}
}

func TestRefreshPicksUpAnotherReplicasUpdate(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	a, err := policy.New(ctx, policy.Options{Store: st.Policies()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := policy.New(ctx, policy.Options{Store: st.Policies()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Set(ctx, getOnly); err != nil {
		t.Fatal(err)
	}
	if d, _ := b.Evaluate(ctx, input("GET", "default", "key", "1")); d.Allow {
		t.Fatal("replica b allows before refresh")
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if d, _ := b.Evaluate(ctx, input("GET", "default", "key", "1")); !d.Allow || d.Revision != 1 {
		t.Fatalf("replica b after refresh: %+v", d)
	}
}

func TestSampleDevPolicy(t *testing.T) {
	ctx := context.Background()
	p, err := policy.Compile(ctx, policy.SampleDev)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := p.Eval(ctx, input("GET", "default", "key", "1")); !d.Allow {
		t.Fatal("dev policy denies a sample GET")
	}
	in := input("GET", "default", "key", "1")
	in.Claims.TEE = "join_token"
	if d, _ := p.Eval(ctx, in); d.Allow {
		t.Fatal("dev policy allows a join_token caller")
	}
	if d, _ := p.Eval(ctx, input("DELETE", "default", "key", "1")); d.Allow {
		t.Fatal("dev policy allows DELETE")
	}
	for _, pl := range []string{"nebula-ca", "svid"} {
		in := input("POST", "credential")
		in.Plugin = pl
		if d, _ := p.Eval(ctx, in); !d.Allow {
			t.Errorf("dev policy denies the sample TEE %s", pl)
		}
		in.Claims.TEE = "join_token"
		if d, _ := p.Eval(ctx, in); d.Allow {
			t.Errorf("dev policy allows a join_token caller %s", pl)
		}
	}
	reg := &policy.Input{Method: "GET", Plugin: "token", Service: policy.DevRegistry, Claims: policy.Claims{TEE: "sample"},
		Scope: &policy.Scope{Type: "repository", Name: "team/app", Actions: []string{"pull", "push", "delete"}}}
	if d, _ := p.Eval(ctx, reg); !slices.Equal(d.Grant, []string{"pull", "push"}) {
		t.Errorf("dev registry grant = %v, want [pull push]", d.Grant)
	}
	reg.Service = "registry.example.org"
	if d, _ := p.Eval(ctx, reg); len(d.Grant) != 0 {
		t.Errorf("another registry granted %v", d.Grant)
	}
}

func TestInputRoundTrip(t *testing.T) {
	in := input("POST", "a", "b")
	in.Query["name"] = "n"
	in.QueryLists = map[string][]string{"audience": {"A", "B"}}
	doc, err := in.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	back, err := policy.ParseInput(doc)
	if err != nil {
		t.Fatalf("ParseInput(%s): %v", doc, err)
	}
	again, _ := back.MarshalJSON()
	if string(again) != string(doc) {
		t.Fatalf("round trip:\n%s\n%s", doc, again)
	}
	if _, err := policy.ParseInput([]byte(`{"method":"GET","path":["a"],"resource-path":"/b"}`)); err == nil {
		t.Fatal("mismatched resource-path accepted")
	}
	if _, err := policy.ParseInput([]byte(`{"methodx":"GET"}`)); err == nil {
		t.Fatal("unknown field accepted")
	}
	if _, err := policy.ParseInput([]byte(`{"query":{"a":[1]}}`)); err == nil {
		t.Fatal("a query value that is neither a string nor strings accepted")
	}
	// A repeatable parameter is an array in input.query.
	p, err := policy.Compile(context.Background(), "package policy\nallow if input.query.audience == [\"A\", \"B\"]\nallow if input.query.name == \"n\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if d, err := p.Eval(context.Background(), back); err != nil || !d.Allow {
		t.Fatalf("audience array: %+v %v", d, err)
	}
	back.Query["name"] = "other"
	if d, err := p.Eval(context.Background(), back); err != nil || !d.Allow {
		t.Fatalf("audience array alone: %+v %v", d, err)
	}
	back.QueryLists["audience"] = []string{"A"}
	if d, err := p.Eval(context.Background(), back); err != nil || d.Allow {
		t.Fatalf("audience [A] allowed: %+v %v", d, err)
	}
}

// TestGrantShapes: data.policy.grant yields its string members, sorted,
// whether it is a set or an array; anything else, or nothing, grants
// nothing; and the rule sees the token service's input members.
func TestGrantShapes(t *testing.T) {
	ctx := context.Background()
	in := &policy.Input{Method: "GET", Plugin: "token", Service: "reg", Credential: "attestation",
		Scope: &policy.Scope{Type: "repository", Name: "team/app", Actions: []string{"pull", "push"}}}
	for _, tc := range []struct{ rules, want string }{
		{`grant contains "push" if input.scope.name == "team/app"
grant contains "pull" if input.service == "reg"`, "pull push"},
		{`grant := ["pull", 3, "delete"] if input.credential == "attestation"`, "delete pull"},
		{`grant := "pull"`, ""},
		{`grant contains "pull" if input.scope.type == "registry"`, ""},
		{`allow := true`, ""},
		{`grant contains a if { some a in input.scope.actions; a != "push" }`, "pull"},
	} {
		p, err := policy.Compile(ctx, "package policy\n\n"+tc.rules+"\n")
		if err != nil {
			t.Fatalf("%s: %v", tc.rules, err)
		}
		d, err := p.Eval(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(d.Grant, " "); got != tc.want {
			t.Errorf("%s: grant %q, want %q", tc.rules, got, tc.want)
		}
	}
}
