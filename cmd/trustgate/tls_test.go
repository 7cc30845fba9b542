package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store/sqlite"
	"github.com/trustgate/trustgate/tlsclient"
)

// setKey sets key in table of a TOML document written by
// --print-default-config, as an operator edits it: the first `key = ...`
// line of that table is replaced. table "" is the top level.
func setKey(t testing.TB, doc, table, key, value string) string {
	t.Helper()
	lines := strings.Split(doc, "\n")
	cur := ""
	for i, l := range lines {
		if strings.HasPrefix(l, "[") {
			cur = strings.Trim(l, "[]")
			continue
		}
		if cur == table && strings.HasPrefix(l, key+" = ") {
			lines[i] = key + " = " + value
			return strings.Join(lines, "\n")
		}
	}
	t.Fatalf("no %q in [%s] of the default configuration", key, table)
	return ""
}

// serverConfig writes the default configuration with the edits that
// docs/broker.md ("TLS") documents, plus extra edits, creates the seal key
// with `trustgate server --create-seal-key`, and returns the config path and
// an admin token.
func serverConfig(t testing.TB, dir string, extra func(string) string) (string, string) {
	t.Helper()
	var out bytes.Buffer
	if code := run([]string{"server", "--print-default-config"}, &out, io.Discard); code != 0 {
		t.Fatal("--print-default-config failed")
	}
	doc := out.String()
	doc = setKey(t, doc, "", "listen", fmt.Sprintf("%q", freeAddr(t)))
	doc = setKey(t, doc, "store", "path", fmt.Sprintf("%q", filepath.Join(dir, "trustgate.db")))
	doc = setKey(t, doc, "keys", "seal_key_file", fmt.Sprintf("%q", filepath.Join(dir, "seal.key")))
	doc = setKey(t, doc, "admin", "public_key_file", fmt.Sprintf("%q", filepath.Join(dir, "admin.pub")))
	doc = setKey(t, doc, "admin", "socket_path", fmt.Sprintf("%q", filepath.Join(dir, "admin.sock")))
	doc = setKey(t, doc, "tls", "bundle_file", fmt.Sprintf("%q", filepath.Join(dir, "bundle.pem")))
	doc = setKey(t, doc, "attestors.sample", "enabled", "true")
	path := filepath.Join(dir, "server.toml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	admin, err := broker.NewDevAdmin(dir, time.Hour) // writes admin.pub
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	if code := run([]string{"server", "--create-seal-key", "--config", path}, io.Discard, &errb); code != 0 {
		t.Fatalf("--create-seal-key: %s", errb.String())
	}
	if extra != nil {
		if err := os.WriteFile(path, []byte(extra(doc)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return path, admin.Token
}

// freeAddr is a loopback address with a port free at the time of the call.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// runningServer is a `trustgate server` process.
type runningServer struct {
	api, metrics string
	cmd          *exec.Cmd
	mu           sync.Mutex
	logs         bytes.Buffer
}

// metricsBase waits for the metrics address to be logged.
func (s *runningServer) metricsBase(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		m := s.metrics
		s.mu.Unlock()
		if m != "" {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics address logged: %s", s.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *runningServer) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

// startServer runs `trustgate server` with args as a process and waits for
// its "broker listening" record.
func startServer(t testing.TB, args ...string) *runningServer {
	t.Helper()
	cmd := command(append([]string{"server", "--log-format", "json", "--log-level", "debug"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &runningServer{cmd: cmd}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.logs.WriteString(line + "\n")
			s.mu.Unlock()
			var rec struct{ Msg, Addr string }
			_ = json.Unmarshal([]byte(line), &rec)
			switch rec.Msg {
			case "metrics listening":
				s.mu.Lock()
				s.metrics = strings.TrimSuffix(rec.Addr, "/metrics")
				s.mu.Unlock()
			case "broker listening":
				s.api = rec.Addr
				close(ready)
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("server log:\n%s", s.log())
		}
	})
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("server did not start: %s", s.log())
	}
	return s
}

func bundleClient(t *testing.T, o tlsclient.Options) *http.Client {
	t.Helper()
	hc, err := tlsclient.HTTPClient(o)
	if err != nil {
		t.Fatal(err)
	}
	return hc
}

func get(t *testing.T, hc *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func teePub(t *testing.T) map[string]string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := k.PublicKey.Bytes()
	enc := base64.RawURLEncoding.EncodeToString
	return map[string]string{"kty": "EC", "crv": "P-256", "alg": "ES256", "x": enc(b[1:33]), "y": enc(b[33:65])}
}

// attestSample runs RCAR with the sample TEE through hc.
func attestSample(t *testing.T, hc *http.Client, api string) string {
	t.Helper()
	c := &rcartest.Client{Base: api, HTTP: hc}
	ch, cookie, err := c.Auth("sample", nil)
	if err != nil {
		t.Fatalf("auth: %v", err)
	}
	if strings.HasPrefix(api, "https://") && !cookie.Secure {
		t.Error("session cookie set over TLS is not Secure")
	}
	pub := teePub(t)
	alg, _ := ch.ExtraParams["selected-hash-algorithm"].(string)
	rd, err := rcartest.ReportData(alg, pub, ch.Nonce, "")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Attest(rcartest.Attestation{
		RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: pub},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: rcartest.SampleEvidence("1", rd)},
	})
	if err != nil || strings.Count(tok, ".") != 2 {
		t.Fatalf("attest: %q %v", tok, err)
	}
	return tok
}

// TestServerTLSFromDefaultConfig starts a non-dev server from the default
// configuration and the documented edits (TLS mode "ca"): a client with the
// bundle attests, one without fails verification, the serving certificate
// renews with overlap, X.509-SVID clients are recognised, foreign chains
// refused, and the probes and metrics answer.
func TestServerTLSFromDefaultConfig(t *testing.T) {
	dir := t.TempDir()
	cfgPath, adminToken := serverConfig(t, dir, func(doc string) string {
		return setKey(t, doc, "tls", "cert_ttl", `"3s"`)
	})
	srv := startServer(t, "--config", cfgPath, "--metrics-addr", "127.0.0.1:0")
	if !strings.HasPrefix(srv.api, "https://") {
		t.Fatalf("API address %q is not https", srv.api)
	}
	bundlePath := filepath.Join(dir, "bundle.pem")

	// The exported bundle is the file the server wrote.
	var shown bytes.Buffer
	var errb bytes.Buffer
	if code := run([]string{"server", "bundle", "show", "--config", cfgPath}, &shown, &errb); code != 0 {
		t.Fatalf("bundle show: %s", errb.String())
	}
	fromFile, err := tlsclient.LoadBundle(bundlePath)
	if err != nil {
		t.Fatal(err)
	}
	showPath := filepath.Join(dir, "shown.pem")
	if err := os.WriteFile(showPath, shown.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	fromShow, err := tlsclient.LoadBundle(showPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(fromShow) != len(fromFile) || !fromShow[0].Equal(fromFile[0]) {
		t.Fatalf("bundle show (%d roots) differs from bundle_file (%d roots)", len(fromShow), len(fromFile))
	}

	// Without the bundle, verification fails.
	_, err = (&http.Client{Timeout: 5 * time.Second}).Get(srv.api + "/healthz")
	var unknown x509.UnknownAuthorityError
	if err == nil || !errors.As(err, &unknown) {
		t.Fatalf("client without the bundle: %v, want an unknown authority error", err)
	}

	// With it, RCAR works, by host name and by SPIFFE ID.
	hc := bundleClient(t, tlsclient.Options{TrustBundlePath: bundlePath})
	attestSample(t, hc, srv.api)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	byID := bundleClient(t, tlsclient.Options{TrustBundlePath: bundlePath, ServerID: spiffeid.RequireFromSegments(td, "spire", "server")})
	attestSample(t, byID, srv.api)
	wrongID := bundleClient(t, tlsclient.Options{TrustBundlePath: bundlePath, ServerID: spiffeid.RequireFromSegments(td, "not", "the", "server")})
	if _, err := wrongID.Get(srv.api + "/healthz"); err == nil {
		t.Fatal("a client expecting another SPIFFE ID accepted the server")
	}

	// Probes, on the API and the metrics address, and the healthcheck command.
	for _, base := range []string{srv.api} {
		for _, p := range []string{"/healthz", "/readyz"} {
			if resp, body := get(t, hc, base+p); resp.StatusCode != 200 {
				t.Fatalf("%s%s: %d %s", base, p, resp.StatusCode, body)
			}
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if resp, body := get(t, http.DefaultClient, srv.metricsBase(t)+p); resp.StatusCode != 200 {
			t.Fatalf("metrics %s: %d %s", p, resp.StatusCode, body)
		}
	}
	if code := run([]string{"healthcheck", "--config", cfgPath}, io.Discard, &errb); code != 0 {
		t.Fatalf("healthcheck --config: %s", errb.String())
	}
	if code := run([]string{"healthcheck", "--url", srv.api, "--trust-bundle", bundlePath}, io.Discard, &errb); code != 0 {
		t.Fatalf("healthcheck --url --trust-bundle: %s", errb.String())
	}
	errb.Reset()
	if code := run([]string{"healthcheck", "--url", srv.api}, io.Discard, &errb); code != 1 || !strings.Contains(errb.String(), "certificate") {
		t.Fatalf("healthcheck without the bundle: exit %d, %s", code, errb.String())
	}

	// The admin CLI reaches the https server with the bundle.
	var out bytes.Buffer
	errb.Reset()
	t.Setenv(envAdminToken, adminToken)
	if code := run([]string{"jointoken", "create", "--server", srv.api, "--trust-bundle", bundlePath}, &out, &errb); code != 0 || !strings.Contains(out.String(), "token") {
		t.Fatalf("jointoken create over https: exit %d %s %s", code, out.String(), errb.String())
	}

	t.Run("mTLS", func(t *testing.T) { testClientSVIDs(t, srv, dir, cfgPath, bundlePath) })
	t.Run("rotation", func(t *testing.T) { testServingRotation(t, srv, bundlePath) })

	// Metrics, scraped.
	resp, body := get(t, http.DefaultClient, srv.metricsBase(t)+"/metrics")
	if resp.StatusCode != 200 {
		t.Fatalf("metrics: %d", resp.StatusCode)
	}
	for _, want := range []string{
		`trustgate_broker_attestations_total{attestor="sample",result="ok"} 3`,
		`trustgate_broker_attestations_total{attestor="join_token",result="rejected"} 0`,
		`trustgate_broker_request_duration_seconds_bucket{route="POST /kbs/v0/attest",le="+Inf"} 3`,
		`trustgate_broker_request_duration_seconds_count{route="GET /readyz"}`,
		`trustgate_broker_rate_limited_total{group="rcar",limit="client"} 0`,
		`trustgate_broker_plugin_requests_total{method="GET",plugin="resource",verdict="denied"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// testClientSVIDs presents an X.509-SVID signed by the broker's CA (through
// the store and seal key it shares, as a replica would) and one from a
// foreign CA.
func testClientSVIDs(t *testing.T, srv *runningServer, dir, cfgPath, bundlePath string) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "trustgate.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sealer, err := seal.LoadKeyFile(filepath.Join(dir, "seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca, err := svid.New(ctx, svid.DefaultConfig(), td, st, sealer, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromSegments(td, "workload", "mtls-test")
	chain, err := ca.IssueServing(ctx, svid.ServingRequest{Key: &key.PublicKey, ID: id, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	mine := bundleClient(t, tlsclient.Options{TrustBundlePath: bundlePath, SVID: &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}})
	resource := srv.api + "/kbs/v0/resource/default/key/1"
	resp, body := get(t, mine, resource)
	// The deny-all policy refuses, naming the caller: the broker saw the SVID's ID.
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, id.String()) {
		t.Fatalf("mTLS caller: %d %s, want 403 naming %s", resp.StatusCode, body, id)
	}
	// The server's log is read from its stderr concurrently: wait for it.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(srv.log(), `"spiffe_id":"`+id.String()+`"`); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("no audit record of the SVID caller: %s", srv.log())
			break
		}
	}
	anon := bundleClient(t, tlsclient.Options{TrustBundlePath: bundlePath})
	if resp, body := get(t, anon, resource); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("caller without credential: %d %s, want 401", resp.StatusCode, body)
	}

	// A foreign CA's SVID for the same ID fails the handshake.
	fkey, fchain := foreignSVID(t, id)
	foreign := bundleClient(t, tlsclient.Options{TrustBundlePath: bundlePath, SVID: &x509svid.SVID{ID: id, Certificates: fchain, PrivateKey: fkey}})
	if resp, err := foreign.Get(resource); err == nil {
		resp.Body.Close()
		t.Fatalf("foreign chain accepted: %d", resp.StatusCode)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(srv.log(), "client certificate refused") {
		if time.Now().After(deadline) {
			t.Fatalf("refusal not logged: %s", srv.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// foreignSVID is an X.509-SVID for id from a CA outside the bundle.
func foreignSVID(t *testing.T, id spiffeid.ID) (*ecdsa.PrivateKey, []*x509.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "foreign"}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{id.TrustDomain().ID().URL()}}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{id.URL()}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return key, []*x509.Certificate{leaf, caCert}
}

// testServingRotation waits for the 3 s serving certificate to be renewed:
// a connection opened before keeps working on the old certificate, new
// connections get the new one, and both verify against the same bundle.
func testServingRotation(t *testing.T, srv *runningServer, bundlePath string) {
	kept := bundleClient(t, tlsclient.Options{TrustBundlePath: bundlePath})
	resp, _ := get(t, kept, srv.api+"/healthz")
	first := resp.TLS.PeerCertificates[0]
	var renewed *x509.Certificate
	deadline := time.Now().Add(10 * time.Second)
	for renewed == nil {
		fresh := bundleClient(t, tlsclient.Options{TrustBundlePath: bundlePath})
		fresh.Transport.(*http.Transport).DisableKeepAlives = true
		resp, _ := get(t, fresh, srv.api+"/healthz")
		if c := resp.TLS.PeerCertificates[0]; c.SerialNumber.Cmp(first.SerialNumber) != 0 {
			renewed = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serving certificate not renewed within 10s of a 3s lifetime")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !renewed.NotBefore.Before(first.NotAfter) {
		t.Fatalf("no overlap: renewed from %v, old one ended %v", renewed.NotBefore, first.NotAfter)
	}
	resp, _ = get(t, kept, srv.api+"/healthz")
	if resp.TLS.PeerCertificates[0].SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Log("the kept connection was closed; a new one verified the renewed certificate")
	}
	attestSample(t, kept, srv.api)
}

// TestServerCleartextRefused: tls.mode = "off" on 0.0.0.0 without
// insecure_http does not start, says how to fix it, and creates nothing.
func TestServerCleartextRefused(t *testing.T) {
	dir := t.TempDir()
	cfgPath, _ := serverConfig(t, dir, func(doc string) string {
		doc = setKey(t, doc, "", "listen", `"0.0.0.0:0"`)
		return setKey(t, doc, "tls", "mode", `"off"`)
	})
	var errb bytes.Buffer
	if code := run([]string{"server", "--config", cfgPath}, io.Discard, &errb); code == 0 {
		t.Fatal("cleartext on 0.0.0.0 started")
	}
	for _, want := range []string{`listen = "0.0.0.0:0"`, `tls.mode = "ca"`, "insecure_http = true"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("error %q does not say %s", errb.String(), want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "trustgate.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused start created the store: %v", err)
	}
	// With insecure_http, and with --dev on loopback, it serves cleartext.
	okPath, _ := serverConfig(t, t.TempDir(), func(doc string) string {
		doc = setKey(t, doc, "", "listen", `"0.0.0.0:0"`)
		doc = setKey(t, doc, "", "insecure_http", "true")
		return setKey(t, doc, "tls", "mode", `"off"`)
	})
	srv := startServer(t, "--config", okPath)
	if !strings.HasPrefix(srv.api, "http://") || !strings.Contains(srv.log(), "serving cleartext HTTP") {
		t.Fatalf("insecure_http server: %s; log %s", srv.api, srv.log())
	}
	if resp, body := get(t, http.DefaultClient, srv.api+"/readyz"); resp.StatusCode != 200 {
		t.Fatalf("readyz: %d %s", resp.StatusCode, body)
	}
}

// TestServerCertFilesReloaded: in mode "files", certificate files replaced
// on disk are served to new connections without a restart.
func TestServerCertFilesReloaded(t *testing.T) {
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "operator CA"}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writePair := func(serial int64) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalPKCS8PrivateKey(key)
		// As cert-manager and certbot do: new files renamed into place.
		for path, block := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "PRIVATE KEY", Bytes: kder}} {
			if err := os.WriteFile(path+".new", pem.EncodeToMemory(block), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(path+".new", path); err != nil {
				t.Fatal(err)
			}
		}
	}
	writePair(100)
	cfgPath, _ := serverConfig(t, dir, func(doc string) string {
		doc = setKey(t, doc, "tls", "mode", `"files"`)
		doc = setKey(t, doc, "tls", "cert_file", fmt.Sprintf("%q", certFile))
		doc = setKey(t, doc, "tls", "key_file", fmt.Sprintf("%q", keyFile))
		return setKey(t, doc, "tls", "reload_interval", `"100ms"`)
	})
	srv := startServer(t, "--config", cfgPath)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	serial := func() int64 {
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
		resp, _ := get(t, hc, srv.api+"/healthz")
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	if s := serial(); s != 100 {
		t.Fatalf("serving serial %d, want 100", s)
	}
	writePair(200)
	deadline := time.Now().Add(5 * time.Second)
	for serial() != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("replaced certificate not served within 5s: %s", srv.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(srv.log(), "serving certificate reloaded"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("reload not logged")
			break
		}
	}
	// The probe trusts the certificate in cert_file, by its first DNS name.
	var errb bytes.Buffer
	if code := run([]string{"healthcheck", "--config", cfgPath}, io.Discard, &errb); code != 0 {
		t.Fatalf("healthcheck --config in mode files: %s", errb.String())
	}
}

// TestHealthcheckExitCodes: 0 on 200, 1 otherwise, with the reason.
func TestHealthcheckExitCodes(t *testing.T) {
	var errb bytes.Buffer
	if code := run([]string{"healthcheck"}, io.Discard, &errb); code != 1 || !strings.Contains(errb.String(), "--url") {
		t.Fatalf("no target: exit %d %s", code, errb.String())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var ready atomic.Bool
	ready.Store(true)
	go func() {
		_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/readyz" || !ready.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}))
	}()
	defer ln.Close()
	u := "http://" + ln.Addr().String()
	if code := run([]string{"healthcheck", "--url", u}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("ready: exit %d", code)
	}
	ready.Store(false)
	errb.Reset()
	if code := run([]string{"healthcheck", "--url", u}, io.Discard, &errb); code != 1 || !strings.Contains(errb.String(), "503") {
		t.Fatalf("not ready: exit %d %s", code, errb.String())
	}
}
