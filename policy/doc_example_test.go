package policy_test

import (
	"context"
	"os"
	"regexp"
	"testing"

	"github.com/trustgate/trustgate/policy"
)

// TestDocExampleCompiles keeps the example in docs/broker-plugins.md
// valid, and checks it decides as its comments say.
func TestDocExampleCompiles(t *testing.T) {
	doc, err := os.ReadFile("../docs/broker-plugins.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```rego\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("no rego example in the doc")
	}
	ctx := context.Background()
	p, err := policy.Compile(ctx, string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	in := input("GET", "default", "key", "1")
	if d, err := p.Eval(ctx, in); err != nil || !d.Allow || d.Reason != "GET /default/key/1 by spiffe://example.org/node/a" {
		t.Fatalf("resource read: %+v %v", d, err)
	}
	in = &policy.Input{Method: "GET", Plugin: "nebula-ca", Path: []string{"credential"}, Query: map[string]string{"name": "a"},
		Claims: policy.Claims{SPIFFEID: "spiffe://example.org/node/a", Aliases: []string{"spiffe://example.org/nodes/group-a"}}}
	if d, _ := p.Eval(ctx, in); !d.Allow {
		t.Fatal("nebula-ca for own name denied")
	}
	in.Query["name"] = "b"
	if d, _ := p.Eval(ctx, in); d.Allow {
		t.Fatal("nebula-ca for another name allowed")
	}
}
