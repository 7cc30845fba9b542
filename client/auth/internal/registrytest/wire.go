package registrytest

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"

	v2 "github.com/distribution/distribution/v3/registry/api/v2"
	"github.com/gorilla/mux"
)

// Counts are what a Wire saw.
type Counts struct {
	// Requests is every HTTP request, token endpoints included.
	Requests int
	// TokenFetches is the requests to token endpoints.
	TokenFetches int
	// Unauthorized is the 401 answers.
	Unauthorized int
	// OutOfScope is the requests that carried a token not valid for them.
	OutOfScope int
}

// Wire is a counting http.RoundTripper on the wire side of a client. It
// checks every Bearer token it carries: the token must be for the service
// of the host it goes to, and its access claim must cover the repository
// and actions the request needs, as distribution's router and access rules
// derive them (mapped through the target's path prefix), or as the target's
// Needs says for a host that is not a registry.
type Wire struct {
	base    http.RoundTripper
	targets map[string]*Target
	router  *mux.Router

	mu       sync.Mutex
	counts   Counts
	problems []string
}

// NewWire returns a Wire over base that knows targets.
func NewWire(base http.RoundTripper, targets ...*Target) *Wire {
	w := &Wire{base: base, targets: map[string]*Target{}, router: v2.Router()}
	for _, t := range targets {
		w.targets[t.Host()] = t
	}
	return w
}

// Counts returns the counters so far.
func (w *Wire) Counts() Counts {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.counts
}

// Problems returns a description of each out-of-scope token seen.
func (w *Wire) Problems() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.problems)
}

// RoundTrip counts and checks req, then sends it.
func (w *Wire) RoundTrip(req *http.Request) (*http.Response, error) {
	t := w.targets[req.URL.Host]
	isToken := false
	if t != nil {
		isToken = slices.Contains(t.TokenPaths, req.URL.Path)
	} else {
		isToken = strings.HasSuffix(req.URL.Path, "/token")
	}
	problem := ""
	if tok, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer "); ok && !isToken {
		problem = w.check(req, t, tok)
	}
	w.mu.Lock()
	w.counts.Requests++
	if isToken {
		w.counts.TokenFetches++
	}
	if problem != "" {
		w.counts.OutOfScope++
		w.problems = append(w.problems, problem)
	}
	w.mu.Unlock()
	resp, err := w.base.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusUnauthorized {
		w.mu.Lock()
		w.counts.Unauthorized++
		w.mu.Unlock()
	}
	return resp, err
}

type need struct{ typ, name, action string }

func (w *Wire) check(req *http.Request, t *Target, tok string) string {
	where := req.Method + " " + req.URL.String()
	if t == nil {
		return where + ": token sent to a host that is no registry target"
	}
	c, err := ParseClaims(tok)
	if err != nil {
		return where + ": " + err.Error()
	}
	if c.Audience != t.Service {
		return fmt.Sprintf("%s: token for service %q sent to %s (service %q)", where, c.Audience, t.Host(), t.Service)
	}
	var needs []need
	var m mux.RouteMatch
	if t.Needs != nil {
		for _, a := range t.Needs(req) {
			for _, act := range a.Actions {
				needs = append(needs, need{a.Type, a.Name, act})
			}
		}
	} else if w.router.Match(req, &m) && m.Route != nil {
		switch m.Route.GetName() {
		case v2.RouteNameBase:
		case v2.RouteNameCatalog:
			needs = append(needs, need{"registry", "catalog", "*"})
		default:
			name := t.Backend(m.Vars["name"])
			for _, a := range strings.Split(actionsFor(req.Method), ",") {
				needs = append(needs, need{"repository", name, a})
			}
			if from := req.URL.Query().Get("from"); from != "" && req.Method == http.MethodPost {
				needs = append(needs, need{"repository", t.Backend(from), "pull"})
			}
		}
	}
	if len(needs) == 0 {
		if len(c.Access) > 0 {
			return fmt.Sprintf("%s: token with access %v sent to a request that needs none", where, c.Access)
		}
		return ""
	}
	for _, n := range needs {
		if !grantsNeed(c.Access, n) {
			return fmt.Sprintf("%s: token with access %v lacks %s:%s:%s", where, c.Access, n.typ, n.name, n.action)
		}
	}
	// A token may not grant access to a repository the request does not touch.
	for _, a := range c.Access {
		touched := false
		for _, n := range needs {
			if a.Type == n.typ && (a.Name == n.name || a.Name == t.Repo(n.name)) {
				touched = true
			}
		}
		if !touched {
			return fmt.Sprintf("%s: token also grants %s:%s, which the request does not touch", where, a.Type, a.Name)
		}
	}
	return ""
}

func grantsNeed(access []Access, n need) bool {
	for _, a := range access {
		if a.Type == n.typ && a.Name == n.name && (slices.Contains(a.Actions, n.action) || slices.Contains(a.Actions, "*")) {
			return true
		}
	}
	return false
}
