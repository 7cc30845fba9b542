package brokerclient

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
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/agent/cache"
	"github.com/trustgate/trustgate/agentapi/wire"
)

func selfSigned(t testing.TB) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestClientSpeaksTheWire checks the requests the client sends and how it
// reads the answers and the errors.
func TestClientSpeaksTheWire(t *testing.T) {
	ca := selfSigned(t)
	pub, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pkix, _ := x509.MarshalPKIXPublicKey(pub.Public())
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+wire.PathEntries, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get(wire.QueryRevision) != "7" || r.URL.Query().Get(wire.QueryWait) != "1s" {
			t.Errorf("entries query %q", r.URL.RawQuery)
		}
		_ = json.NewEncoder(w).Encode(wire.Entries{Revision: 8, Entries: []wire.Entry{{ID: "e1", SPIFFEID: "spiffe://td/w", X509SVIDTTL: 60,
			Selectors: []wire.Selector{{Type: "unix", Value: "uid:1"}}}}})
	})
	mux.HandleFunc("GET "+wire.PathBundle, func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(wire.Bundle{TrustDomain: "td", X509Authorities: [][]byte{ca}, JWTAuthorities: map[string][]byte{"k1": pkix}, RefreshHintSeconds: 30, Sequence: 3})
	})
	mux.HandleFunc("POST "+wire.PathX509, func(w http.ResponseWriter, r *http.Request) {
		var in wire.X509Request
		_ = json.NewDecoder(r.Body).Decode(&in)
		if len(in.Requests) != 2 || in.Requests[0].EntryID != "a" || string(in.Requests[1].CSR) != "csr-b" {
			t.Errorf("x509 request %+v", in)
		}
		_ = json.NewEncoder(w).Encode(wire.X509Response{Results: []wire.X509Result{{EntryID: "a", Chain: [][]byte{ca}}, {EntryID: "b", Error: "not authorized"}}})
	})
	mux.HandleFunc("POST "+wire.PathJWT, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"type":"about:blank","title":"Forbidden","detail":"agent is evicted"}`))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := New(srv.URL, srv.Client())
	ctx := context.Background()

	rev, entries, err := c.Entries(ctx, 7, time.Second)
	if err != nil || rev != 8 || len(entries) != 1 || entries[0].X509SVIDTTL != time.Minute || entries[0].Selectors[0] != (cache.Selector{Type: "unix", Value: "uid:1"}) {
		t.Fatalf("Entries: %d %+v %v", rev, entries, err)
	}
	b, hint, err := c.Bundle(ctx)
	if err != nil || hint != 30*time.Second || len(b.X509Authorities()) != 1 || !b.HasJWTAuthority("k1") {
		t.Fatalf("Bundle: %v %v %v", b, hint, err)
	}
	if seq, ok := b.SequenceNumber(); !ok || seq != 3 {
		t.Fatalf("sequence %d", seq)
	}
	res, err := c.SignX509SVIDs(ctx, []cache.X509Request{{EntryID: "a", CSR: []byte("csr-a")}, {EntryID: "b", CSR: []byte("csr-b")}})
	if err != nil || len(res) != 2 || res[0].Err != nil || len(res[0].Chain) != 1 || res[1].Err == nil {
		t.Fatalf("SignX509SVIDs: %+v %v", res, err)
	}
	_, err = c.MintJWTSVID(ctx, "a", spiffeid.ID{}, []string{"x"})
	var se *StatusError
	if !errors.As(err, &se) || se.Status != 403 || se.Detail != "agent is evicted" || !IsDenied(err) {
		t.Fatalf("MintJWTSVID error: %v", err)
	}
}

// FuzzParseBundle feeds the bundle parser arbitrary broker answers: it must
// never panic, and what it accepts has an X.509 authority.
func FuzzParseBundle(f *testing.F) {
	ca := selfSigned(f)
	seed, _ := json.Marshal(wire.Bundle{TrustDomain: "td", X509Authorities: [][]byte{ca}})
	f.Add(seed)
	f.Add([]byte(`{"trust_domain":"td","x509_authorities":["AAAA"],"jwt_authorities":{"k":"AAAA"}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var w wire.Bundle
		if json.Unmarshal(data, &w) != nil {
			return
		}
		b, err := ParseBundle(w)
		if err == nil && len(b.X509Authorities()) == 0 {
			t.Fatal("accepted a bundle without X.509 authorities")
		}
	})
}
