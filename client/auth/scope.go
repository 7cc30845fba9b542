package auth

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Scope is one resource scope of the distribution token spec:
// type[(class)]:name:action[,action...].
type Scope struct {
	// Type is the resource type, such as "repository" or "registry".
	Type string
	// Class is the optional resource class, such as "plugin" in
	// "repository(plugin):name:pull".
	Class string
	// Name is the resource name. It may start with a host[:port] component.
	Name string
	// Actions are the requested actions, sorted and de-duplicated by
	// ParseScope. "*" stands for every action.
	Actions []string
}

// Errors returned by ParseScope.
var (
	// ErrInvalidScope reports a scope that does not follow the scope grammar.
	ErrInvalidScope = errors.New("invalid scope")
)

// ParseScope parses one resource scope. The name may contain a host:port
// component ("repository:localhost:5000/foo:pull"): the type ends at the first
// colon and the actions start after the last one.
func ParseScope(s string) (Scope, error) {
	first := strings.IndexByte(s, ':')
	last := strings.LastIndexByte(s, ':')
	if first < 0 || first == last {
		return Scope{}, fmt.Errorf("%w %q: want type:name:actions", ErrInvalidScope, s)
	}
	typ, name, acts := s[:first], s[first+1:last], s[last+1:]
	var sc Scope
	var err error
	if sc.Type, sc.Class, err = parseResourceType(typ); err != nil {
		return Scope{}, fmt.Errorf("%w %q: %w", ErrInvalidScope, s, err)
	}
	if err := validateResourceName(name); err != nil {
		return Scope{}, fmt.Errorf("%w %q: %w", ErrInvalidScope, s, err)
	}
	sc.Name = name
	if acts == "" {
		return Scope{}, fmt.Errorf("%w %q: no actions", ErrInvalidScope, s)
	}
	for a := range strings.SplitSeq(acts, ",") {
		if a != "*" && !isLowerAlpha(a) {
			return Scope{}, fmt.Errorf("%w %q: bad action %q", ErrInvalidScope, s, a)
		}
		sc.Actions = append(sc.Actions, a)
	}
	sc.Actions = normalizeActions(sc.Actions)
	return sc, nil
}

// ParseScopes parses a space-separated list of scopes, the form of the
// "scope" challenge parameter.
func ParseScopes(s string) ([]Scope, error) {
	var out []Scope
	for f := range strings.FieldsSeq(s) {
		sc, err := ParseScope(f)
		if err != nil {
			return nil, err
		}
		out = append(out, sc)
	}
	return out, nil
}

// String returns the canonical form type[(class)]:name:actions.
func (s Scope) String() string {
	var b strings.Builder
	b.WriteString(s.Type)
	if s.Class != "" {
		b.WriteByte('(')
		b.WriteString(s.Class)
		b.WriteByte(')')
	}
	b.WriteByte(':')
	b.WriteString(s.Name)
	b.WriteByte(':')
	b.WriteString(strings.Join(s.Actions, ","))
	return b.String()
}

// resource returns the scope without its actions, the key under which
// CleanScopes merges.
func (s Scope) resource() string {
	if s.Class != "" {
		return s.Type + "(" + s.Class + "):" + s.Name
	}
	return s.Type + ":" + s.Name
}

// Covers reports whether a token granted the scopes in have may be used for
// a request that needs the scopes in need: every needed action on every
// needed resource is granted, "*" granting all.
func Covers(have, need []Scope) bool {
	for _, n := range need {
		ok := false
		for _, h := range have {
			if h.resource() == n.resource() && actionsCover(h.Actions, n.Actions) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func actionsCover(have, need []string) bool {
	if slices.Contains(have, "*") {
		return true
	}
	for _, a := range need {
		if !slices.Contains(have, a) {
			return false
		}
	}
	return true
}

// CleanScopes normalizes a list of scope strings exactly as oras-go's
// auth.CleanScopes does: scopes on the same type and name are merged, their
// actions sorted and de-duplicated ("*" absorbing the others), scopes with no
// action dropped, strings that are not type:name:actions kept as they are,
// and the result sorted. The output is deterministic, so it can key a cache.
func CleanScopes(scopes []string) []string {
	if len(scopes) == 1 {
		// A lone scope only has its actions cleaned, whatever its shape.
		s := scopes[0]
		last := strings.LastIndexByte(s, ':')
		if last < 0 {
			return []string{s}
		}
		var acts []string
		for a := range strings.SplitSeq(s[last+1:], ",") {
			if a != "" {
				acts = append(acts, a)
			}
		}
		if len(acts) == 0 {
			return nil
		}
		return []string{s[:last+1] + strings.Join(normalizeActions(acts), ",")}
	}
	type entry struct{ actions map[string]struct{} }
	var odd []string
	merged := map[string]*entry{}
	for _, s := range scopes {
		first := strings.IndexByte(s, ':')
		if first < 0 {
			odd = append(odd, s)
			continue
		}
		last := strings.LastIndexByte(s, ':')
		if last == first {
			odd = append(odd, s)
			continue
		}
		res, acts := s[:last], s[last+1:]
		var kept []string
		for a := range strings.SplitSeq(acts, ",") {
			if a != "" {
				kept = append(kept, a)
			}
		}
		if len(kept) == 0 {
			continue
		}
		e := merged[res]
		if e == nil {
			e = &entry{actions: map[string]struct{}{}}
			merged[res] = e
		}
		for _, a := range kept {
			e.actions[a] = struct{}{}
		}
	}
	out := odd
	for res, e := range merged {
		acts := make([]string, 0, len(e.actions))
		for a := range e.actions {
			acts = append(acts, a)
		}
		out = append(out, res+":"+strings.Join(normalizeActions(acts), ","))
	}
	if len(out) == 0 {
		return nil
	}
	slices.Sort(out)
	return out
}

// normalizeActions sorts and de-duplicates actions; "*" absorbs the rest.
func normalizeActions(acts []string) []string {
	if slices.Contains(acts, "*") {
		return []string{"*"}
	}
	slices.Sort(acts)
	return slices.Compact(acts)
}

// parseResourceType splits "type" or "type(class)" and checks both against
// /[a-z0-9]+/.
func parseResourceType(s string) (typ, class string, err error) {
	typ = s
	if i := strings.IndexByte(s, '('); i >= 0 {
		if !strings.HasSuffix(s, ")") {
			return "", "", fmt.Errorf("unterminated class in type %q", s)
		}
		typ, class = s[:i], s[i+1:len(s)-1]
		if !isLowerAlnum(class) {
			return "", "", fmt.Errorf("bad class %q", class)
		}
	}
	if !isLowerAlnum(typ) {
		return "", "", fmt.Errorf("bad type %q", typ)
	}
	return typ, class, nil
}

// validateResourceName checks name := [hostname '/'] component ['/' component]*.
// The first path element is taken as a hostname when it holds a '.' or ':'
// or is "localhost", as the reference grammar does.
func validateResourceName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	parts := strings.Split(name, "/")
	if len(parts) > 1 && (strings.ContainsAny(parts[0], ".:") || parts[0] == "localhost") {
		if err := validateHostname(parts[0]); err != nil {
			return err
		}
		parts = parts[1:]
	}
	for _, p := range parts {
		if !isComponent(p) {
			return fmt.Errorf("bad path component %q", p)
		}
	}
	return nil
}

func validateHostname(h string) error {
	host, port, hasPort := strings.Cut(h, ":")
	if hasPort && (port == "" || !isDigits(port)) {
		return fmt.Errorf("bad port in %q", h)
	}
	for c := range strings.SplitSeq(host, ".") {
		if c == "" || c[0] == '-' || c[len(c)-1] == '-' {
			return fmt.Errorf("bad hostname %q", h)
		}
		for i := 0; i < len(c); i++ {
			if !isAlnum(c[i]) && c[i] != '-' {
				return fmt.Errorf("bad hostname %q", h)
			}
		}
	}
	return nil
}

// isComponent checks alpha-numeric [separator alpha-numeric]* with
// separator := /[_.]|__|[-]*/ and alpha-numeric := /[a-z0-9]+/.
func isComponent(s string) bool {
	if s == "" || !isLowerAlnumByte(s[0]) || !isLowerAlnumByte(s[len(s)-1]) {
		return false
	}
	for i := 0; i < len(s); {
		if isLowerAlnumByte(s[i]) {
			i++
			continue
		}
		j := i
		for j < len(s) && !isLowerAlnumByte(s[j]) {
			j++
		}
		sep := s[i:j]
		switch {
		case sep == "." || sep == "_" || sep == "__":
		case strings.Trim(sep, "-") == "":
		default:
			return false
		}
		i = j
	}
	return true
}

func isLowerAlnumByte(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
func isAlnum(c byte) bool          { return isLowerAlnumByte(c) || c >= 'A' && c <= 'Z' }

func isLowerAlnum(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isLowerAlnumByte(s[i]) {
			return false
		}
	}
	return true
}

func isLowerAlpha(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 'a' || s[i] > 'z' {
			return false
		}
	}
	return true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
