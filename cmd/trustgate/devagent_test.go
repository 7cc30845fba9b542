package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// TestDevServesAgents runs `trustgate server --dev` and a real
// `trustgate agent` configured from the banner's settings and joined with a
// token from `trustgate jointoken create`: the agent attests over the
// HTTPS listener, gets its SVID, fetches its entries with it as client
// certificate, and serves a workload's X.509-SVID to go-spiffe's client,
// verified against the bundle file. The cleartext API still answers the
// README's requests.
func TestDevServesAgents(t *testing.T) {
	dir := t.TempDir()
	devDir := filepath.Join(dir, "dev")
	srv := startAgentProc(t, "server", "--dev", "--dev-dir", devDir, "--listen", "127.0.0.1:0", "--dev-agent-listen", "127.0.0.1:0")
	rec := srv.waitLog(t, "broker listening", 20*time.Second)
	api, _ := rec["addr"].(string)
	if !strings.HasPrefix(api, "http://127.0.0.1:") || rec["tls"] != "off" {
		t.Fatalf("the API: %v", rec)
	}
	banner := func(re string) string {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(srv.stdout.String())
		if m == nil {
			t.Fatalf("no %s in the banner:\n%s", re, srv.stdout.String())
		}
		return m[1]
	}
	waitFor(t, 10*time.Second, "the banner", func() bool { return strings.Contains(srv.stdout.String(), "stays after exit") })
	brokerURL, err := strconv.Unquote(banner(`broker_url = ("[^"]*")`))
	if err != nil {
		t.Fatal(err)
	}
	bundlePath, err := strconv.Unquote(banner(`trust_bundle_path = ("[^"]*")`))
	if err != nil {
		t.Fatal(err)
	}
	adminSock := banner(`TRUSTGATE_ADMIN_SOCKET=(\S+)`)
	adminToken := banner(`TRUSTGATE_ADMIN_TOKEN=(\S+)`)
	if want := srv.waitLog(t, "broker listening for agents", time.Second)["addr"]; brokerURL != want || !strings.HasPrefix(brokerURL, "https://127.0.0.1:") {
		t.Fatalf("banner's broker_url %s, logged %v", brokerURL, want)
	}
	if bundlePath != filepath.Join(devDir, "bundle.pem") || adminSock != filepath.Join(devDir, "admin.sock") {
		t.Fatalf("--dev-dir not used: bundle %s, admin socket %s", bundlePath, adminSock)
	}

	// The README's requests on the cleartext API: an admin stores a
	// resource with the printed token; the sample TEE attests and reads it.
	req, _ := http.NewRequest(http.MethodPost, api+"/kbs/v0/resource/default/key/1", strings.NewReader("s3cret"))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("store a resource over cleartext: %d %s", resp.StatusCode, body)
	}
	session := filepath.Join(dir, "s.json")
	mustRunClient(t, "attest", "--url", api, "--attestor", "sample", "--session", session)
	if got := mustRunClient(t, "get-resource", "--session", session, "--path", "default/key/1"); strings.TrimSpace(got) != "s3cret" {
		t.Fatalf("get-resource: %q", got)
	}
	// The agents' listener is HTTPS only.
	if resp, err := http.Get(strings.Replace(brokerURL, "https:", "http:", 1) + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("the agents' listener answered cleartext HTTP")
		}
	}

	// An agent configured as the banner says, with a join token.
	var jt struct{ Token string }
	if err := json.Unmarshal([]byte(runOK(t, "jointoken", "create", "--socket", adminSock)), &jt); err != nil || jt.Token == "" {
		t.Fatalf("jointoken create: %v", err)
	}
	tokenFile := filepath.Join(dir, "join-token")
	if err := os.WriteFile(tokenFile, []byte(jt.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	agentID := "spiffe://example.org/spire/agent/join_token/" + jt.Token
	socket := filepath.Join(dir, "run", "agent.sock")
	doc := runOK(t, "agent", "--print-default-config")
	for _, kv := range [][3]string{
		{"", "broker_url", strconv.Quote(brokerURL)},
		{"", "trust_bundle_path", strconv.Quote(bundlePath)},
		{"", "data_dir", strconv.Quote(filepath.Join(dir, "agent-data"))},
		{"", "socket_path", strconv.Quote(socket)},
		{"", "metrics_address", strconv.Quote(freeAddr(t))},
		{"attestor", "join_token_file", strconv.Quote(tokenFile)},
	} {
		doc = setKey(t, doc, kv[0], kv[1], kv[2])
	}
	agentCfg := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(agentCfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	const workload = "spiffe://example.org/dev-workload"
	var entry struct{ ID string }
	out := runOK(t, "entry", "create", "--spiffeID", workload, "--parentID", agentID,
		"--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()), "--socket", adminSock)
	if err := json.Unmarshal([]byte(out), &entry); err != nil || entry.ID == "" {
		t.Fatalf("entry create: %v %s", err, out)
	}

	agent := startAgentProc(t, "agent", "--config", agentCfg)
	if got := agent.waitLog(t, "workload API listening", 20*time.Second)["spiffe_id"]; got != agentID {
		t.Fatalf("agent ID %v, want %s", got, agentID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	x509ctx, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatalf("FetchX509Context: %v\n%s", err, agent.log())
	}
	bundle, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString("example.org"), bundlePath)
	if err != nil {
		t.Fatal(err)
	}
	svid := x509ctx.DefaultSVID()
	if id, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil || id.String() != workload {
		t.Fatalf("x509svid.Verify against %s: %v %v", bundlePath, id, err)
	}
	// The agent's own calls went over mutual TLS: the broker verified its
	// SVID as a client certificate.
	verified := false
	srv.mu.Lock()
	for _, r := range srv.recs {
		verified = verified || r["msg"] == "client certificate verified" && r["spiffe_id"] == agentID
	}
	srv.mu.Unlock()
	if !verified {
		t.Fatalf("the broker verified no client certificate of %s:\n%s", agentID, srv.log())
	}

	// The broker stops promptly while the agent holds a long poll on it:
	// the poll is answered as the shutdown begins, not held for the
	// shutdown's 10 s grace.
	stopping := time.Now()
	srv.stop(t)
	if d := time.Since(stopping); d > 5*time.Second {
		t.Fatalf("the broker took %s to stop with an agent connected", d)
	}
	agent.stop(t)

	// --dev-dir stays after exit, and refuses to start over an earlier run.
	if _, err := os.Stat(filepath.Join(devDir, "trustgate.db")); err != nil {
		t.Fatalf("--dev-dir after exit: %v", err)
	}
	msg := runFail(t, "server", "--dev", "--dev-dir", devDir, "--listen", "127.0.0.1:0", "--dev-agent-listen", "127.0.0.1:0")
	if !strings.Contains(msg, "already holds") {
		t.Fatalf("a second run in the same --dev-dir: %s", msg)
	}
}

// --dev-agent-listen takes loopback addresses only, and the dev flags go
// with --dev; a refused start leaves --dev-dir as it was.
func TestDevFlagsRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--dev", "--dev-dir", dir, "--dev-agent-listen", "0.0.0.0:8443"}, "loopback"},
		{[]string{"--dev", "--dev-dir", dir, "--listen", "0.0.0.0:0", "--dev-agent-listen", "127.0.0.1:0"}, "loopback"},
		{[]string{"--dev-agent-listen", "127.0.0.1:0"}, "--dev-agent-listen goes with --dev"},
		{[]string{"--dev-dir", dir}, "--dev-dir goes with --dev"},
	} {
		if msg := runFail(t, append([]string{"server"}, c.args...)...); !strings.Contains(msg, c.want) {
			t.Errorf("server %v: %q, want %q", c.args, msg, c.want)
		}
	}
	noFiles(t, dir, devFiles...)
}
