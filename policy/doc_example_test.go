package policy_test

import (
	"context"
	"os"
	"regexp"
	"strings"
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

// TestTokenServiceDocExample keeps the grant example in
// docs/token-service.md valid and deciding as the text says.
func TestTokenServiceDocExample(t *testing.T) {
	doc, err := os.ReadFile("../docs/token-service.md")
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
	grant := func(id, cred, typ, name string) []string {
		d, err := p.Eval(ctx, &policy.Input{Method: "GET", Plugin: "token", Service: "registry.example.org", Credential: cred,
			Scope: &policy.Scope{Type: typ, Name: name, Actions: []string{"pull", "push"}}, Claims: policy.Claims{SPIFFEID: id}})
		if err != nil {
			t.Fatal(err)
		}
		return d.Grant
	}
	ci := "spiffe://example.org/ci/builder"
	for _, tc := range []struct {
		id, cred, typ, name string
		want                string
	}{
		{ci, "attestation", "repository", "team/app", "pull"},
		{ci, "attestation", "repository", "team/ci-cache", "pull push"},
		{ci, "jwt-svid", "repository", "team/ci-cache", "pull"},
		{ci, "attestation", "repository", "other/app", ""},
		{"spiffe://example.org/web", "attestation", "repository", "team/app", ""},
		{ci, "jwt-svid", "registry", "catalog", "*"},
	} {
		if got := strings.Join(grant(tc.id, tc.cred, tc.typ, tc.name), " "); got != tc.want {
			t.Errorf("%s %s %s:%s: grant %q, want %q", tc.id, tc.cred, tc.typ, tc.name, got, tc.want)
		}
	}
}
