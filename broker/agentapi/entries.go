package agentapi

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/trustgate/trustgate/agentapi/wire"
	"github.com/trustgate/trustgate/store"
)

// nodeAliases returns the SPIFFE IDs of the node alias entries (parent:
// the server ID) whose selectors are a non-empty subset of the agent's.
func (a *API) nodeAliases(ctx context.Context, ag store.Agent) ([]string, error) {
	if len(ag.Selectors) == 0 {
		return nil, nil
	}
	list, err := a.store.Entries().List(ctx, store.EntryFilter{ParentID: a.serverID})
	if err != nil {
		return nil, fmt.Errorf("node aliases: %w", err)
	}
	have := make(map[store.Selector]bool, len(ag.Selectors))
	for _, s := range ag.Selectors {
		have[s] = true
	}
	var out []string
	for _, e := range list {
		ok := len(e.Selectors) > 0
		for _, s := range e.Selectors {
			ok = ok && have[s]
		}
		if ok && !slices.Contains(out, e.SPIFFEID) {
			out = append(out, e.SPIFFEID)
		}
	}
	return out, nil
}

// authorized returns every entry the agent is authorized for, ordered by
// ID: the entries whose parent is its ID or one of its node aliases. Each
// parent is one indexed lookup (entries by parent_id).
func (a *API) authorized(ctx context.Context, ag store.Agent) ([]store.Entry, error) {
	aliases, err := a.nodeAliases(ctx, ag)
	if err != nil {
		return nil, err
	}
	var out []store.Entry
	seen := map[string]bool{}
	for _, parent := range append([]string{ag.SPIFFEID}, aliases...) {
		list, err := a.store.Entries().List(ctx, store.EntryFilter{ParentID: parent})
		if err != nil {
			return nil, fmt.Errorf("entries under %s: %w", parent, err)
		}
		for _, e := range list {
			if !seen[e.ID] {
				seen[e.ID] = true
				out = append(out, e)
			}
		}
	}
	if len(aliases) > 0 {
		slices.SortFunc(out, func(x, y store.Entry) int {
			switch {
			case x.ID < y.ID:
				return -1
			case x.ID > y.ID:
				return 1
			}
			return 0
		})
	}
	return out, nil
}

// digest identifies an authorized set, to tell whether a change touched it.
func digest(list []store.Entry) [sha256.Size]byte {
	h := sha256.New()
	field := func(s string) {
		_ = binary.Write(h, binary.BigEndian, uint32(len(s)))
		h.Write([]byte(s))
	}
	for _, e := range list {
		field(e.ID)
		field(e.SPIFFEID)
		field(e.ParentID)
		for _, s := range e.Selectors {
			field(s.Type)
			field(s.Value)
		}
		field(strconv.FormatInt(int64(e.X509SVIDTTL), 10) + "/" + strconv.FormatInt(int64(e.JWTSVIDTTL), 10))
		for _, d := range e.DNSNames {
			field(d)
		}
		h.Write([]byte{0})
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

func toWire(e store.Entry) wire.Entry {
	out := wire.Entry{ID: e.ID, SPIFFEID: e.SPIFFEID, ParentID: e.ParentID, Selectors: []wire.Selector{},
		X509SVIDTTL: int64(e.X509SVIDTTL / time.Second), JWTSVIDTTL: int64(e.JWTSVIDTTL / time.Second),
		DNSNames: e.DNSNames, CreatedAt: e.CreatedAt.Unix()}
	for _, s := range e.Selectors {
		out.Selectors = append(out.Selectors, wire.Selector{Type: s.Type, Value: s.Value})
	}
	return out
}

// snapshotTries bounds how often snapshot reads again while entries keep
// changing under it.
const snapshotTries = 4

// snapshot reads the entries revision and the agent's authorized set as
// one state: the revision is read before and after the set, and the set is
// read again until both agree. An answer must never pair a revision with a
// newer set: the agent would come back with that revision, the long poll
// would take the newer set as what the agent holds, and a change already
// made would never end the poll. When the entries keep changing, the set
// goes out with the first (older) revision, so that the agent's next
// request is answered at once.
func (a *API) snapshot(ctx context.Context, ag store.Agent) (int64, []store.Entry, error) {
	var (
		first int64
		list  []store.Entry
	)
	for i := range snapshotTries {
		before, err := a.store.Entries().Revision(ctx)
		if err != nil {
			return 0, nil, fmt.Errorf("entries revision: %w", err)
		}
		if i == 0 {
			first = before
		}
		if list, err = a.authorized(ctx, ag); err != nil {
			return 0, nil, err
		}
		after, err := a.store.Entries().Revision(ctx)
		if err != nil {
			return 0, nil, fmt.Errorf("entries revision: %w", err)
		}
		if after == before {
			return before, list, nil
		}
	}
	return first, list, nil
}

// draining reports whether Drain was called.
func (a *API) draining() bool {
	select {
	case <-a.drained:
		return true
	default:
		return false
	}
}

// writeSlack is the time a long poll's answer has to be computed and
// written after its wait.
const writeSlack = 10 * time.Second

// parseWait reads the wait parameter: a Go duration or whole seconds, at
// most wire.MaxWait.
func parseWait(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.ParseInt(v, 10, 64)
		if nerr != nil || n > int64(wire.MaxWait/time.Second) {
			return 0, problem(http.StatusBadRequest, "wait %q: want a duration such as 30s, at most %s", v, wire.MaxWait)
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 || d > wire.MaxWait {
		return 0, problem(http.StatusBadRequest, "wait %s: want 0 to %s", d, wire.MaxWait)
	}
	return d, nil
}

// serveEntries answers GET /agent/v1/entries. When the agent already has
// the current revision, it waits (up to wait) for a change to the agent's
// authorized set: woken by local notifications and the optional Notifier,
// and reading the store's revision every PollInterval for changes made on
// other replicas.
func (a *API) serveEntries(w http.ResponseWriter, r *http.Request) {
	ag, _, err := a.authAgent(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	wait, err := parseWait(q.Get(wire.QueryWait))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	have := int64(-1)
	if v := q.Get(wire.QueryRevision); v != "" {
		if have, err = strconv.ParseInt(v, 10, 64); err != nil || have < 0 {
			a.fail(w, r, problem(http.StatusBadRequest, "revision %q: want a revision from an earlier answer", v))
			return
		}
	}
	ctx := r.Context()
	local := a.local.Changed()
	var ext <-chan struct{}
	if a.changes != nil {
		ext = a.changes.Changed()
	}
	rev, list, err := a.snapshot(ctx, ag)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if rev == have && wait > 0 && !a.draining() {
		// The server's WriteTimeout (30s by default) may be shorter than
		// the wait: give this response the wait plus writeSlack.
		if err := http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + writeSlack)); err != nil {
			a.log.Debug("long poll: cannot extend the write deadline", "err", err)
		}
		sum := digest(list)
		deadline := time.NewTimer(wait)
		defer deadline.Stop()
		tick := time.NewTicker(a.opts.PollInterval)
		defer tick.Stop()
	wait:
		for {
			select {
			case <-ctx.Done():
				return
			case <-deadline.C:
				break wait
			case <-a.drained:
				break wait
			case <-local:
				local = a.local.Changed()
			case <-ext:
				ext = a.changes.Changed()
			case <-tick.C:
			}
			now, err := a.store.Entries().Revision(ctx)
			if err != nil {
				a.fail(w, r, fmt.Errorf("entries revision: %w", err))
				return
			}
			if now == rev {
				continue
			}
			// Something changed: the agent itself (eviction) or entries.
			cur, err := a.store.Agents().Get(ctx, ag.SPIFFEID)
			if err != nil {
				a.fail(w, r, fmt.Errorf("get agent %s: %w", ag.SPIFFEID, err))
				return
			}
			if cur.Evicted {
				a.fail(w, r, problem(http.StatusForbidden, "agent %s is evicted", ag.SPIFFEID))
				return
			}
			ag = cur
			if rev, list, err = a.snapshot(ctx, ag); err != nil {
				a.fail(w, r, err)
				return
			}
			if digest(list) != sum {
				break wait
			}
		}
	}
	out := wire.Entries{Revision: rev, Entries: make([]wire.Entry, 0, len(list))}
	for _, e := range list {
		out.Entries = append(out.Entries, toWire(e))
	}
	writeJSON(w, out)
}
