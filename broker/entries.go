package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest/jointoken"
	"github.com/trustgate/trustgate/store"
)

// Entry is a registration entry on the admin API, SPIRE's model. TTLs are
// seconds, as in SPIRE's API; 0 means the server's default.
type Entry struct {
	ID          string     `json:"id,omitempty"`
	SPIFFEID    string     `json:"spiffe_id"`
	ParentID    string     `json:"parent_id"`
	Selectors   []Selector `json:"selectors"`
	X509SVIDTTL int64      `json:"x509_svid_ttl,omitempty"`
	JWTSVIDTTL  int64      `json:"jwt_svid_ttl,omitempty"`
	DNSNames    []string   `json:"dns_names,omitempty"`
	CreatedAt   int64      `json:"created_at,omitempty"`
}

// Selector is one selector, e.g. {"type": "x509pop", "value": "subject:cn:n1"}.
type Selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// ParseSelector parses SPIRE's command-line form "type:value".
func ParseSelector(s string) (Selector, error) {
	t, v, ok := strings.Cut(s, ":")
	if !ok || t == "" || v == "" {
		return Selector{}, fmt.Errorf("selector %q: want type:value, such as x509pop:subject:cn:node-1", s)
	}
	return Selector{Type: t, Value: v}, nil
}

// EntryList is the answer of GET /admin/v1/entries.
type EntryList struct {
	Entries []Entry `json:"entries"`
}

// JoinTokenRequest is the body of POST /admin/v1/join-tokens.
type JoinTokenRequest struct {
	// TTL is the token's time to live in seconds (default 600).
	TTL int64 `json:"ttl,omitempty"`
	// SPIFFEID optionally pins the agent ID the token grants.
	SPIFFEID string `json:"spiffe_id,omitempty"`
}

// JoinTokenResponse is the answer of POST /admin/v1/join-tokens. The token
// is shown only this once.
type JoinTokenResponse struct {
	Token     string `json:"token"`
	ExpiresAt int64  `json:"expires_at"`
	SPIFFEID  string `json:"spiffe_id,omitempty"`
}

const maxAdminBody = 64 << 10

func (s *Server) adminFail(w http.ResponseWriter, r *http.Request, err error) {
	var re *rcarError
	switch {
	case errors.As(err, &re):
		writeProblem(w, http.StatusBadRequest, ProblemBadRequest, re.detail)
	case errors.Is(err, store.ErrNotFound):
		writeProblem(w, http.StatusNotFound, ProblemNotFound, "no such record")
	case errors.Is(err, store.ErrConflict):
		writeProblem(w, http.StatusConflict, ProblemConflict, "a record with this id exists")
	default:
		s.fail(w, r, err)
	}
}

func badRequest(format string, args ...any) error {
	return &rcarError{typ: ProblemBadRequest, detail: fmt.Sprintf(format, args...)}
}

// validateEntry checks an entry against SPIRE's rules and converts it.
func (s *Server) validateEntry(e Entry) (store.Entry, error) {
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		return store.Entry{}, badRequest("spiffe_id %q: %v", e.SPIFFEID, err)
	}
	if !id.MemberOf(s.opts.TrustDomain) {
		return store.Entry{}, badRequest("spiffe_id %s is not in trust domain %s", id, s.opts.TrustDomain)
	}
	parent, err := spiffeid.FromString(e.ParentID)
	if err != nil {
		return store.Entry{}, badRequest("parent_id %q: %v", e.ParentID, err)
	}
	if !parent.MemberOf(s.opts.TrustDomain) {
		return store.Entry{}, badRequest("parent_id %s is not in trust domain %s", parent, s.opts.TrustDomain)
	}
	if len(e.Selectors) == 0 {
		return store.Entry{}, badRequest("an entry needs at least one selector")
	}
	out := store.Entry{ID: e.ID, SPIFFEID: id.String(), ParentID: parent.String(),
		X509SVIDTTL: time.Duration(e.X509SVIDTTL) * time.Second, JWTSVIDTTL: time.Duration(e.JWTSVIDTTL) * time.Second, DNSNames: e.DNSNames}
	for _, sel := range e.Selectors {
		if sel.Type == "" || sel.Value == "" || strings.Contains(sel.Type, ":") {
			return store.Entry{}, badRequest("selector {%q, %q}: want a non-empty type without ':' and a non-empty value", sel.Type, sel.Value)
		}
		out.Selectors = append(out.Selectors, store.Selector{Type: sel.Type, Value: sel.Value})
	}
	if e.X509SVIDTTL < 0 || e.JWTSVIDTTL < 0 {
		return store.Entry{}, badRequest("TTLs must not be negative")
	}
	for _, d := range e.DNSNames {
		if d == "" || len(d) > 253 || strings.ContainsAny(d, " /\\@") {
			return store.Entry{}, badRequest("dns name %q is not a DNS name", d)
		}
	}
	return out, nil
}

func toEntry(e store.Entry) Entry {
	out := Entry{ID: e.ID, SPIFFEID: e.SPIFFEID, ParentID: e.ParentID, X509SVIDTTL: int64(e.X509SVIDTTL / time.Second),
		JWTSVIDTTL: int64(e.JWTSVIDTTL / time.Second), DNSNames: e.DNSNames, CreatedAt: e.CreatedAt.Unix(), Selectors: []Selector{}}
	for _, sel := range e.Selectors {
		out.Selectors = append(out.Selectors, Selector{Type: sel.Type, Value: sel.Value})
	}
	return out
}

func (s *Server) createEntry(w http.ResponseWriter, r *http.Request) {
	var e Entry
	if err := readJSON(r, maxAdminBody, &e); err != nil {
		s.adminFail(w, r, err)
		return
	}
	se, err := s.validateEntry(e)
	if err != nil {
		s.adminFail(w, r, err)
		return
	}
	se.CreatedAt = s.now()
	stored, err := s.store.Entries().Create(r.Context(), se)
	if err != nil {
		s.adminFail(w, r, fmt.Errorf("create entry: %w", err))
		return
	}
	s.entriesChanged()
	writeJSON(w, http.StatusCreated, toEntry(stored))
}

func (s *Server) listEntries(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	list, err := s.store.Entries().List(r.Context(), store.EntryFilter{ParentID: q.Get("parent_id"), SPIFFEID: q.Get("spiffe_id")})
	if err != nil {
		s.adminFail(w, r, fmt.Errorf("list entries: %w", err))
		return
	}
	out := EntryList{Entries: []Entry{}}
	for _, e := range list {
		out.Entries = append(out.Entries, toEntry(e))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getEntry(w http.ResponseWriter, r *http.Request) {
	e, err := s.store.Entries().Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.adminFail(w, r, fmt.Errorf("get entry: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, toEntry(e))
}

func (s *Server) deleteEntry(w http.ResponseWriter, r *http.Request) {
	if err := s.store.Entries().Delete(r.Context(), r.PathValue("id")); err != nil {
		s.adminFail(w, r, fmt.Errorf("delete entry: %w", err))
		return
	}
	s.entriesChanged()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) createJoinToken(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.attestors[jointoken.Name]; !ok {
		writeProblem(w, http.StatusNotFound, ProblemInvalidPath, "the join_token attestor is not enabled")
		return
	}
	var req JoinTokenRequest
	if err := readJSON(r, maxAdminBody, &req); err != nil {
		s.adminFail(w, r, err)
		return
	}
	ttl := time.Duration(req.TTL) * time.Second
	if req.TTL == 0 {
		ttl = 10 * time.Minute
	}
	if ttl <= 0 || ttl > s.opts.JoinTokenMaxTTL {
		s.adminFail(w, r, badRequest("ttl %d: want 1 to %d seconds", req.TTL, int64(s.opts.JoinTokenMaxTTL/time.Second)))
		return
	}
	tok, t, err := jointoken.Create(r.Context(), s.store.JoinTokens(), s.opts.TrustDomain, ttl, req.SPIFFEID, s.now())
	if errors.Is(err, jointoken.ErrInvalid) {
		s.adminFail(w, r, badRequest("%v", err))
		return
	}
	if err != nil {
		s.adminFail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, JoinTokenResponse{Token: tok, ExpiresAt: t.ExpiresAt.Unix(), SPIFFEID: t.SPIFFEID})
}

// nodeAliases returns the SPIFFE IDs of node alias entries (parent
// spiffe://<td>/spire/server) whose selectors are all among sel.
func (s *Server) nodeAliases(ctx context.Context, sel []store.Selector) ([]string, error) {
	if len(sel) == 0 {
		return nil, nil
	}
	list, err := s.store.Entries().List(ctx, store.EntryFilter{ParentID: s.serverID})
	if err != nil {
		return nil, fmt.Errorf("node aliases: %w", err)
	}
	return MatchNodeAliases(list, sel), nil
}

// MatchNodeAliases returns the SPIFFE IDs of the entries whose selectors
// are a non-empty subset of node, SPIRE's node alias rule.
func MatchNodeAliases(entries []store.Entry, node []store.Selector) []string {
	have := make(map[store.Selector]struct{}, len(node))
	for _, s := range node {
		have[s] = struct{}{}
	}
	var out []string
	for _, e := range entries {
		if len(e.Selectors) == 0 {
			continue
		}
		ok := true
		for _, s := range e.Selectors {
			if _, found := have[s]; !found {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, e.SPIFFEID)
		}
	}
	return out
}
