package nodeattest

import (
	"bytes"
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
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/agent/brokerclient"
	"github.com/trustgate/trustgate/agentapi/wire"
	"github.com/trustgate/trustgate/client/kbs"
)

// writeSVID puts an agent SVID valid until notAfter into dir, as a previous
// run left it.
func writeSVID(t *testing.T, dir string, notAfter time.Time) spiffeid.ID {
	t.Helper()
	id := spiffeid.RequireFromString("spiffe://example.org/spire/agent/join_token/abc")
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id.String())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: notAfter.Add(-time.Hour), NotAfter: notAfter, URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	certs, key, err := (&x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: k}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{CertFile: certs, KeyFile: key} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

func manager(t *testing.T, dir string, canReattest bool, calls *atomic.Int32) *Manager {
	t.Helper()
	m, err := New(Config{DataDir: dir, CanReattest: canReattest, RetryMin: 10 * time.Millisecond,
		Attester: func() (kbs.Attester, error) {
			calls.Add(1)
			return nil, errors.New("no broker in this test")
		}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A valid SVID on disk is used as is: no attestation.
func TestStartUsesTheSVIDOnDisk(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	id := writeSVID(t, dir, time.Now().Add(time.Hour))
	var calls atomic.Int32
	m := manager(t, dir, false, &calls)
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s, err := m.GetX509SVID(); err != nil || s.ID != id || calls.Load() != 0 {
		t.Fatalf("SVID %v %v, attestations %d", s, err, calls.Load())
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Fatalf("data_dir mode %v", st.Mode())
	}
}

// An expired SVID: a join token is never tried again; x509pop and the like
// attest again.
func TestExpiredSVIDReattestsOnlyWhenItCan(t *testing.T) {
	for _, can := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "data")
		writeSVID(t, dir, time.Now().Add(-time.Minute))
		var calls atomic.Int32
		m := manager(t, dir, can, &calls)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := m.Start(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("canReattest=%v: Start %v", can, err)
		}
		if got := calls.Load() > 0; got != can {
			t.Fatalf("canReattest=%v: attester called %d times", can, calls.Load())
		}
	}
}

// svidStub answers POST /agent/v1/svid as the broker does: the CSR's key
// certified for ttl, with NotBefore backdated a minute. It counts calls,
// records each CSR's key, and drops the connection instead of answering
// the first lose requests (a lost answer).
type svidStub struct {
	ttl   time.Duration
	lose  int32
	calls atomic.Int32
	mu    sync.Mutex
	keys  [][]byte
}

// client serves the stub and returns a broker client for it.
func (st *svidStub) client(t *testing.T) *brokerclient.Client {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	id := "spiffe://example.org/spire/agent/join_token/abc"
	u, _ := url.Parse(id)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := st.calls.Add(1)
		var req wire.SVIDRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		csr, err := x509.ParseCertificateRequest(req.CSR)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		st.mu.Lock()
		st.keys = append(st.keys, csr.RawSubjectPublicKeyInfo)
		st.mu.Unlock()
		if n <= st.lose {
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		now := time.Now()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(n) + 1), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(st.ttl),
			URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, csr.PublicKey, caKey)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_ = json.NewEncoder(w).Encode(wire.SVIDResponse{SPIFFEID: id, Chain: [][]byte{der}, ExpiresAt: tmpl.NotAfter.Unix()})
	}))
	t.Cleanup(srv.Close)
	return brokerclient.New(srv.URL, srv.Client())
}

// A first SVID whose answer was lost is asked for again with the same
// attestation token and the same key, which the broker accepts (it spends
// a token on one key); a new key would be refused.
func TestFirstSVIDRetriesWithTheSameKey(t *testing.T) {
	st := &svidStub{ttl: time.Hour, lose: 2}
	m, err := New(Config{DataDir: filepath.Join(t.TempDir(), "data"), Broker: st.client(t), Bootstrap: http.DefaultClient, RetryMin: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.firstSVID(context.Background(), "token"); err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.keys) != 3 || !bytes.Equal(st.keys[0], st.keys[1]) || !bytes.Equal(st.keys[1], st.keys[2]) {
		t.Fatalf("%d requests, want 3 for one key", len(st.keys))
	}
	if s := m.Current(); s == nil || !bytes.Equal(s.Certificates[0].RawSubjectPublicKeyInfo, st.keys[0]) {
		t.Fatal("the SVID is not for the key asked for")
	}
}

// An SVID shorter than the broker's one-minute backdating is renewed at
// half of what remained when it was issued, not in a loop: the half-life
// counted from NotBefore is already past.
func TestRenewsAtHalfTheRemainingLifetime(t *testing.T) {
	const ttl = 2 * time.Second
	st := &svidStub{ttl: ttl}
	calls := &st.calls
	m, err := New(Config{DataDir: filepath.Join(t.TempDir(), "data"), Broker: st.client(t), RetryMin: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.renew(ctx, nil, "", nil); err != nil {
		t.Fatal(err)
	}
	first := m.Current().Certificates[0].SerialNumber
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	// Before half-life (1 s): no renewal.
	time.Sleep(ttl / 4)
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d SVID requests within a quarter of the lifetime, want 1 (the first)", n)
	}
	deadline := time.Now().Add(3 * ttl)
	for m.Current().Certificates[0].SerialNumber.Cmp(first) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("not renewed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if n := calls.Load(); n > 3 {
		t.Fatalf("%d SVID requests in about one lifetime, want 2 or 3", n)
	}
}
