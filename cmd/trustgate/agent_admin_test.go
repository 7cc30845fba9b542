package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/agentapi/wire"
	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/tlsclient"
)

// TestAgentListEvict runs the real server (TLS mode "ca", svid plugin on),
// attests an agent with a join token from the CLI, and lists and evicts it
// with `trustgate agent list|evict`; the evicted agent's renewal over mTLS
// is then refused by the running server.
func TestAgentListEvict(t *testing.T) {
	dir := t.TempDir()
	cfgPath, adminToken := serverConfig(t, dir, func(doc string) string {
		return setKey(t, doc, "plugins.svid", "enabled", "true")
	})
	srv := startServer(t, "--config", cfgPath)
	bundlePath := filepath.Join(dir, "bundle.pem")
	t.Setenv(envAdminToken, adminToken)
	admin := []string{"--server", srv.api, "--trust-bundle", bundlePath}
	cli := func(args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run(append(args, admin...), &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errb.String())
		}
		return out.String()
	}
	if out := strings.TrimSpace(cli("agent", "list")); out != "[]" {
		t.Fatalf("agent list before any agent: %q", out)
	}
	var jt struct{ Token string }
	if err := json.Unmarshal([]byte(cli("jointoken", "create")), &jt); err != nil || jt.Token == "" {
		t.Fatalf("jointoken create: %v", err)
	}
	hc := bundleClient(t, tlsclient.Options{TrustBundlePath: bundlePath})
	c := &rcartest.Client{Base: srv.api, HTTP: hc}
	ch, _, err := c.Auth("join_token", "")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Attest(rcartest.Attestation{RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: teePub(t)},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: map[string]string{"token": jt.Token}}})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	svidReq := func(hc *http.Client, bearer string) (int, wire.SVIDResponse) {
		b, _ := json.Marshal(wire.SVIDRequest{CSR: csr})
		req, _ := http.NewRequest("POST", srv.api+wire.PathSVID, bytes.NewReader(b))
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out wire.SVIDResponse
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	st, got := svidReq(hc, tok)
	if st != 200 {
		t.Fatalf("agent SVID: %d", st)
	}
	var listed []wire.Agent
	if err := json.Unmarshal([]byte(cli("agent", "list")), &listed); err != nil || len(listed) != 1 || listed[0].SPIFFEID != got.SPIFFEID || listed[0].Evicted {
		t.Fatalf("agent list: %+v %v", listed, err)
	}
	// The agent renews over mTLS with its SVID.
	cert := tls.Certificate{Certificate: got.Chain, PrivateKey: key}
	base := hc.Transport.(*http.Transport).TLSClientConfig.Clone()
	base.Certificates = []tls.Certificate{cert}
	mtls := &http.Client{Transport: &http.Transport{TLSClientConfig: base}}
	if st, _ := svidReq(mtls, ""); st != 200 {
		t.Fatalf("renewal over mTLS: %d", st)
	}
	var evicted wire.Agent
	if err := json.Unmarshal([]byte(cli("agent", "evict", got.SPIFFEID)), &evicted); err != nil || !evicted.Evicted {
		t.Fatalf("agent evict: %+v %v", evicted, err)
	}
	mtls.CloseIdleConnections()
	if st, _ := svidReq(mtls, ""); st != 403 {
		t.Fatalf("renewal after eviction: %d", st)
	}
	var out, errb bytes.Buffer
	if code := run(append([]string{"agent", "evict", "not-an-id"}, admin...), &out, &errb); code == 0 {
		t.Fatal("evict of a malformed ID succeeded")
	}
}
