package sync

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	gosync "sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/agent/brokerclient"
	"github.com/trustgate/trustgate/agent/cache"
	"github.com/trustgate/trustgate/agentapi/wire"
)

type noIssuer struct{}

func (noIssuer) SignX509SVIDs(context.Context, []cache.X509Request) ([]cache.X509Result, error) {
	return nil, errors.New("not in this test")
}

func (noIssuer) MintJWTSVID(context.Context, string, spiffeid.ID, []string) (string, error) {
	return "", errors.New("not in this test")
}

// TestSyncFallsBackAndRecovers: the entries fail twice (503), the syncer
// polls again after PollInterval without a revision, then long-polls with
// the revision it got; the bundle is set before the entries.
func TestSyncFallsBackAndRecovers(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	ca, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	var mu gosync.Mutex
	var queries []string
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+wire.PathBundle, func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(wire.Bundle{TrustDomain: "example.org", X509Authorities: [][]byte{ca}, RefreshHintSeconds: 60, Sequence: 1})
	})
	mux.HandleFunc("GET "+wire.PathEntries, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.URL.RawQuery)
		n := len(queries)
		mu.Unlock()
		if n <= 2 {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if r.URL.Query().Get(wire.QueryRevision) == "5" {
			select { // a long poll that ends with the test
			case <-r.Context().Done():
			case <-time.After(2 * time.Second):
			}
		}
		_ = json.NewEncoder(w).Encode(wire.Entries{Revision: 5, Entries: []wire.Entry{{ID: "e1", SPIFFEID: "spiffe://example.org/w", ParentID: "spiffe://example.org/agent",
			Selectors: []wire.Selector{{Type: "unix", Value: "uid:1"}}}}})
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c, err := cache.New(cache.Config{Issuer: noIssuer{}})
	if err != nil {
		t.Fatal(err)
	}
	var errs int
	s := New(Config{Broker: brokerclient.New(srv.URL, srv.Client()), Cache: c, Wait: 30 * time.Second, PollInterval: 20 * time.Millisecond,
		OnError: func(error) { errs++ }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for !s.Synced() || c.Stats().Entries != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("never synced; queries %q", queries)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for {
		mu.Lock()
		n := len(queries)
		mu.Unlock()
		if n >= 4 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if queries[0] != "" || queries[1] != "" || queries[2] != "" || queries[3] != "revision=5&wait=30s" {
		t.Fatalf("queries %q", queries)
	}
	if errs != 2 {
		t.Fatalf("%d errors reported, want 2", errs)
	}
}
