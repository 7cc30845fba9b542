//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/trustgate/trustgate/pluginauth"
)

// The NRI identity demo's fixed values (examples/nri-identity).
const (
	// demoBase is the directory the example configurations keep every
	// path under; the tests replace it with a directory of their own.
	demoBase = "/var/lib/trustgate-demo"
	// demoID is the SPIFFE ID of the demo's entry, for pods in namespace
	// demoNS labelled app=web.
	demoID = "spiffe://example.org/demo/web"
	demoNS = "demo"
	// demoDest and demoEnv are what the workload-identity role allows.
	demoDest = "/spiffe-workload-api"
	demoEnv  = "SPIFFE_ENDPOINT_SOCKET"
	// clientDest is where the tests mount the go-spiffe client in a
	// container.
	clientDest = "/tg"
	// agentPlugin is the agent's NRI registration.
	agentName, agentIdx = "trustgate-agent", "20"
)

// demoSelectors are the selectors of the demo's entry.
var demoSelectors = []string{"k8s:ns:" + demoNS, "k8s:pod-label:app:web"}

// daemon is a trustgate process (broker or agent) and its JSON log.
type daemon struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string

	mu   sync.Mutex
	recs []record
}

// startDaemon runs trustgate with args until the test ends, its log
// (JSON, debug) in logPath.
func (s *suite) startDaemon(t testing.TB, name, logPath string, args ...string) *daemon {
	t.Helper()
	d := &daemon{name: name, logPath: logPath, done: make(chan struct{})}
	d.cmd = exec.Command(s.trustgate, append([]string{"--log-format", "json", "--log-level", "debug"}, args...)...)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stdout = logf
	if err := d.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(io.TeeReader(stderr, logf))
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			rec := record{}
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				rec = record{"msg": "(not JSON) " + sc.Text()}
			}
			d.mu.Lock()
			d.recs = append(d.recs, rec)
			d.mu.Unlock()
		}
		_ = d.cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	t.Cleanup(d.stop)
	return d
}

// stop ends the process with SIGTERM (SIGKILL after 10 s).
func (d *daemon) stop() { terminate(d.cmd, d.done, 10*time.Second) }

// find returns the records that satisfy pred.
func (d *daemon) find(pred func(record) bool) []record {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []record
	for _, r := range d.recs {
		if pred(r) {
			out = append(out, r)
		}
	}
	return out
}

// waitRecord waits for a record satisfying pred.
func (d *daemon) waitRecord(t testing.TB, what string, timeout time.Duration, pred func(record) bool) record {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if rs := d.find(pred); len(rs) > 0 {
			return rs[0]
		}
		exited := false
		select {
		case <-d.done:
			exited = true
		default:
		}
		if exited || time.Now().After(deadline) {
			t.Fatalf("%s: no %s within %v (exited: %v); its log ends:\n%s", d.name, what, timeout, exited, tail(d.logPath, 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// identityEnv is the NRI identity loop on the suite's containerd, set up
// as examples/nri-identity does: a broker (`trustgate server --dev`), the
// NRI gateway with the workload-identity role, and an agent joined with a
// join token whose NRI plugin dials the gateway with its own key, from the
// example's configuration files.
type identityEnv struct {
	s         *suite
	dir       string // replaces demoBase
	gw        *gateway
	broker    *daemon
	agent     *daemon
	agentCfg  string
	agentID   string
	adminSock string
	sockDir   string // the agent's socket directory on the host
	metrics   string // the agent's metrics address
	// step logs what the setup does, and the commands it runs.
	step func(format string, args ...any)
}

// newIdentityEnv sets the loop up and registers the demo's entry; step,
// if not nil, is told each step.
func newIdentityEnv(t testing.TB, step func(format string, args ...any)) *identityEnv {
	t.Helper()
	s := need(t)
	if step == nil {
		step = func(string, ...any) {}
	}
	dir, err := os.MkdirTemp(s.dir, "id")
	if err != nil {
		t.Fatal(err)
	}
	e := &identityEnv{s: s, dir: dir, step: step, sockDir: filepath.Join(dir, "workload-api"), adminSock: filepath.Join(dir, "admin.sock")}
	for _, d := range []string{e.sockDir, filepath.Join(dir, "gateway")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	k, err := pluginauth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := k.WriteFile(filepath.Join(dir, "agent-nri.key")); err != nil {
		t.Fatal(err)
	}
	step("the agent's NRI key: %s/agent-nri.key (what `trustgate keygen` makes), public key %s in the gateway's workload-identity role", dir, k.Public())
	api, metrics := freeAddr(t), freeAddr(t)
	e.metrics = metrics
	repl := strings.NewReplacer(demoBase, dir, "127.0.0.1:8443", api, "127.0.0.1:9464", metrics,
		"/var/run/nri/nri.sock", s.nriSock, "AGENT-PUBLIC-KEY", k.Public().String())
	cfg := func(name string) string {
		b, err := os.ReadFile(filepath.Join("..", "examples", "nri-identity", name))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(repl.Replace(string(b))), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	// The broker is `trustgate server --dev` with its files in dir: the
	// admin socket and the bundle are where agent.toml and the admin
	// commands expect them, and node agents reach it over HTTPS at api.
	brokerArgs := []string{"server", "--dev", "--dev-dir", dir, "--listen", freeAddr(t), "--dev-agent-listen", api}
	step("broker: trustgate %s", strings.Join(brokerArgs, " "))
	e.broker = s.startDaemon(t, "broker", filepath.Join(dir, "broker.log"), brokerArgs...)
	r := e.broker.waitRecord(t, "\"broker listening for agents\"", 30*time.Second, func(r record) bool { return r.str("msg") == "broker listening for agents" })
	if got := r.str("addr"); got != "https://"+api {
		t.Fatalf("the dev broker serves agents at %s, want https://%s", got, api)
	}
	e.broker.waitRecord(t, "\"broker listening\"", 30*time.Second, func(r record) bool { return r.str("msg") == "broker listening" })

	gwCfg := cfg("gateway.toml")
	step("NRI gateway: trustgate nri-gateway --config %s", gwCfg)
	e.gw = s.startGatewayFile(t, readFile(t, gwCfg), filepath.Join(dir, "gateway", "nri.sock"))

	var jt struct{ Token string }
	if err := json.Unmarshal([]byte(e.cli(t, "jointoken", "create")), &jt); err != nil || jt.Token == "" {
		t.Fatalf("jointoken create: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "join-token"), []byte(jt.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.agentCfg = cfg("agent.toml")
	e.startAgent(t)
	step("agent attested with the join token: %s", e.agentID)
	e.entry(t, demoID, demoSelectors...)
	return e
}

// cli runs a trustgate command against the broker's admin socket (for the
// admin commands) and returns its standard output.
func (e *identityEnv) cli(t testing.TB, args ...string) string {
	t.Helper()
	if args[0] == "jointoken" || args[0] == "entry" {
		args = append(args, "--socket", e.adminSock)
	}
	e.step("$ trustgate %s", strings.Join(args, " "))
	cmd := exec.Command(e.s.trustgate, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("trustgate %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// startAgent runs the agent and waits until its Workload API listens and
// its NRI plugin is synchronized through the gateway.
func (e *identityEnv) startAgent(t testing.TB) {
	t.Helper()
	o := pluginOpts{Name: agentName, Idx: agentIdx, Socket: e.gw.socket}
	before := e.s.readyCount(o)
	e.step("agent: trustgate agent --config %s", e.agentCfg)
	e.agent = e.s.startDaemon(t, "agent", filepath.Join(e.dir, "agent.log"), "agent", "--config", e.agentCfg)
	r := e.agent.waitRecord(t, "\"workload API listening\"", 30*time.Second, func(r record) bool { return r.str("msg") == "workload API listening" })
	e.agentID = r.str("spiffe_id")
	e.s.waitReady(t, o, before)
}

// entry registers an entry under the agent and waits until the agent has
// it; it returns the entry's ID.
func (e *identityEnv) entry(t testing.TB, spiffeID string, selectors ...string) string {
	t.Helper()
	before := e.metric(t, "trustgate_agent_entries")
	args := []string{"entry", "create", "--spiffeID", spiffeID, "--parentID", e.agentID}
	for _, s := range selectors {
		args = append(args, "--selector", s)
	}
	var out struct{ ID string }
	if err := json.Unmarshal([]byte(e.cli(t, args...)), &out); err != nil || out.ID == "" {
		t.Fatalf("entry create: %v", err)
	}
	e.waitMetric(t, "trustgate_agent_entries", 10*time.Second, func(v float64) bool { return v > before })
	return out.ID
}

// deleteEntry deletes an entry and waits until the agent no longer has it.
func (e *identityEnv) deleteEntry(t testing.TB, id string) {
	t.Helper()
	before := e.metric(t, "trustgate_agent_entries")
	e.cli(t, "entry", "delete", id)
	e.waitMetric(t, "trustgate_agent_entries", 10*time.Second, func(v float64) bool { return v < before })
}

// metric reads one unlabelled metric of the agent.
func (e *identityEnv) metric(t testing.TB, name string) float64 {
	t.Helper()
	v, err := e.readMetric(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// readMetric is metric for any goroutine.
func (e *identityEnv) readMetric(name string) (float64, error) {
	resp, err := http.Get("http://" + e.metrics + "/metrics")
	if err != nil {
		return 0, fmt.Errorf("the agent's metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("metric %s: %w", name, err)
			}
			return f, nil
		}
	}
	return 0, fmt.Errorf("the agent has no metric %s", name)
}

// waitMetric waits until ok holds for the agent's metric.
func (e *identityEnv) waitMetric(t testing.TB, name string, timeout time.Duration, ok func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v := e.metric(t, name)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent's %s is %v after %v; agent log ends:\n%s", name, v, timeout, tail(e.agent.logPath, 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bundle is the broker's X.509 trust bundle, from its bundle_file: what
// SVIDs are verified against, not what a workload was told.
func (e *identityEnv) bundle(t testing.TB) *x509bundle.Bundle {
	t.Helper()
	b, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString("example.org"), filepath.Join(e.dir, "bundle.pem"))
	if err != nil {
		t.Fatalf("the broker's bundle: %v", err)
	}
	return b
}

// clientContainer is a sleeping busybox container with the go-spiffe
// client mounted read-only at clientDest, and these mounts too.
func (e *identityEnv) clientContainer(name string, mounts ...*cri.Mount) *cri.ContainerConfig {
	c := containerConfig(name)
	c.Mounts = append([]*cri.Mount{{ContainerPath: clientDest, HostPath: filepath.Dir(e.s.client), Readonly: true}}, mounts...)
	return c
}

// runClientContainer creates and starts a client container in p.
func (e *identityEnv) runClientContainer(t testing.TB, p *pod, name string, mounts ...*cri.Mount) string {
	t.Helper()
	id, err := e.s.createContainerConfig(p, e.clientContainer(name, mounts...))
	if err != nil {
		t.Fatalf("CreateContainer %s in pod %s: %v%s", name, p.ref(), err, e.gw.digestIf())
	}
	if err := e.s.startContainer(id); err != nil {
		t.Fatalf("StartContainer %s: %v", id, err)
	}
	return id
}

// clientOutput is one line of e2e/internal/spiffeclient.
type clientOutput struct {
	Time  int64 `json:"time"`
	SVIDs []struct {
		ID    string `json:"id"`
		Chain string `json:"chain"`
	} `json:"svids"`
	Error string `json:"error"`
}

// ids are the SPIFFE IDs of the SVIDs received.
func (o clientOutput) ids() []string {
	var out []string
	for _, s := range o.SVIDs {
		out = append(out, s.ID)
	}
	return out
}

// has reports whether the SVIDs include one for id.
func (o clientOutput) has(id string) bool {
	for _, s := range o.SVIDs {
		if s.ID == id {
			return true
		}
	}
	return false
}

// fetch runs the go-spiffe client in container id (with env, VAR=value,
// set first) and returns what it printed, its stderr and exit code.
func (e *identityEnv) fetch(t testing.TB, id string, env ...string) (clientOutput, string, int32) {
	t.Helper()
	cmd := []string{clientDest + "/spiffeclient", "-timeout", "5s", "x509"}
	if len(env) > 0 {
		cmd = append(append([]string{"/bin/env"}, env...), cmd...)
	}
	out, errOut, code := e.s.exec(t, id, cmd...)
	var o clientOutput
	if out != "" {
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &o); err != nil {
			t.Fatalf("the client's output %q: %v", out, err)
		}
	}
	return o, errOut, code
}

// verify checks the SVID for want in o against the broker's bundle with
// x509svid.Verify.
func (e *identityEnv) verify(t testing.TB, o clientOutput, want string) {
	t.Helper()
	for _, s := range o.SVIDs {
		if s.ID != want {
			continue
		}
		var certs []*x509.Certificate
		rest := []byte(s.Chain)
		for {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatalf("the SVID for %s: %v", want, err)
			}
			certs = append(certs, c)
		}
		id, _, err := x509svid.Verify(certs, e.bundle(t))
		if err != nil {
			t.Fatalf("x509svid.Verify of the SVID for %s against the broker's bundle: %v", want, err)
		}
		if id.String() != want {
			t.Fatalf("x509svid.Verify: the SVID is for %s, want %s", id, want)
		}
		return
	}
	t.Fatalf("no SVID for %s among %v", want, o.ids())
}

// identityMounts returns the mounts of a container's OCI spec at the
// Workload API destination.
func identityMounts(t testing.TB, s *suite, id string) []string {
	t.Helper()
	var out []string
	for _, m := range s.bundleSpec(t, id).Mounts {
		if m.Destination == demoDest {
			out = append(out, fmt.Sprintf("%s %s %v", m.Source, m.Type, m.Options))
		}
	}
	return out
}

// identityEnvs returns the SPIFFE_ENDPOINT_SOCKET entries of a container's
// OCI spec.
func identityEnvs(t testing.TB, s *suite, id string) []string {
	t.Helper()
	var out []string
	for _, kv := range s.bundleSpec(t, id).Process.Env {
		if strings.HasPrefix(kv, demoEnv+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// readFile returns a file's content.
func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
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
