package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/attest/jointoken"
	"github.com/trustgate/trustgate/attest/sample"
	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/policy"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/sqlite"
	"github.com/trustgate/trustgate/token"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type harness struct {
	opts     broker.Options
	sealer   *seal.Sealer
	st       store.Store
	srv      *broker.Server
	http     *httptest.Server
	clock    *clock
	adminKey *ecdsa.PrivateKey
	dir      string
	sealKey  string
}

type harnessOpts struct {
	rate  broker.RateLimit
	sweep time.Duration
	// plugins builds plugins over the harness's store and sealer.
	plugins func(st store.Store, sealer *seal.Sealer) []plugin.Plugin
	maxBody int64
	metrics prometheus.Registerer
	audit   *slog.Logger
	// policy, when set, is in force from the start.
	policy string
	// tokenService enables /token; an empty Realm becomes the test
	// server's /token.
	tokenService *broker.TokenServiceOptions
	// policyFile, when set, is Options.PolicyFile, polled every 10ms.
	policyFile string
	// log receives the broker's log.
	log *slog.Logger
	// store, when set, is the broker's store instead of a fresh SQLite one.
	store store.Store
}

func newHarness(t testing.TB, ho harnessOpts) *harness {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st := ho.store
	if st == nil {
		db, err := sqlite.Open(ctx, filepath.Join(dir, "trustgate.db"), sqlite.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		st = db
	}
	sealPath := filepath.Join(dir, "seal.key")
	if err := seal.GenerateKeyFile(sealPath); err != nil {
		t.Fatal(err)
	}
	sealer, err := seal.LoadKeyFile(sealPath)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Now()}
	tokens, err := token.Open(ctx, token.Options{Keys: st.Keys(), Sealer: sealer, MaxTokenTTL: 5 * time.Minute, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	adminKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&adminKey.PublicKey)
	pubPath := filepath.Join(dir, "admin.pub")
	if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	admin, err := broker.NewAdminVerifier(broker.AdminConfig{PublicKeyFile: pubPath}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	smp, err := sample.New(td)
	if err != nil {
		t.Fatal(err)
	}
	var plugins []plugin.Plugin
	if ho.plugins != nil {
		plugins = ho.plugins(st, sealer)
	}
	if ho.policy != "" {
		if _, err := st.Policies().Put(ctx, policy.Name, ho.policy); err != nil {
			t.Fatal(err)
		}
	}
	opts := broker.Options{
		Plugins: plugins, MaxBodyBytes: ho.maxBody, Metrics: ho.metrics, Audit: ho.audit,
		Store: st, TrustDomain: td, Issuer: "https://trustgate.test",
		Attestors: []attest.Attestor{smp, jointoken.New(st.JoinTokens(), td, c.Now, nil)},
		Tokens:    tokens, Admin: admin, SessionTTL: time.Minute, TokenTTL: 5 * time.Minute,
		RateLimit: ho.rate, SweepInterval: ho.sweep, Now: c.Now,
		PolicyFile: ho.policyFile, PolicyFilePoll: 10 * time.Millisecond, Log: ho.log,
	}
	hs := httptest.NewUnstartedServer(nil)
	if ts := ho.tokenService; ts != nil {
		o := *ts
		if o.Realm == "" {
			o.Realm = "http://" + hs.Listener.Addr().String() + "/token"
		}
		opts.TokenService = &o
	}
	srv, err := broker.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	hs.Config.Handler = srv
	hs.Start()
	t.Cleanup(hs.Close)
	return &harness{opts: opts, sealer: sealer, st: st, srv: srv, http: hs, clock: c, adminKey: adminKey, dir: dir, sealKey: sealPath}
}

func (h *harness) client() *rcartest.Client {
	return &rcartest.Client{Base: h.http.URL, HTTP: h.http.Client()}
}

func (h *harness) adminToken(t testing.TB) string {
	tok, err := broker.SignAdminToken(h.adminKey, "test-admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// teeKey is a fresh EC public JWK as a client would send.
func teeKey(t testing.TB) map[string]string {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := k.PublicKey.Bytes() // 0x04 || X || Y
	enc := base64.RawURLEncoding.EncodeToString
	return map[string]string{"kty": "EC", "crv": "P-256", "alg": "ES256", "x": enc(b[1:33]), "y": enc(b[33:65])}
}
