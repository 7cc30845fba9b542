//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trustgate/trustgate/e2e/internal/pluginspec"
	"github.com/trustgate/trustgate/pluginauth"
)

// gatewayName is the gateway's registration with containerd.
const gatewayName = "10-trustgate-gateway"

// newKey writes a fresh plugin key (what `trustgate keygen` does) and
// returns its public half, as a role lists it, and the private key file.
func (s *suite) newKey(t testing.TB) (pub, path string) {
	t.Helper()
	k, err := pluginauth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.dir, "keys")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(dir, "*.key")
	if err != nil {
		t.Fatal(err)
	}
	path = f.Name()
	f.Close()
	os.Remove(path)
	if err := k.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	return k.Public().String(), path
}

// record is one JSON log line of the gateway.
type record map[string]any

func (r record) str(k string) string {
	v, _ := r[k].(string)
	return v
}

func (r record) String() string {
	b, _ := json.Marshal(r)
	return string(b)
}

// isAudit reports whether r is an NRI audit record with verdict v.
func (r record) isAudit(verdict string) bool {
	return r.str("audit") == "nri" && r.str("verdict") == verdict
}

// warnOrWorse reports whether r was logged at WARN or ERROR.
func (r record) warnOrWorse() bool {
	l := r.str("level")
	return l == "WARN" || l == "ERROR"
}

// gateway is a `trustgate nri-gateway` process and its parsed JSON log.
type gateway struct {
	s       *suite
	cfgPath string
	socket  string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}

	mu      sync.Mutex
	records []record
	starts  []int // index in records at each start
}

// startGateway writes a configuration with the given role tables (and
// extra top-level keys) and runs the gateway until the test ends. Keys
// not written here keep the gateway's defaults.
func (s *suite) startGateway(t testing.TB, extra, roles string) *gateway {
	t.Helper()
	dir, err := os.MkdirTemp(s.dir, "gw")
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{s: s, socket: filepath.Join(dir, "nri.sock"), cfgPath: filepath.Join(dir, "gateway.toml"), logPath: filepath.Join(dir, "gateway.log")}
	cfg := fmt.Sprintf(`upstream_socket = %q
socket = %q
state_dir = %q
plugin_name = "trustgate-gateway"
plugin_index = "10"
validate_upstream = true
require_authentication = true
%s
%s`, s.nriSock, g.socket, filepath.Join(dir, "state"), extra, roles)
	return s.runGateway(t, g, cfg)
}

// startGatewayFile runs the gateway on a whole configuration of the
// test's, whose plugin socket is socket.
func (s *suite) startGatewayFile(t testing.TB, cfg, socket string) *gateway {
	t.Helper()
	dir, err := os.MkdirTemp(s.dir, "gw")
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{s: s, socket: socket, cfgPath: filepath.Join(dir, "gateway.toml"), logPath: filepath.Join(dir, "gateway.log")}
	return s.runGateway(t, g, cfg)
}

// runGateway writes cfg to g's configuration file and runs the gateway
// until the test ends.
func (s *suite) runGateway(t testing.TB, g *gateway, cfg string) *gateway {
	t.Helper()
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	g.start(t)
	t.Cleanup(g.stop)
	s.gateways[g.socket] = g
	return g
}

// start runs the gateway and waits until it accepts plugins, which it does
// once containerd has synchronized it, and containerd has added it to its
// plugins.
func (g *gateway) start(t testing.TB) {
	t.Helper()
	upstream := pluginOpts{Idx: "10", Name: "trustgate-gateway", Socket: g.s.nriSock}
	before := g.s.readyCount(upstream)
	// Debug level: NRI logs "plugin ... connected and synchronized" there.
	cmd := exec.Command(g.s.trustgate, "--log-format", "json", "--log-level", "debug", "nri-gateway", "--config", g.cfgPath)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(g.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the gateway: %v", err)
	}
	g.mu.Lock()
	g.cmd = cmd
	g.done = make(chan struct{})
	g.starts = append(g.starts, len(g.records))
	done := g.done
	g.mu.Unlock()
	go func() {
		g.readLog(io.TeeReader(stderr, logf))
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	g.waitRecord(t, "the gateway to accept plugins", 20*time.Second, func(r record) bool { return r.str("msg") == "accepting plugins" })
	g.s.waitReady(t, upstream, before)
}

func (g *gateway) readLog(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		rec := record{}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			rec = record{"msg": "(not JSON) " + sc.Text()}
		}
		g.mu.Lock()
		g.records = append(g.records, rec)
		g.mu.Unlock()
	}
}

// kill ends the gateway abruptly (SIGKILL), as a crash would.
func (g *gateway) kill() {
	g.mu.Lock()
	cmd, done := g.cmd, g.done
	g.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// stop ends the gateway with SIGTERM.
func (g *gateway) stop() {
	g.mu.Lock()
	cmd, done := g.cmd, g.done
	g.mu.Unlock()
	if cmd == nil {
		return
	}
	terminate(cmd, done, 10*time.Second)
}

// terminate sends cmd SIGTERM and waits for done (closed once its Wait
// returned), killing it after grace.
func terminate(cmd *exec.Cmd, done <-chan struct{}, grace time.Duration) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (g *gateway) exited() bool {
	g.mu.Lock()
	done := g.done
	g.mu.Unlock()
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// all returns a copy of every record so far.
func (g *gateway) all() []record {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]record(nil), g.records...)
}

// find returns the records that satisfy pred.
func (g *gateway) find(pred func(record) bool) []record {
	var out []record
	for _, r := range g.all() {
		if pred(r) {
			out = append(out, r)
		}
	}
	return out
}

// waitRecord waits for a record satisfying pred, and fails the test with
// the gateway's warnings and audit records if none comes.
func (g *gateway) waitRecord(t testing.TB, what string, timeout time.Duration, pred func(record) bool) record {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if rs := g.find(pred); len(rs) > 0 {
			return rs[0]
		}
		if time.Now().After(deadline) || g.exited() {
			t.Fatalf("waited %v for %s in the gateway's log; not there. Gateway warnings and audit records:\n%s", timeout, what, g.digest())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// digestIf is digest with a heading, or nothing for a nil gateway (a
// case without one).
func (g *gateway) digestIf() string {
	if g == nil {
		return ""
	}
	return "\ngateway warnings and audit records:\n" + g.digest()
}

// digest lists the records worth reading when a test fails: audit
// records, warnings and errors, and a final line if the gateway exited.
func (g *gateway) digest() string {
	var b strings.Builder
	n := 0
	for _, r := range g.all() {
		if r.str("audit") != "" || r.warnOrWorse() || strings.HasPrefix(r.str("msg"), "(not JSON)") {
			if n++; n > 60 {
				b.WriteString("  ...\n")
				break
			}
			s := r.String()
			if len(s) > 600 {
				s = s[:600] + "..."
			}
			b.WriteString("  " + s + "\n")
		}
	}
	if n == 0 {
		b.WriteString("  (none)\n")
	}
	if g.exited() {
		b.WriteString("  (the gateway process has exited)\n")
	}
	return b.String()
}

// pluginOpts says how to run one test plugin.
type pluginOpts struct {
	Name, Idx string
	// KeyFile, if set, makes the plugin authenticate to Socket, a
	// gateway; otherwise Socket is the runtime's NRI socket.
	KeyFile   string
	Socket    string
	Spec      pluginspec.Spec
	Reconnect bool
}

// plugin is a running test plugin and the events it reported.
type plugin struct {
	o      pluginOpts
	cmd    *exec.Cmd
	errLog string
	done   chan struct{}

	mu     sync.Mutex
	events []pluginspec.Event
}

// startPlugin runs the test plugin and waits until the runtime it
// connects to (containerd or the gateway) has synchronized it and added it
// to its plugins, which the runtime logs.
func (s *suite) startPlugin(t testing.TB, o pluginOpts) *plugin {
	t.Helper()
	before := s.readyCount(o)
	p := s.launchPlugin(t, o)
	p.waitEvent(t, "synchronization", 20*time.Second, 0, func(e pluginspec.Event) bool { return e.Event == "synchronized" })
	s.waitReady(t, o, before)
	return p
}

// readyCount counts the runtime's log lines saying that the plugin o
// connected and was synchronized: NRI's adaptation logs one each time.
func (s *suite) readyCount(o pluginOpts) int {
	name := o.Idx + "-" + o.Name
	if g := s.gateways[o.Socket]; g != nil {
		msg := fmt.Sprintf("plugin %q connected and synchronized", name)
		return len(g.find(func(r record) bool { return r.str("msg") == msg }))
	}
	b, _ := os.ReadFile(s.ctrdLog)
	return strings.Count(string(b), `plugin \"`+name+`\" connected and synchronized`)
}

// waitReady waits until readyCount exceeds before.
func (s *suite) waitReady(t testing.TB, o pluginOpts, before int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for s.readyCount(o) <= before {
		if time.Now().After(deadline) {
			t.Fatalf("plugin %s-%s: the runtime at %s did not log it as connected and synchronized within 20s", o.Idx, o.Name, o.Socket)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// launchPlugin runs the test plugin without waiting for it.
func (s *suite) launchPlugin(t testing.TB, o pluginOpts) *plugin {
	t.Helper()
	dir, err := os.MkdirTemp(s.dir, "plugin-"+o.Name)
	if err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(dir, "spec.json")
	b, err := json.Marshal(o.Spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(specPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-socket", o.Socket, "-name", o.Name, "-idx", o.Idx, "-spec", specPath}
	if o.KeyFile != "" {
		args = append(args, "-key", o.KeyFile)
	}
	if o.Reconnect {
		args = append(args, "-reconnect")
	}
	p := &plugin{o: o, errLog: filepath.Join(dir, "stderr.log"), done: make(chan struct{})}
	p.cmd = exec.Command(s.plugin, args...)
	errf, err := os.Create(p.errLog)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = errf
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start plugin %s: %v", o.Name, err)
	}
	errf.Close()
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e pluginspec.Event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				p.mu.Lock()
				p.events = append(p.events, e)
				p.mu.Unlock()
			}
		}
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *plugin) stop() { terminate(p.cmd, p.done, 5*time.Second) }

// eventsSince returns the events from index from on.
func (p *plugin) eventsSince(from int) []pluginspec.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	if from > len(p.events) {
		return nil
	}
	return append([]pluginspec.Event(nil), p.events[from:]...)
}

// mark is the number of events so far, for waitEvent's from.
func (p *plugin) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.events)
}

// waitEvent waits for an event from index from on that satisfies pred.
func (p *plugin) waitEvent(t testing.TB, what string, timeout time.Duration, from int, pred func(pluginspec.Event) bool) pluginspec.Event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, e := range p.eventsSince(from) {
			if pred(e) {
				return e
			}
		}
		exited := false
		select {
		case <-p.done:
			exited = true
		default:
		}
		if exited || time.Now().After(deadline) {
			t.Fatalf("plugin %s-%s: no %s within %v (exited: %v); its events: %+v; its stderr:\n%s",
				p.o.Idx, p.o.Name, what, timeout, exited, p.eventsSince(0), tail(p.errLog, 15))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
