package nebulaca

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/slackhq/nebula/cert"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/sqlite"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now().Truncate(time.Second)} }

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newStore(t testing.TB) (store.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "t.db")
	st, err := sqlite.Open(context.Background(), path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, path
}

func newSealer(t testing.TB, b byte) *seal.Sealer {
	t.Helper()
	s, err := seal.New(bytes.Repeat([]byte{b}, seal.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testConfig is DefaultConfig limited to 10.42.0.0/16 and fd42::/64, with
// groups and unsafe networks, so every constraint is exercised.
func testConfig() Config {
	c := DefaultConfig()
	c.CANetworks = []string{"10.42.0.0/16", "fd42::/64"}
	c.CAUnsafeNetworks = []string{"192.168.0.0/16", "fd99::/48"}
	c.CAGroups = []string{"web", "db", "ssh"}
	return c
}

func newPlugin(t testing.TB, cfg Config, st store.Store, c *clock) *Plugin {
	t.Helper()
	if st == nil {
		st, _ = newStore(t)
	}
	if c == nil {
		c = newClock()
	}
	p, err := New(context.Background(), cfg, st, newSealer(t, 1), nil, c.Now)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func query(s string) url.Values {
	q, err := url.ParseQuery(s)
	if err != nil {
		panic(err)
	}
	return q
}

// call runs one request through Handle and decodes a 200 answer.
func call(p *Plugin, method, path, rawQuery string, body []byte) (*Credential, error) {
	resp, err := p.Handle(context.Background(), &plugin.Request{
		Method: method, Path: []string{path}, Query: query(rawQuery), Body: body,
	})
	if err != nil {
		return nil, err
	}
	if resp.Status != 0 && resp.Status != http.StatusOK {
		return nil, errors.New(http.StatusText(resp.Status))
	}
	var c Credential
	if err := json.Unmarshal(resp.Body, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func mustGet(t testing.TB, p *Plugin, rawQuery string) *Credential {
	t.Helper()
	c, err := call(p, http.MethodGet, "credential", rawQuery, nil)
	if err != nil {
		t.Fatalf("GET credential?%s: %v", rawQuery, err)
	}
	return c
}

// verify checks crtPEM against the CA bundle with nebula's own cert
// package, as a nebula node would, and returns the certificate.
func verify(t testing.TB, bundle, crtPEM []byte, now time.Time) cert.Certificate {
	t.Helper()
	// NewCAPoolFromPEM checks expiry against the wall clock, so a CA made
	// at a test clock's future time reports ErrExpired; as nebula-cert
	// verify does, keep the pool and verify at now.
	pool, err := cert.NewCAPoolFromPEM(bundle)
	if err != nil && !errors.Is(err, cert.ErrExpired) {
		t.Fatalf("CA bundle: %v", err)
	}
	c, rest, err := cert.UnmarshalCertificateFromPEM(crtPEM)
	if err != nil {
		t.Fatalf("node certificate: %v", err)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("data after the node certificate: %q", rest)
	}
	if _, err := pool.VerifyCertificate(now, c); err != nil {
		t.Fatalf("nebula rejects the node certificate: %v", err)
	}
	return c
}

// wantStatus checks that err is a plugin error with the status, whose
// detail contains substr.
func wantStatus(t testing.TB, err error, status int, substr string) {
	t.Helper()
	var pe *plugin.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T), want a plugin.Error with status %d", err, err, status)
	}
	if pe.Status != status || !bytes.Contains([]byte(pe.Detail), []byte(substr)) {
		t.Fatalf("error %d %q, want %d containing %q", pe.Status, pe.Detail, status, substr)
	}
}
