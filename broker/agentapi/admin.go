package agentapi

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/agentapi/wire"
	"github.com/trustgate/trustgate/store"
)

func agentToWire(ag store.Agent) wire.Agent {
	out := wire.Agent{SPIFFEID: ag.SPIFFEID, Attestor: ag.Attestor, Selectors: []wire.Selector{}, SerialNumber: ag.SerialNumber,
		ExpiresAt: ag.ExpiresAt.Unix(), Evicted: ag.Evicted, CreatedAt: ag.CreatedAt.Unix(), UpdatedAt: ag.UpdatedAt.Unix()}
	for _, s := range ag.Selectors {
		out.Selectors = append(out.Selectors, wire.Selector{Type: s.Type, Value: s.Value})
	}
	return out
}

// listAgents answers GET /admin/v1/agents.
func (a *API) listAgents(w http.ResponseWriter, r *http.Request) {
	list, err := a.store.Agents().List(r.Context())
	if err != nil {
		a.fail(w, r, fmt.Errorf("list agents: %w", err))
		return
	}
	out := wire.AgentList{Agents: make([]wire.Agent, 0, len(list))}
	for _, ag := range list {
		out.Agents = append(out.Agents, agentToWire(ag))
	}
	writeJSON(w, out)
}

// evictAgent answers POST /admin/v1/agents/evict: the agent is refused from
// its next request on, on every replica, and waiting long polls end.
func (a *API) evictAgent(w http.ResponseWriter, r *http.Request) {
	var req wire.EvictRequest
	if err := readJSON(r, maxJWTBody, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if _, err := spiffeid.FromString(req.SPIFFEID); err != nil {
		a.fail(w, r, problem(http.StatusBadRequest, "spiffe_id %q: %v", req.SPIFFEID, err))
		return
	}
	ctx := r.Context()
	err := a.store.Agents().Evict(ctx, req.SPIFFEID, a.now())
	if errors.Is(err, store.ErrNotFound) {
		a.fail(w, r, problem(http.StatusNotFound, "no agent %s", req.SPIFFEID))
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("evict agent %s: %w", req.SPIFFEID, err))
		return
	}
	a.Notify()
	ag, err := a.store.Agents().Get(ctx, req.SPIFFEID)
	if err != nil {
		a.fail(w, r, fmt.Errorf("get agent %s: %w", req.SPIFFEID, err))
		return
	}
	a.log.Info("agent evicted", "spiffe_id", req.SPIFFEID)
	writeJSON(w, agentToWire(ag))
}
