package broker_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/policy"
)

// TestReplicasPolicyChangeWithinASecond runs two broker servers on one
// PostgreSQL schema: a policy set through replica 0 is in force on replica
// 1 within a second (a change notification, not the minute's refresh).
func TestReplicasPolicyChangeWithinASecond(t *testing.T) {
	rs := newReplicaSet(t, 2, openPostgres(t))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, s := range rs.servers {
		wg.Go(func() { s.Run(ctx) })
	}
	defer func() { cancel(); wg.Wait() }()
	hc := http.DefaultClient
	call := func(method, url, bearer, body string) int {
		t.Helper()
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := call(http.MethodPost, rs.urls[0]+"/kbs/v0/resource/default/key/1", rs.admin, "v"); st != http.StatusOK {
		t.Fatalf("write resource: %d", st)
	}
	pub := teeKey(t)
	c := &rcartest.Client{Base: rs.urls[1], HTTP: hc}
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
	get := func() int { return call(http.MethodGet, rs.urls[1]+"/kbs/v0/resource/default/key/1", tok, "") }
	if st := get(); st != http.StatusOK {
		t.Fatalf("sample-dev policy: GET %d", st)
	}
	// Let replica 1's listener start before the change.
	time.Sleep(300 * time.Millisecond)
	body, _ := json.Marshal(map[string]string{"policy": base64.RawURLEncoding.EncodeToString([]byte(policy.DenyAll))})
	if st := call(http.MethodPost, rs.urls[0]+"/kbs/v0/resource-policy", rs.admin, string(body)); st != http.StatusOK {
		t.Fatalf("set policy on replica 0: %d", st)
	}
	set := time.Now()
	for get() == http.StatusOK {
		if time.Since(set) > time.Second {
			t.Fatal("replica 1 still allows a second after replica 0 denied everything")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
