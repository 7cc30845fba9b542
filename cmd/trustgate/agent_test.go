package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trustgate/trustgate/internal/syncbuf"
)

// agentProc is a trustgate process whose JSON log records and standard
// output are kept.
type agentProc struct {
	cmd    *exec.Cmd
	stdout syncbuf.Buffer
	mu     sync.Mutex
	logs   bytes.Buffer
	recs   []map[string]any
	done   chan struct{}
}

func (p *agentProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// waitLog waits for a record with this msg and returns it.
func (p *agentProc) waitLog(t testing.TB, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for _, r := range p.recs {
			if r["msg"] == msg {
				p.mu.Unlock()
				return r
			}
		}
		p.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %q logged: %s", msg, p.log())
	return nil
}

func (p *agentProc) has(msg string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.recs {
		if r["msg"] == msg {
			return true
		}
	}
	return false
}

// stop sends SIGTERM and waits for the exit.
func (p *agentProc) stop(t testing.TB) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("process did not stop: %s", p.log())
	}
}

func startAgentProc(t testing.TB, args ...string) *agentProc {
	t.Helper()
	cmd := command(append(args, "--log-format", "json", "--log-level", "debug")...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, done: make(chan struct{})}
	cmd.Stdout = &p.stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var rec map[string]any
			_ = json.Unmarshal(sc.Bytes(), &rec)
			p.mu.Lock()
			p.logs.WriteString(sc.Text() + "\n")
			if rec != nil {
				p.recs = append(p.recs, rec)
			}
			p.mu.Unlock()
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("log of %s:\n%s", strings.Join(args, " "), p.log())
		}
	})
	return p
}

// rss is a process's resident set size in kB.
func rss(t testing.TB, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// agentEnv is a broker and an agent configured for it, from the default
// configurations as an operator edits them.
type agentEnv struct {
	dir, serverCfg, agentCfg, socket, metrics, agentID string
	admin                                              []string
	srv                                                *runningServer
}

func newAgentEnv(t testing.TB) *agentEnv { return newAgentEnvTTL(t, "") }

// newAgentEnvTTL is newAgentEnv with the broker's x509_svid_ttl (agent and
// workload SVIDs) set to ttl, unless empty.
func newAgentEnvTTL(t testing.TB, ttl string) *agentEnv {
	t.Helper()
	dir := t.TempDir()
	e := &agentEnv{dir: dir}
	e.serverCfg, _ = serverConfig(t, dir, func(doc string) string {
		doc = setKey(t, doc, "plugins.svid", "enabled", "true")
		if ttl != "" {
			doc = setKey(t, doc, "plugins.svid", "x509_svid_ttl", strconv.Quote(ttl))
		}
		return doc
	})
	e.srv = startServer(t, "--config", e.serverCfg)
	e.admin = []string{"--socket", filepath.Join(dir, "admin.sock")}
	var jt struct{ Token string }
	if err := json.Unmarshal([]byte(runOK(t, append([]string{"jointoken", "create"}, e.admin...)...)), &jt); err != nil || jt.Token == "" {
		t.Fatalf("jointoken create: %v", err)
	}
	e.agentID = "spiffe://example.org/spire/agent/join_token/" + jt.Token
	tokenFile := filepath.Join(dir, "join-token")
	if err := os.WriteFile(tokenFile, []byte(jt.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.socket = filepath.Join(dir, "run", "agent.sock")
	e.metrics = freeAddr(t)
	doc := runOK(t, "agent", "--print-default-config")
	for _, kv := range [][3]string{
		{"", "broker_url", strconv.Quote(e.srv.api)},
		{"", "trust_bundle_path", strconv.Quote(filepath.Join(dir, "bundle.pem"))},
		{"", "data_dir", strconv.Quote(filepath.Join(dir, "agent-data"))},
		{"", "socket_path", strconv.Quote(e.socket)},
		{"", "metrics_address", strconv.Quote(e.metrics)},
		{"", "sync_poll_interval", `"200ms"`},
		{"attestor", "join_token_file", strconv.Quote(tokenFile)},
	} {
		doc = setKey(t, doc, kv[0], kv[1], kv[2])
	}
	e.agentCfg = filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(e.agentCfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *agentEnv) createEntry(t testing.TB, spiffeID string, selectors ...string) string {
	t.Helper()
	args := []string{"entry", "create", "--spiffeID", spiffeID, "--parentID", e.agentID}
	for _, s := range selectors {
		args = append(args, "--selector", s)
	}
	var out struct{ ID string }
	if err := json.Unmarshal([]byte(runOK(t, append(args, e.admin...)...)), &out); err != nil || out.ID == "" {
		t.Fatalf("entry create: %v", err)
	}
	return out.ID
}

func (e *agentEnv) addr() workloadapi.ClientOption { return workloadapi.WithAddr("unix://" + e.socket) }

// fetchIDs fetches the caller's X.509-SVIDs once and returns their IDs.
func (e *agentEnv) fetchIDs(ctx context.Context) ([]string, error) {
	svids, err := workloadapi.FetchX509SVIDs(ctx, e.addr())
	var ids []string
	for _, s := range svids {
		ids = append(ids, s.ID.String())
	}
	return ids, err
}

// watcher records every X.509 context pushed on one stream.
type watcher struct {
	ch chan *workloadapi.X509Context
}

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.ch <- c }
func (w watcher) OnX509ContextWatchError(error)                  {}

func ids(c *workloadapi.X509Context) string {
	var out []string
	for _, s := range c.SVIDs {
		out = append(out, s.ID.String())
	}
	slices.Sort(out) // the API orders SVIDs by entry ID
	return strings.Join(out, ",")
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAgentEndToEnd runs the real broker and the real agent, joined by a
// join token, and checks the Workload API with go-spiffe's client: SVIDs
// and JWT-SVIDs that verify against the API's own bundles, deletions
// reaching the stream in under 1 s, serving through a broker outage and
// recovering after it, a restart without a new attestation, PermissionDenied
// for a caller matching nothing, and eviction.
func TestAgentEndToEnd(t *testing.T) {
	e := newAgentEnv(t)
	uidSel := fmt.Sprintf("unix:uid:%d", os.Getuid())
	e.createEntry(t, "spiffe://example.org/workload", uidSel)

	start := time.Now()
	agent := startAgentProc(t, "agent", "--config", e.agentCfg)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	rec := agent.waitLog(t, "workload API listening", 20*time.Second)
	if rec["spiffe_id"] != e.agentID {
		t.Fatalf("agent ID %v, want %s", rec["spiffe_id"], e.agentID)
	}
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(e.addr()))
	if err != nil {
		t.Fatalf("X509Source: %v\n%s", err, agent.log())
	}
	defer src.Close()
	t.Logf("agent start to first SVID served: %v", time.Since(start))
	if os.Getenv("AGENT_LOG") != "" {
		t.Log(agent.log())
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if id, _, err := x509svid.Verify(svid.Certificates, src); err != nil || id.String() != "spiffe://example.org/workload" {
		t.Fatalf("x509svid.Verify: %v %v", id, err)
	}
	for _, mode := range []string{0: "0600"} {
		st, err := os.Stat(filepath.Join(e.dir, "agent-data", "agent_svid.key"))
		if err != nil || fmt.Sprintf("%04o", st.Mode().Perm()) != mode {
			t.Fatalf("agent key on disk: %v %v", st, err)
		}
	}

	// JWT-SVID against the JWT bundles of the same API.
	js, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "e2e"}, e.addr())
	if err != nil {
		t.Fatal(err)
	}
	jb, err := workloadapi.FetchJWTBundles(ctx, e.addr())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := jwtsvid.ParseAndValidate(js.Marshal(), jb, []string{"e2e"}); err != nil || got.ID.String() != "spiffe://example.org/workload" {
		t.Fatalf("jwtsvid.ParseAndValidate: %v %v", got, err)
	}
	if _, err := jwtsvid.ParseAndValidate(js.Marshal(), jb, []string{"other"}); err == nil {
		t.Fatal("a JWT-SVID validated for another audience")
	}

	// A stream sees a new entry, and its deletion in under 1 s.
	client, err := workloadapi.New(ctx, e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	w := watcher{ch: make(chan *workloadapi.X509Context, 100)}
	go func() { _ = client.WatchX509Context(ctx, w) }()
	// waitUpdate waits for the stream to show want and returns the time
	// since t0.
	waitUpdate := func(t0 time.Time, want string, timeout time.Duration) time.Duration {
		t.Helper()
		timer := time.After(timeout)
		for {
			select {
			case c := <-w.ch:
				if ids(c) == want {
					return time.Since(t0)
				}
			case <-timer:
				t.Fatalf("stream never showed %q in %v: %s", want, timeout, agent.log())
			}
		}
	}
	waitUpdate(time.Now(), "spiffe://example.org/workload", 5*time.Second)
	second := e.createEntry(t, "spiffe://example.org/second", uidSel)
	waitUpdate(time.Now(), "spiffe://example.org/second,spiffe://example.org/workload", 5*time.Second)
	runOK(t, append([]string{"entry", "delete", second}, e.admin...)...)
	// From the deletion's commit (the CLI has its answer), not from the
	// CLI's start: starting a process can take a second or more under a
	// full go test ./... on two cores.
	t0 := time.Now()
	if d := waitUpdate(t0, "spiffe://example.org/workload", 5*time.Second); d >= time.Second {
		t.Fatalf("deleted entry left the stream after %v, want < 1s", d)
	} else {
		t.Logf("entry deletion to stream update: %v", d)
	}

	// The broker goes away: the agent still serves, then recovers.
	_ = e.srv.cmd.Process.Kill()
	_ = e.srv.cmd.Wait()
	if got, err := e.fetchIDs(ctx); err != nil || len(got) != 1 {
		t.Fatalf("fetch with the broker down: %v %v", got, err)
	}
	runOK(t, "agent", "healthcheck", "--socketPath", e.socket)
	e.srv = startServer(t, "--config", e.serverCfg)
	e.createEntry(t, "spiffe://example.org/third", uidSel)
	waitUpdate(time.Now(), "spiffe://example.org/third,spiffe://example.org/workload", 20*time.Second)

	// An agent restart does not attest again: the token is gone.
	if err := os.Remove(filepath.Join(e.dir, "join-token")); err != nil {
		t.Fatal(err)
	}
	agent.stop(t)
	if code := agent.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("agent exit %d after SIGTERM: %s", code, agent.log())
	}
	agent = startAgentProc(t, "agent", "--config", e.agentCfg)
	agent.waitLog(t, "workload API listening", 20*time.Second)
	if !agent.has("agent SVID loaded from disk") || agent.has("node attested") {
		t.Fatalf("restarted agent attested again: %s", agent.log())
	}
	waitFor(t, 10*time.Second, "SVIDs after the restart", func() bool {
		got, err := e.fetchIDs(ctx)
		return err == nil && len(got) == 2
	})
	resp, err := http.Get("http://" + e.metrics + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = http.Get("http://" + e.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"trustgate_agent_svids_cached 2", `trustgate_agent_workload_api_calls_total{code="OK",method="FetchX509SVID"}`} {
		if !strings.Contains(string(metrics), m) {
			t.Errorf("metrics lack %q", m)
		}
	}

	// api fetch writes the PEM files.
	out := t.TempDir()
	runOK(t, "agent", "api", "fetch", "x509", "--socketPath", e.socket, "--write", out)
	if _, err := x509svid.Load(filepath.Join(out, "svid.0.pem"), filepath.Join(out, "svid.0.key")); err != nil {
		t.Fatalf("api fetch x509: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "bundle.0.pem")); err != nil {
		t.Fatal(err)
	}
	if tok := strings.TrimSpace(runOK(t, "agent", "api", "fetch", "jwt", "--socketPath", e.socket, "--audience", "e2e")); strings.Count(tok, ".") < 2 {
		t.Fatalf("api fetch jwt: %q", tok)
	}

	// A caller matching no entry: PermissionDenied.
	var list struct{ Entries []struct{ ID string } }
	if err := json.Unmarshal([]byte(runOK(t, append([]string{"entry", "list"}, e.admin...)...)), &list); err != nil || len(list.Entries) != 2 {
		t.Fatalf("entry list: %+v %v", list, err)
	}
	for _, en := range list.Entries {
		runOK(t, append([]string{"entry", "delete", en.ID}, e.admin...)...)
	}
	waitFor(t, 5*time.Second, "PermissionDenied for an unmatched caller", func() bool {
		_, err := e.fetchIDs(ctx)
		return status.Code(err) == codes.PermissionDenied
	})

	// An evicted agent gets nothing more.
	e.createEntry(t, "spiffe://example.org/workload", uidSel)
	waitFor(t, 5*time.Second, "the entry again", func() bool {
		got, err := e.fetchIDs(ctx)
		return err == nil && len(got) == 1
	})
	runOK(t, append([]string{"agent", "evict", e.agentID}, e.admin...)...)
	waitFor(t, 5*time.Second, "PermissionDenied after eviction", func() bool {
		_, err := e.fetchIDs(ctx)
		return status.Code(err) == codes.PermissionDenied
	})
	t.Logf("agent RSS: %d kB", rss(t, agent.cmd.Process.Pid))
}

// TestAgentRenews runs the real broker with 4 s SVIDs: the agent renews its
// own SVID over mTLS at half its lifetime, and the workload's stream gets a
// new SVID before half-life plus one sync.
func TestAgentRenews(t *testing.T) {
	ttl, slack := "4s", time.Second
	if raceEnabled {
		// The race detector slows the agent several-fold.
		slack = 2 * time.Second
	}
	e := newAgentEnvTTL(t, ttl)
	e.createEntry(t, "spiffe://example.org/workload", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	started := time.Now()
	agent := startAgentProc(t, "agent", "--config", e.agentCfg)
	agent.waitLog(t, "workload API listening", 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	w := watcher{ch: make(chan *workloadapi.X509Context, 100)}
	go func() { _ = client.WatchX509Context(ctx, w) }()
	var first *workloadapi.X509Context
	select {
	case first = <-w.ch:
	case <-ctx.Done():
		t.Fatalf("no SVID on the stream: %s", agent.log())
	}
	received := time.Now()
	leaf := first.SVIDs[0].Certificates[0]
	// The broker backdates NotBefore: half-life counts from issuance.
	half := time.Until(leaf.NotAfter) / 2
	if want, _ := time.ParseDuration(ttl); 2*half > want {
		t.Fatalf("the broker ignored x509_svid_ttl: expires in %v", 2*half)
	}
	for {
		select {
		case c := <-w.ch:
			got := c.SVIDs[0].Certificates[0]
			if got.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
				continue
			}
			if late := time.Since(received.Add(half)); late > slack {
				t.Fatalf("rotated %v after half-life", late)
			}
			agent.waitLog(t, "agent SVID renewed", 5*time.Second)
			// The agent's own SVID is renewed at half-life too, not in a
			// loop (the broker backdates NotBefore by a minute).
			if n, most := strings.Count(agent.log(), "agent SVID renewed"), int(time.Since(started)/half)+1; n > most {
				t.Fatalf("the agent renewed its SVID %d times in %v, want at most %d: %s", n, time.Since(started), most, agent.log())
			}
			return
		case <-ctx.Done():
			t.Fatalf("no rotation on the stream: %s", agent.log())
		}
	}
}

// TestAgentInsecureBootstrapPins: an agent with insecure_bootstrap trusts
// the broker only at its first contact. It pins the bundle it gets then
// (data_dir/bootstrap_bundle.pem, the broker's own bundle), and after a
// restart it refuses a broker with another CA at the same address, which
// it would have accepted had the bootstrap stayed insecure.
func TestAgentInsecureBootstrapPins(t *testing.T) {
	e := newAgentEnv(t)
	doc, err := os.ReadFile(e.agentCfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := setKey(t, string(doc), "", "trust_bundle_path", `""`)
	cfg = setKey(t, cfg, "", "insecure_bootstrap", "true")
	if err := os.WriteFile(e.agentCfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e.createEntry(t, "spiffe://example.org/workload", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	agent := startAgentProc(t, "agent", "--config", e.agentCfg)
	agent.waitLog(t, "workload API listening", 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	waitFor(t, 10*time.Second, "the workload's SVID", func() bool {
		ids, err := e.fetchIDs(ctx)
		return err == nil && len(ids) == 1
	})
	pinnedPath := filepath.Join(e.dir, "agent-data", "bootstrap_bundle.pem")
	pinned, err := os.ReadFile(pinnedPath)
	if err != nil {
		t.Fatal(err)
	}
	brokerBundle, err := os.ReadFile(filepath.Join(e.dir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.TrimSpace(pinned), bytes.TrimSpace(brokerBundle)) {
		t.Fatalf("pinned bundle differs from the broker's:\n%s\nwant\n%s", pinned, brokerBundle)
	}
	agent.stop(t)

	// Another broker, with a CA of its own, takes the address.
	_ = e.srv.cmd.Process.Kill()
	_ = e.srv.cmd.Wait()
	other := t.TempDir()
	otherCfg, _ := serverConfig(t, other, func(doc string) string {
		doc = setKey(t, doc, "plugins.svid", "enabled", "true")
		return setKey(t, doc, "", "listen", strconv.Quote(strings.TrimPrefix(e.srv.api, "https://")))
	})
	startServer(t, "--config", otherCfg)
	agent = startAgentProc(t, "agent", "--config", e.agentCfg)
	waitFor(t, 10*time.Second, "the pinned bundle refusing the other broker", func() bool {
		return strings.Contains(agent.log(), "pinned at bootstrap")
	})
}
