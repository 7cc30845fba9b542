package broker_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/store"
)

// countingStore counts the store calls of the request paths. On
// PostgreSQL every store method is one round trip (store/postgres's
// TestRoundTripsPerOperation), so these are database round trips.
type countingStore struct {
	store.Store
	calls *atomic.Int64
}

func (c countingStore) Sessions() store.Sessions {
	return countingSessions{c.Store.Sessions(), c.calls}
}
func (c countingStore) JoinTokens() store.JoinTokens {
	return countingJoinTokens{c.Store.JoinTokens(), c.calls}
}
func (c countingStore) Resources() store.Resources {
	return countingResources{c.Store.Resources(), c.calls}
}

type countingSessions struct {
	store.Sessions
	calls *atomic.Int64
}

func (s countingSessions) Create(ctx context.Context, v store.Session) error {
	s.calls.Add(1)
	return s.Sessions.Create(ctx, v)
}
func (s countingSessions) Get(ctx context.Context, id string) (store.Session, error) {
	s.calls.Add(1)
	return s.Sessions.Get(ctx, id)
}
func (s countingSessions) ConsumeNonce(ctx context.Context, id, nonce string, now time.Time) (store.Session, error) {
	s.calls.Add(1)
	return s.Sessions.ConsumeNonce(ctx, id, nonce, now)
}
func (s countingSessions) SetClaims(ctx context.Context, id string, claims []byte) error {
	s.calls.Add(1)
	return s.Sessions.SetClaims(ctx, id, claims)
}

type countingJoinTokens struct {
	store.JoinTokens
	calls *atomic.Int64
}

func (j countingJoinTokens) Consume(ctx context.Context, id string) (store.JoinToken, error) {
	j.calls.Add(1)
	return j.JoinTokens.Consume(ctx, id)
}

type countingResources struct {
	store.Resources
	calls *atomic.Int64
}

func (r countingResources) Get(ctx context.Context, path string) (store.Resource, error) {
	r.calls.Add(1)
	return r.Resources.Get(ctx, path)
}

// TestRoundTripsPerRequest counts the store calls, so PostgreSQL round
// trips, of a full RCAR (auth, then attest) and of a resource GET with an
// attestation token, over HTTP: the figures behind the N-replica estimate
// in docs/broker.md.
func TestRoundTripsPerRequest(t *testing.T) {
	var calls atomic.Int64
	base := openSQLite(t)()
	rs := newReplicaSet(t, 1, func() store.Store { return countingStore{base, &calls} })
	hc := http.DefaultClient
	req, _ := http.NewRequest(http.MethodPost, rs.urls[0]+"/kbs/v0/resource/default/key/1", strings.NewReader("value"))
	req.Header.Set("Authorization", "Bearer "+rs.admin)
	resp, err := hc.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("write resource: %v %v", resp, err)
	}
	resp.Body.Close()

	pub := teeKey(t)
	calls.Store(0)
	c := &rcartest.Client{Base: rs.urls[0], HTTP: hc}
	ch, _, err := c.Auth("sample", "")
	if err != nil {
		t.Fatal(err)
	}
	rd, _ := rcartest.ReportData("sha384", pub, ch.Nonce, "")
	tok, err := c.Attest(rcartest.Attestation{
		RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: pub},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: rcartest.SampleEvidence("1", rd)},
	})
	if err != nil {
		t.Fatal(err)
	}
	rcar := calls.Load()

	calls.Store(0)
	req, _ = http.NewRequest(http.MethodGet, rs.urls[0]+"/kbs/v0/resource/default/key/1", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var jwe map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&jwe)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || jwe["ciphertext"] == nil {
		t.Fatalf("resource GET: %d %v", resp.StatusCode, jwe)
	}
	get := calls.Load()
	t.Logf("store round trips: %d per RCAR (auth + attest), %d per resource GET", rcar, get)
	if rcar > 3 || get > 1 {
		t.Fatalf("%d round trips per RCAR, %d per resource GET; want at most 3 and 1", rcar, get)
	}
}
