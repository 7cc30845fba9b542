package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Input is the document a policy sees as input:
//
//	{
//	  "method": "GET",                         // HTTP method
//	  "plugin": "resource",                    // first segment after /kbs/v0/
//	  "path": ["default", "key", "1"],         // segments after the plugin
//	  "resource-path": "/default/key/1",       // the same, as Trustee writes it
//	  "query": {"name": "node-1"},             // URL query (each key once)
//	  "claims": {                              // the attestation token's claims
//	    "sub": "spiffe://example.org/...",
//	    "spiffe_id": "spiffe://example.org/...",
//	    "selectors": ["sample:svn:1"],
//	    "aliases": ["spiffe://example.org/node/group-a"],
//	    "tee": "sample",
//	    "tcb-status": {"svn": "1"}
//	  },
//	  "credential": "attestation"              // what the caller presented
//	}
//
// A token service request (GET or POST /token) is decided once per
// requested scope, with "plugin" set to "token", empty "path" and "query",
// and two more members:
//
//	"service": "registry.example.org",       // the token's audience
//	"scope": {"type": "repository", "class": "", "name": "team/app", "actions": ["pull", "push"]}
type Input struct {
	Method string            `json:"method"`
	Plugin string            `json:"plugin"`
	Path   []string          `json:"path"`
	Query  map[string]string `json:"query"`
	// QueryLists are the query parameters that may be repeated, with all
	// their values: the policy sees them in "query" as arrays of strings,
	// beside the single-valued ones of Query.
	QueryLists map[string][]string `json:"-"`
	Claims     Claims              `json:"claims"`
	// Credential is what authenticated the caller: "attestation" (the
	// attestation token), "scoped" (a scoped token from the token
	// service), "jwt-svid" (a JWT-SVID, token service only) or
	// "x509-svid" (an X.509-SVID as TLS client certificate, plugin
	// endpoints only). Omitted when empty.
	Credential string `json:"credential,omitempty"`
	// Service is the requested token's audience (token service only).
	Service string `json:"service,omitempty"`
	// Scope is the requested scope (token service only).
	Scope *Scope `json:"scope,omitempty"`
}

// Scope is one requested resource scope of the distribution token spec,
// type[(class)]:name:actions.
type Scope struct {
	Type    string   `json:"type"`
	Class   string   `json:"class"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// Claims are the attestation token claims the policy sees.
type Claims struct {
	Subject   string         `json:"sub"`
	SPIFFEID  string         `json:"spiffe_id"`
	Selectors []string       `json:"selectors"`
	Aliases   []string       `json:"aliases"`
	TEE       string         `json:"tee"`
	TCB       map[string]any `json:"tcb-status"`
}

// ResourcePath is the path after the plugin name with a leading slash.
func (in *Input) ResourcePath() string { return "/" + strings.Join(in.Path, "/") }

// MarshalJSON writes the input document exactly as the policy sees it.
func (in *Input) MarshalJSON() ([]byte, error) {
	return []byte(in.value().String()), nil
}

// ParseInput reads an input document (as MarshalJSON writes it, without
// "resource-path", which is derived from "path"), for evaluating a policy
// offline.
func ParseInput(data []byte) (*Input, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	var raw struct {
		Input
		// Query shadows Input.Query: a value is a string, or an array of
		// strings for a repeatable parameter.
		Query        map[string]json.RawMessage `json:"query"`
		ResourcePath *string                    `json:"resource-path"`
	}
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("policy input: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("policy input: trailing data after the document")
	}
	in := raw.Input
	for k, v := range raw.Query {
		var one string
		var many []string
		if err := json.Unmarshal(v, &one); err == nil {
			if in.Query == nil {
				in.Query = map[string]string{}
			}
			in.Query[k] = one
		} else if err := json.Unmarshal(v, &many); err == nil && many != nil {
			if in.QueryLists == nil {
				in.QueryLists = map[string][]string{}
			}
			in.QueryLists[k] = many
		} else {
			return nil, fmt.Errorf("policy input: query.%s: want a string or an array of strings", k)
		}
	}
	if raw.ResourcePath != nil && *raw.ResourcePath != in.ResourcePath() {
		return nil, fmt.Errorf("policy input: resource-path %q does not match path %q", *raw.ResourcePath, in.ResourcePath())
	}
	return &in, nil
}

func strings2(v []string) *ast.Term {
	ts := make([]*ast.Term, len(v))
	for i, s := range v {
		ts[i] = ast.StringTerm(s)
	}
	return ast.ArrayTerm(ts...)
}

// value builds the input as an AST value directly, without a JSON round
// trip.
func (in *Input) value() ast.Value {
	q := ast.NewObject()
	for k, v := range in.Query {
		q.Insert(ast.StringTerm(k), ast.StringTerm(v))
	}
	for k, v := range in.QueryLists {
		q.Insert(ast.StringTerm(k), strings2(v))
	}
	tcb := ast.NewObject()
	if in.Claims.TCB != nil {
		if v, err := ast.InterfaceToValue(in.Claims.TCB); err == nil {
			if o, ok := v.(ast.Object); ok {
				tcb = o
			}
		}
	}
	c := in.Claims
	claims := ast.NewObject(
		ast.Item(ast.StringTerm("sub"), ast.StringTerm(c.Subject)),
		ast.Item(ast.StringTerm("spiffe_id"), ast.StringTerm(c.SPIFFEID)),
		ast.Item(ast.StringTerm("selectors"), strings2(c.Selectors)),
		ast.Item(ast.StringTerm("aliases"), strings2(c.Aliases)),
		ast.Item(ast.StringTerm("tee"), ast.StringTerm(c.TEE)),
		ast.Item(ast.StringTerm("tcb-status"), ast.NewTerm(tcb)),
	)
	doc := ast.NewObject(
		ast.Item(ast.StringTerm("method"), ast.StringTerm(in.Method)),
		ast.Item(ast.StringTerm("plugin"), ast.StringTerm(in.Plugin)),
		ast.Item(ast.StringTerm("path"), strings2(in.Path)),
		ast.Item(ast.StringTerm("resource-path"), ast.StringTerm(in.ResourcePath())),
		ast.Item(ast.StringTerm("query"), ast.NewTerm(q)),
		ast.Item(ast.StringTerm("claims"), ast.NewTerm(claims)),
	)
	if in.Credential != "" {
		doc.Insert(ast.StringTerm("credential"), ast.StringTerm(in.Credential))
	}
	if in.Service != "" {
		doc.Insert(ast.StringTerm("service"), ast.StringTerm(in.Service))
	}
	if sc := in.Scope; sc != nil {
		doc.Insert(ast.StringTerm("scope"), ast.ObjectTerm(
			ast.Item(ast.StringTerm("type"), ast.StringTerm(sc.Type)),
			ast.Item(ast.StringTerm("class"), ast.StringTerm(sc.Class)),
			ast.Item(ast.StringTerm("name"), ast.StringTerm(sc.Name)),
			ast.Item(ast.StringTerm("actions"), strings2(sc.Actions)),
		))
	}
	return doc
}
