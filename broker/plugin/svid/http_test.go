package svid_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/config"
)

// harness serves p under /kbs/v0/svid/ for a fixed caller, as the broker
// would after authentication and policy (without JWE).
func harness(p plugin.Plugin, caller plugin.Caller) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/kbs/v0/"+p.Name()+"/")
		if !ok || p.Access(r.Method) == plugin.Denied {
			http.Error(w, "not served", http.StatusNotFound)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		resp, err := p.Handle(r.Context(), &plugin.Request{Method: r.Method, Path: strings.Split(rest, "/"), Query: r.URL.Query(), Body: body, Caller: caller})
		var pe *plugin.Error
		switch {
		case errors.As(err, &pe):
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(pe.Status)
			_ = json.NewEncoder(w).Encode(map[string]any{"status": pe.Status, "detail": pe.Detail})
			return
		case err != nil:
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", resp.ContentType)
		if resp.Status != 0 {
			w.WriteHeader(resp.Status)
		}
		_, _ = w.Write(resp.Body)
	})
}

func TestOverHTTP(t *testing.T) {
	f := newFixture(t, time.Now(), svid.DefaultConfig())
	srv := httptest.NewTLSServer(harness(f.p, agent()))
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// go-spiffe's federation client reads the bundle endpoint.
	fetched, err := federation.FetchBundle(ctx, td, srv.URL+"/kbs/v0/svid/bundle", federation.WithWebPKIRoots(pool))
	if err != nil {
		t.Fatalf("go-spiffe federation.FetchBundle: %v", err)
	}
	if !fetched.Equal(bundle(t, f.p)) {
		t.Fatal("the bundle over HTTP differs from Bundle()")
	}

	client := srv.Client()
	client.Timeout = 10 * time.Second
	post := func(path string, body []byte) (*http.Response, []byte) {
		t.Helper()
		resp, err := client.Post(srv.URL+path, "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}
	// Two SVIDs, PEM CSRs over HTTP, then a mutual TLS handshake between
	// them with go-spiffe's tlsconfig, each side authorising the other's ID.
	svids := map[string]*x509svid.SVID{}
	for _, id := range []string{agentID, workloadID} {
		key, der := newCSR(t)
		resp, body := post("/kbs/v0/svid/x509?spiffe_id="+url.QueryEscape(id), pemCSR(der))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("x509 for %s: %d %s", id, resp.StatusCode, body)
		}
		var out svid.X509Response
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		s, err := x509svid.Parse([]byte(strings.Join(out.SVID, "")), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
		if err != nil {
			t.Fatalf("go-spiffe x509svid.Parse: %v", err)
		}
		svids[id] = s
	}
	handshake(t, svids[workloadID], svids[agentID], fetched)

	resp, body := post("/kbs/v0/svid/jwt", []byte(`{"spiffe_id":"spiffe://example.org/ns/other/sa/x","audience":["a"]}`))
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "may not hold") {
		t.Fatalf("JWT for a foreign entry: %d %s", resp.StatusCode, body)
	}
	resp, body = post("/kbs/v0/svid/x509", []byte("not a csr"))
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("garbage CSR: %d %s", resp.StatusCode, body)
	}
}

func handshake(t *testing.T, server, client *x509svid.SVID, b *spiffebundle.Bundle) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(server, b, tlsconfig.AuthorizeID(client.ID)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Write([]byte("ok"))
		errc <- err
	}()
	d := &net.Dialer{Timeout: 10 * time.Second}
	cli, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), tlsconfig.MTLSClientConfig(client, b, tlsconfig.AuthorizeID(server.ID)))
	if err != nil {
		t.Fatalf("mTLS handshake: %v", err)
	}
	defer cli.Close()
	_ = cli.SetDeadline(time.Now().Add(10 * time.Second))
	if msg, err := io.ReadAll(io.LimitReader(cli, 2)); err != nil || string(msg) != "ok" {
		t.Fatalf("read over mTLS: %q, %v", msg, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("mTLS server: %v", err)
	}
	peer, err := x509svid.IDFromCert(cli.ConnectionState().PeerCertificates[0])
	if err != nil || peer != server.ID {
		t.Fatalf("peer %v, %v", peer, err)
	}
}

// TestOpenSSLVerifiesChain cross-checks the chain with OpenSSL, an X.509
// implementation independent of Go's: strict mode, TLS client and server
// purposes, and a foreign root refused.
func TestOpenSSLVerifiesChain(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl is not installed (CI installs it)")
	}
	f := newFixture(t, time.Now(), svid.DefaultConfig())
	other := newFixture(t, time.Now(), svid.DefaultConfig())
	dir := t.TempDir()
	// The CSR comes from OpenSSL too, as in docs/plugin-svid.md.
	csrPath := filepath.Join(dir, "web.csr")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if msg, err := exec.CommandContext(ctx, bin, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", filepath.Join(dir, "web.key"), "-subj", "/", "-addext", "subjectAltName=URI:"+workloadID, "-out", csrPath).CombinedOutput(); err != nil {
		t.Fatalf("openssl req: %v\n%s", err, msg)
	}
	csr, err := os.ReadFile(csrPath)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := issueX509(t, f.p, agent(), nil, csr)
	write := func(name string, certs ...*x509.Certificate) string {
		var buf bytes.Buffer
		for _, c := range certs {
			_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	root := write("root.pem", bundle(t, f.p).X509Authorities()...)
	foreign := write("foreign.pem", bundle(t, other.p).X509Authorities()...)
	leaf := filepath.Join(dir, "leaf.pem")
	inter := filepath.Join(dir, "int.pem")
	if err := os.WriteFile(leaf, []byte(out.SVID[0]), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(inter, []byte(out.SVID[1]), 0o600); err != nil {
		t.Fatal(err)
	}
	verify := func(ca, purpose string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := exec.CommandContext(ctx, bin, "verify", "-x509_strict", "-purpose", purpose, "-CAfile", ca, "-untrusted", inter, leaf).CombinedOutput()
		return string(b), err
	}
	for _, purpose := range []string{"sslclient", "sslserver"} {
		if msg, err := verify(root, purpose); err != nil || !strings.Contains(msg, ": OK") {
			t.Fatalf("openssl verify -purpose %s: %v\n%s", purpose, err, msg)
		}
	}
	if msg, err := verify(foreign, "sslclient"); err == nil {
		t.Fatalf("openssl verifies the SVID under a foreign root:\n%s", msg)
	}
}

func TestConfig(t *testing.T) {
	def := svid.DefaultConfig()
	if err := def.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := def
	bad.X509SVIDTTL.Duration = 48 * time.Hour
	bad.RootTTL.Duration = 24 * time.Hour
	bad.BundleRefreshHint.Duration = 24 * time.Hour
	err := bad.Validate()
	for _, want := range []string{"x509_svid_ttl", "root_ttl", "bundle_refresh_hint"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Validate: %v, want a problem with %s", err, want)
		}
	}
	fromTOML := svid.DefaultConfig()
	if err := config.Decode([]byte("x509_svid_ttl = \"2h\"\nintermediate_ttl = \"12h\"\n"), &fromTOML); err != nil || fromTOML.X509SVIDTTL.Duration != 2*time.Hour || fromTOML.IntermediateTTL.Duration != 12*time.Hour {
		t.Fatalf("decode: %v, %+v", err, fromTOML)
	}
	if err := config.Decode([]byte("x509_svid_ttl = \"2 hours\"\n"), &fromTOML); err == nil {
		t.Fatal("a malformed duration decodes")
	}
	if err := config.Decode([]byte("x509_ttl = \"2h\"\n"), &fromTOML); err == nil || !strings.Contains(err.Error(), "x509_ttl") {
		t.Fatalf("an unknown key: %v", err)
	}
	zero := svid.Config{}
	if err := zero.Validate(); err == nil || !strings.Contains(err.Error(), "intermediate_ttl") {
		t.Fatalf("zero config: %v", err)
	}
	if _, err := svid.New(context.Background(), bad, td, openStore(t), newSealer(t), nil, nil); err == nil {
		t.Fatal("New accepts an invalid config")
	}
	if _, err := svid.New(context.Background(), def, spiffeid.TrustDomain{}, openStore(t), newSealer(t), nil, nil); err == nil {
		t.Fatal("New accepts no trust domain")
	}
}
