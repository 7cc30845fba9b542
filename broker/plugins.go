package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/client/auth"
	"github.com/trustgate/trustgate/policy"
)

// ReservedNames are the first path segments under /kbs/v0/ that the broker
// serves itself or keeps for Trustee's API; no plugin may take them.
var ReservedNames = []string{
	"admin", "attest", "attestation-policy", "auth", "external", "metrics",
	"reference-value", "resource-policy", "token",
}

// BuiltinPluginNames are the names of plugins built into trustgate. They
// are not reserved against those plugins, but configuration must refuse an
// external plugin that takes one.
var BuiltinPluginNames = []string{"nebula-ca", "resource", "svid"}

// DefaultMaxBodyBytes bounds a plugin request body unless
// Options.MaxBodyBytes says otherwise.
const DefaultMaxBodyBytes = 1 << 20

// pluginMethods are the methods plugins can serve.
var pluginMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete}

// Problem types of plugin requests, Trustee's names where it has one.
const (
	// ProblemPluginNotFound is Trustee's PluginNotFound. Status 404.
	ProblemPluginNotFound = "PluginNotFound"
	// ProblemMethodNotAllowed is a method the plugin does not serve. 405.
	ProblemMethodNotAllowed = "MethodNotAllowed"
	// ProblemTokenNotFound is Trustee's TokenNotFound: no attestation
	// token with the request. Status 401.
	ProblemTokenNotFound = "TokenNotFound"
	// ProblemTokenInvalid is an attestation token that does not verify.
	// Status 401.
	ProblemTokenInvalid = "TokenVerifierError"
	// ProblemPolicyDeny is Trustee's PolicyDeny. Status 403.
	ProblemPolicyDeny = "PolicyDeny"
	// ProblemPayloadTooLarge is a body over the limit. Status 413.
	ProblemPayloadTooLarge = "PayloadTooLarge"
	// ProblemJWE is Trustee's JweError: the answer could not be encrypted
	// to the token's tee-pubkey. Status 400.
	ProblemJWE = "JweError"
	// ProblemPluginError is an error a plugin attributes to the caller,
	// with the plugin's status.
	ProblemPluginError = "PluginError"
	// ProblemPolicyInvalid is a resource policy that does not compile.
	// Status 400.
	ProblemPolicyInvalid = "PolicyInvalid"
)

// Verdicts recorded in the audit log and the metrics.
const (
	VerdictAllowed         = "allowed"         // policy allowed an attested caller
	VerdictAdmin           = "admin"           // an admin called an admin method
	VerdictDenied          = "denied"          // policy denied
	VerdictUnauthenticated = "unauthenticated" // no or invalid credential
	VerdictInvalid         = "invalid"         // rejected before authentication
	VerdictError           = "error"           // the broker or plugin failed
)

// Realm is the Bearer realm of challenges on /kbs/v0 plugin paths when
// the token service is off, and for admin tokens.
const Realm = "trustgate"

// bearerChallenge builds a WWW-Authenticate value (RFC 6750) without the
// token service. errCode is empty or an RFC 6750 error code.
func bearerChallenge(errCode string) string {
	if errCode == "" {
		return `Bearer realm="` + Realm + `"`
	}
	return `Bearer realm="` + Realm + `", error="` + errCode + `"`
}

// challenge is the WWW-Authenticate value for a plugin request: with the
// token service, realm, service and the request's scope (empty when no
// scope names the request), as the distribution token spec has them;
// without it, or for admin methods, the plain realm.
func (s *Server) challenge(admin bool, scope, errCode string) string {
	if admin || s.ts == nil {
		return bearerChallenge(errCode)
	}
	return s.ts.challenge(scope, errCode)
}

// registerPlugins validates and indexes opts.Plugins.
func (s *Server) registerPlugins(ps []plugin.Plugin) error {
	s.plugins = make(map[string]plugin.Plugin, len(ps))
	for _, p := range ps {
		if p == nil {
			return errors.New("broker: nil plugin")
		}
		name := p.Name()
		if !plugin.ValidSegment(name) {
			return fmt.Errorf("broker: plugin name %q is not a valid path segment", name)
		}
		if slices.Contains(ReservedNames, name) {
			return fmt.Errorf("broker: plugin name %q is reserved (reserved: %s)", name, strings.Join(ReservedNames, ", "))
		}
		if _, dup := s.plugins[name]; dup {
			return fmt.Errorf("broker: two plugins named %q", name)
		}
		s.plugins[name] = p
	}
	return nil
}

// outcome is what one plugin request came to, for the audit record.
type outcome struct {
	plugin, method string
	path           []string
	caller         *plugin.Caller
	verdict        string
	reason         string
	revision       int64
	status         int
	err            error
}

// servePlugin serves /kbs/v0/<plugin>/<path...>.
func (s *Server) servePlugin(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	o := outcome{method: r.Method}
	defer func() { s.audit.record(r, &o, time.Since(start)) }()
	fail := func(status int, typ, detail string, verdict string) {
		o.status, o.verdict = status, verdict
		writeProblem(w, status, typ, detail)
	}
	name, rest, err := plugin.SplitPath(strings.TrimPrefix(r.URL.EscapedPath(), "/kbs/v0/"))
	if err != nil {
		fail(http.StatusNotFound, ProblemInvalidPath, fmt.Sprintf("Request path %s is invalid: %v", r.URL.EscapedPath(), err), VerdictInvalid)
		return
	}
	p, ok := s.plugins[name]
	if !ok {
		fail(http.StatusNotFound, ProblemPluginNotFound, fmt.Sprintf("no plugin named %q: the request path %s is invalid", name, r.URL.EscapedPath()), VerdictInvalid)
		return
	}
	o.plugin, o.path = name, rest
	if !slices.Contains(pluginMethods, r.Method) {
		w.Header().Set("Allow", strings.Join(s.allowed(p), ", "))
		fail(http.StatusMethodNotAllowed, ProblemMethodNotAllowed, fmt.Sprintf("plugin %s does not serve %s", name, r.Method), VerdictInvalid)
		return
	}
	var repeatable []string
	if rq, ok := p.(plugin.RepeatedQuery); ok {
		repeatable = rq.RepeatedQuery()
	}
	query, err := singleQuery(r.URL.RawQuery, repeatable)
	if err != nil {
		fail(http.StatusBadRequest, ProblemBadRequest, err.Error(), VerdictInvalid)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			fail(http.StatusRequestEntityTooLarge, ProblemPayloadTooLarge, fmt.Sprintf("request body exceeds %d bytes", s.maxBody), VerdictInvalid)
			return
		}
		fail(http.StatusBadRequest, ProblemBadRequest, fmt.Sprintf("read request body: %v", err), VerdictInvalid)
		return
	}
	req := &plugin.Request{Method: r.Method, Path: rest, Query: query, Body: body}
	ctx := r.Context()
	access, encrypt, err := decide(ctx, p, req)
	if err != nil {
		o.err = err
		fail(http.StatusInternalServerError, ProblemInternal, "internal error; see the server log", VerdictError)
		return
	}
	switch access {
	case plugin.Admin:
		sub, af := s.authAdmin(ctx, r)
		if af != nil {
			af.admin = true
			af.write(w, s)
			o.status, o.verdict = af.status, VerdictUnauthenticated
			return
		}
		req.Caller = plugin.Caller{Admin: true, Subject: sub}
		o.caller, o.verdict = &req.Caller, VerdictAdmin
		encrypt = false
	case plugin.Attested:
		need, named := PluginScope(name, rest, r.Method)
		scope := ""
		if named {
			scope = need.String()
		}
		ent, af := s.authAttested(r)
		if af != nil {
			af.scope = scope
			af.write(w, s)
			o.status, o.verdict = af.status, VerdictUnauthenticated
			return
		}
		req.Caller = ent.caller
		o.caller = &req.Caller
		if ent.kind == credX509SVID {
			// The answer travels in the TLS session that the SVID's key
			// authenticated, to its holder only.
			encrypt = false
		}
		if ent.kind == credScoped && (!named || !auth.Covers(ent.access, []auth.Scope{need})) {
			w.Header().Set("WWW-Authenticate", s.challenge(false, scope, "insufficient_scope"))
			detail := fmt.Sprintf("the scoped token does not grant %s", scope)
			if !named {
				detail = "no scope names this request: present the attestation token"
			}
			fail(http.StatusForbidden, ProblemInsufficientScope, detail, VerdictDenied)
			return
		}
		d, err := s.policy.Evaluate(ctx, &policy.Input{Method: r.Method, Plugin: name, Path: rest, Query: queryMap(query, repeatable), QueryLists: queryLists(query, repeatable), Claims: ent.claims, Credential: ent.kind.String()})
		o.reason, o.revision = d.Reason, d.Revision
		if err != nil {
			o.err = err
			fail(http.StatusInternalServerError, ProblemInternal, "the resource policy failed to evaluate; see the server log", VerdictError)
			return
		}
		if !d.Allow {
			if s.ts != nil {
				w.Header().Set("WWW-Authenticate", s.challenge(false, scope, "insufficient_scope"))
			}
			fail(http.StatusForbidden, ProblemPolicyDeny, fmt.Sprintf("the resource policy denies %s %s to %s", r.Method, r.URL.Path, ent.caller.Subject), VerdictDenied)
			return
		}
		o.verdict = VerdictAllowed
		if encrypt && ent.teeKeyErr != nil {
			fail(http.StatusBadRequest, ProblemJWE, "cannot encrypt to the token's tee-pubkey: "+ent.teeKeyErr.Error(), VerdictAllowed)
			return
		}
		s.handle(ctx, w, p, req, encrypt, ent, &o)
		return
	default:
		w.Header().Set("Allow", strings.Join(s.allowed(p), ", "))
		fail(http.StatusMethodNotAllowed, ProblemMethodNotAllowed, fmt.Sprintf("plugin %s does not serve %s", name, r.Method), VerdictInvalid)
		return
	}
	s.handle(ctx, w, p, req, false, nil, &o)
}

// handle calls the plugin and writes its answer, encrypted when asked.
func (s *Server) handle(ctx context.Context, w http.ResponseWriter, p plugin.Plugin, req *plugin.Request, encrypt bool, ent *callerEntry, o *outcome) {
	resp, err := p.Handle(ctx, req)
	var pe *plugin.Error
	switch {
	case errors.As(err, &pe):
		o.status = pe.Status
		if pe.Status < 400 || pe.Status > 599 {
			o.status = http.StatusInternalServerError
		}
		writeProblem(w, o.status, ProblemPluginError, pe.Detail)
		return
	case err != nil:
		o.status, o.verdict, o.err = http.StatusInternalServerError, VerdictError, err
		writeProblem(w, o.status, ProblemInternal, "internal error; see the server log")
		return
	case resp == nil:
		resp = &plugin.Response{}
	}
	status := resp.Status
	if status == 0 {
		status = http.StatusOK
	}
	body, ct := resp.Body, resp.ContentType
	if ct == "" {
		ct = "application/json"
	}
	if encrypt {
		body, err = encryptJWE(ent.teeKey, resp.Body)
		if err != nil {
			o.status, o.verdict, o.err = http.StatusInternalServerError, VerdictError, err
			writeProblem(w, o.status, ProblemInternal, "internal error; see the server log")
			return
		}
		ct = "application/json"
	}
	o.status = status
	h := w.Header()
	h.Set("Content-Type", ct)
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func decide(ctx context.Context, p plugin.Plugin, req *plugin.Request) (plugin.Access, bool, error) {
	if d, ok := p.(plugin.Decider); ok {
		a, enc, err := d.Decide(ctx, req)
		if err != nil {
			return plugin.Denied, false, fmt.Errorf("plugin %s: decide access: %w", p.Name(), err)
		}
		return a, enc, nil
	}
	return p.Access(req.Method), p.Encrypt(req.Method), nil
}

// allowed lists the methods p serves, for an Allow header. A Decider's
// Access names the methods it may serve.
func (s *Server) allowed(p plugin.Plugin) []string {
	var out []string
	for _, m := range pluginMethods {
		if p.Access(m) != plugin.Denied {
			out = append(out, m)
		}
	}
	return out
}

// singleQuery parses a query in which every key appears once, except the
// repeatable ones, so that the policy and the plugin cannot read different
// values of one key.
func singleQuery(raw string, repeatable []string) (url.Values, error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	for k, v := range q {
		if len(v) != 1 && !slices.Contains(repeatable, k) {
			return nil, fmt.Errorf("query parameter %.40q appears %d times: give each parameter once", k, len(v))
		}
	}
	return q, nil
}

// queryMap is the single-valued parameters of q, for the policy input.
func queryMap(q url.Values, repeatable []string) map[string]string {
	m := make(map[string]string, len(q))
	for k, v := range q {
		if !slices.Contains(repeatable, k) {
			m[k] = v[0]
		}
	}
	return m
}

// queryLists is the repeatable parameters of q, for the policy input.
func queryLists(q url.Values, repeatable []string) map[string][]string {
	var m map[string][]string
	for k, v := range q {
		if slices.Contains(repeatable, k) {
			if m == nil {
				m = map[string][]string{}
			}
			m[k] = v
		}
	}
	return m
}

// authFailure is a failed authentication: 401 with a Bearer challenge, or
// 403 for a valid credential without the needed rights.
type authFailure struct {
	status  int
	typ     string
	detail  string
	errCode string // RFC 6750 error code for the challenge, if any
	admin   bool   // the method needs an admin token
	scope   string // the scope the request needs, if one names it
}

func (f *authFailure) write(w http.ResponseWriter, s *Server) {
	if f.status == http.StatusUnauthorized || (f.status == http.StatusForbidden && f.errCode != "") {
		w.Header().Set("WWW-Authenticate", s.challenge(f.admin, f.scope, f.errCode))
	}
	writeProblem(w, f.status, f.typ, f.detail)
}

// authAdmin checks the admin bearer token.
func (s *Server) authAdmin(ctx context.Context, r *http.Request) (string, *authFailure) {
	raw, ok := bearer(r)
	if !ok {
		return "", &authFailure{status: http.StatusUnauthorized, typ: ProblemAdminAccess, detail: "this method needs an admin token: Authorization: Bearer <admin JWT>"}
	}
	sub, err := s.opts.Admin.Verify(ctx, raw)
	if errors.Is(err, errAdminRole) {
		return "", &authFailure{status: http.StatusForbidden, typ: ProblemAdminAccess, detail: "admin access denied: " + err.Error(), errCode: "insufficient_scope"}
	}
	if err != nil {
		return "", &authFailure{status: http.StatusUnauthorized, typ: ProblemAdminAccess, detail: "admin access denied: " + err.Error(), errCode: "invalid_token"}
	}
	return sub, nil
}

// bearer returns the Authorization header's bearer token.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "Bearer ") {
		return "", false
	}
	raw := strings.TrimSpace(h[7:])
	return raw, raw != ""
}
