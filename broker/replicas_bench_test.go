package broker_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/attest/jointoken"
	"github.com/trustgate/trustgate/attest/sample"
	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/resource"
	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/policy"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/postgres"
	"github.com/trustgate/trustgate/store/postgres/pgtest"
	"github.com/trustgate/trustgate/store/sqlite"
	"github.com/trustgate/trustgate/token"
)

// replicaSet is n broker servers, each with its own store handle (its own
// connection pool) on one database, each on its own loopback HTTP server.
type replicaSet struct {
	urls    []string
	stores  []store.Store
	servers []*broker.Server
	admin   string
}

// newReplicaSet builds n replicas over open(), which returns a new handle
// on the shared database each time.
func newReplicaSet(tb testing.TB, n int, open func() store.Store) *replicaSet {
	tb.Helper()
	ctx := context.Background()
	dir := tb.TempDir()
	sealPath := filepath.Join(dir, "seal.key")
	if err := seal.GenerateKeyFile(sealPath); err != nil {
		tb.Fatal(err)
	}
	sealer, err := seal.LoadKeyFile(sealPath)
	if err != nil {
		tb.Fatal(err)
	}
	dev, err := broker.NewDevAdmin(dir, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	rs := &replicaSet{admin: dev.Token}
	for range n {
		st := open()
		tokens, err := token.Open(ctx, token.Options{Keys: st.Keys(), Sealer: sealer, Locks: st.Locks(), Changes: st.Changes()})
		if err != nil {
			tb.Fatal(err)
		}
		admin, err := broker.NewAdminVerifier(broker.AdminConfig{PublicKeyFile: dev.PublicKeyFile}, nil, nil, nil)
		if err != nil {
			tb.Fatal(err)
		}
		smp, err := sample.New(td)
		if err != nil {
			tb.Fatal(err)
		}
		rp, err := resource.New(resource.Options{Resources: st.Resources(), Sealer: sealer})
		if err != nil {
			tb.Fatal(err)
		}
		pol, err := policy.New(ctx, policy.Options{Store: st.Policies(), Default: policy.SampleDev})
		if err != nil {
			tb.Fatal(err)
		}
		srv, err := broker.New(broker.Options{
			Store: st, TrustDomain: td, Issuer: "https://trustgate.test", Policy: pol,
			Attestors: []attest.Attestor{smp, jointoken.New(st.JoinTokens(), td, nil, nil)},
			Tokens:    tokens, Admin: admin, Plugins: []plugin.Plugin{rp},
		})
		if err != nil {
			tb.Fatal(err)
		}
		hs := httptest.NewServer(srv)
		tb.Cleanup(hs.Close)
		rs.urls = append(rs.urls, hs.URL)
		rs.stores = append(rs.stores, st)
		rs.servers = append(rs.servers, srv)
	}
	return rs
}

func openSQLite(tb testing.TB) func() store.Store {
	path := filepath.Join(tb.TempDir(), "trustgate.db")
	var once sync.Once
	var st store.Store
	// One process has one SQLite handle: every "replica" shares it.
	return func() store.Store {
		once.Do(func() {
			db, err := sqlite.Open(context.Background(), path, sqlite.Options{})
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { _ = db.Close() })
			st = db
		})
		return st
	}
}

func openPostgres(tb testing.TB) func() store.Store {
	dsn := pgtest.Schema(tb)
	return func() store.Store {
		db, err := postgres.Open(context.Background(), postgres.Options{DSN: dsn})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = db.Close() })
		return db
	}
}

// benchReplicaRCAR runs b.N RCARs from 64 clients, each auth on one
// replica and attest on the next, and reports attestations/s.
func benchReplicaRCAR(b *testing.B, rs *replicaSet) {
	tr := &http.Transport{MaxIdleConns: benchClients, MaxIdleConnsPerHost: benchClients}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	pub := teeKey(b)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range benchClients {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				n := len(rs.urls)
				c := &rcartest.Client{Base: rs.urls[i%n], HTTP: hc}
				ch, _, err := c.Auth("sample", "")
				if err == nil {
					c.Base = rs.urls[(i+1)%n]
					rd, _ := rcartest.ReportData("sha384", pub, ch.Nonce, "")
					_, err = c.Attest(rcartest.Attestation{
						RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: pub},
						TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: rcartest.SampleEvidence("1", rd)},
					})
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "attestations/s")
}

// BenchmarkRCARReplicas compares the full RCAR rate of one server on
// SQLite with two replicas on one PostgreSQL database, on the same machine:
// both replicas share its cores, so the ratio is the per-attestation cost
// of the shared database, not scale-out.
func BenchmarkRCARReplicas(b *testing.B) {
	b.Run("sqlite-1", func(b *testing.B) { benchReplicaRCAR(b, newReplicaSet(b, 1, openSQLite(b))) })
	b.Run("postgres-2", func(b *testing.B) { benchReplicaRCAR(b, newReplicaSet(b, 2, openPostgres(b))) })
}

// BenchmarkJoinTokenContention has three clients present each join token at
// once, one per replica of three on one PostgreSQL database (64 clients in
// all), and reports tokens consumed per second. Exactly one use per token
// succeeds, or the benchmark fails.
func BenchmarkJoinTokenContention(b *testing.B) {
	rs := newReplicaSet(b, 3, openPostgres(b))
	ctx := context.Background()
	tokens := make([]string, b.N)
	for i := range tokens {
		tok, _, err := jointoken.Create(ctx, rs.stores[0].JoinTokens(), td, time.Hour, "", time.Now())
		if err != nil {
			b.Fatal(err)
		}
		tokens[i] = tok
	}
	tr := &http.Transport{MaxIdleConns: benchClients, MaxIdleConnsPerHost: benchClients}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	pub := teeKey(b)
	uses := make([]atomic.Int32, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range benchClients - benchClients%3 {
		wg.Go(func() {
			// Work items 3t, 3t+1 and 3t+2 present token t on replicas
			// 0, 1 and 2; clients take consecutive items, so the three
			// uses of a token are in flight together.
			for {
				i := int(next.Add(1)) - 1
				if i >= 3*b.N {
					return
				}
				tok, rep := i/3, i%3
				c := &rcartest.Client{Base: rs.urls[rep], HTTP: hc}
				ch, _, err := c.Auth("join_token", "")
				if err != nil {
					b.Error(err)
					return
				}
				_, err = c.Attest(rcartest.Attestation{
					RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: pub},
					TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: map[string]string{"token": tokens[tok]}},
				})
				if err == nil {
					uses[tok].Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	double, unused := 0, 0
	for i := range uses {
		switch uses[i].Load() {
		case 0:
			unused++
		case 1:
		default:
			double++
		}
	}
	if double > 0 || unused > 0 {
		b.Fatalf("%d join tokens used more than once, %d never, of %d", double, unused, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "tokens/s")
	b.ReportMetric(float64(double), "double-uses")
}
