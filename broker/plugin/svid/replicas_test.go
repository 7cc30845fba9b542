package svid_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/postgres"
	"github.com/trustgate/trustgate/store/postgres/pgtest"
)

// TestReplicasDeletedEntryStopsGrantingWithinASecond runs two svid plugins
// on two PostgreSQL stores sharing one schema, as two replicas: an entry
// deleted through one stops granting on the other within a second, though
// the other cached it for 5 s; and both serve the same bundle.
func TestReplicasDeletedEntryStopsGrantingWithinASecond(t *testing.T) {
	dsn := pgtest.Schema(t)
	ctx := context.Background()
	sealer := newSealer(t)
	var dbs [2]*postgres.DB
	var ps [2]*svid.Plugin
	for i := range dbs {
		db, err := postgres.Open(ctx, postgres.Options{DSN: dsn})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		dbs[i] = db
		if ps[i], err = svid.New(ctx, svid.DefaultConfig(), td, db, sealer, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	e, err := dbs[0].Entries().Create(ctx, store.Entry{SPIFFEID: workloadID, ParentID: agentID})
	if err != nil {
		t.Fatal(err)
	}
	if err := ps[1].Rotate(ctx); err != nil { // reload what replica 0 made
		t.Fatal(err)
	}
	for i, p := range ps {
		rec := httpBundle(t, p)
		if other := httpBundle(t, ps[1-i]); rec != other {
			t.Fatalf("replica %d publishes another bundle", i)
		}
	}
	// Let the notification of the Create pass, then cache the entry on
	// replica 1.
	time.Sleep(200 * time.Millisecond)
	issueJWT(t, ps[1], agent(), workloadID, "a")
	if err := dbs[0].Entries().Delete(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	body, _ := json.Marshal(svid.JWTRequest{SPIFFEID: workloadID, Audience: []string{"a"}})
	req := &plugin.Request{Method: http.MethodPost, Path: []string{"jwt"}, Body: body, Caller: agent()}
	for {
		_, err := ps[1].Handle(ctx, req)
		if status(err) == http.StatusForbidden {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(deleted) > time.Second {
			t.Fatal("replica 1 still grants an entry replica 0 deleted a second ago")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func httpBundle(t *testing.T, p *svid.Plugin) string {
	t.Helper()
	resp, err := p.Handle(context.Background(), &plugin.Request{Method: http.MethodGet, Path: []string{"bundle"}, Caller: agent()})
	if err != nil {
		t.Fatal(err)
	}
	return string(resp.Body)
}
