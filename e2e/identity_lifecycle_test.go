//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trustgate/trustgate/agent/nriplugin"
	"github.com/trustgate/trustgate/e2e/internal/pluginspec"
	"github.com/trustgate/trustgate/pluginauth"
)

// TestIdentityLifecycle runs the identity loop through a process outside
// every container, the deletion of a pod whose workloads hold Workload API
// streams, a restart of the agent, and the agent configured beyond its
// role.
func TestIdentityLifecycle(t *testing.T) {
	e := newIdentityEnv(t, nil)
	s := e.s
	hostAddr := "unix://" + filepath.Join(e.sockDir, "agent.sock")

	// A process outside every container (this test) is attested by its
	// unix: selectors alone: the k8s entry is not its, an entry for
	// unix:uid:0 is.
	t.Run("host process", func(t *testing.T) {
		fetch := func() ([]string, error) {
			c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			xc, err := workloadapi.FetchX509Context(c, workloadapi.WithAddr(hostAddr))
			if err != nil {
				return nil, err
			}
			var ids []string
			for _, sv := range xc.SVIDs {
				ids = append(ids, sv.ID.String())
			}
			return ids, nil
		}
		if ids, err := fetch(); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("the host process with only the k8s entry registered: SVIDs %v, error %v; want PermissionDenied", ids, err)
		}
		const rootID = "spiffe://example.org/host/root"
		entry := e.entry(t, rootID, "unix:uid:0")
		ids, err := fetch()
		if err != nil || !slices.Equal(ids, []string{rootID}) {
			t.Errorf("the host process with an entry for unix:uid:0: SVIDs %v, error %v; want exactly [%s]", ids, err, rootID)
		}
		e.deleteEntry(t, entry)
	})

	// A pod is deleted while its workloads hold FetchX509SVID streams: its
	// container, which runs the client's watch, and a process of the host
	// that joined the container's cgroup (so is attested as that
	// container), opened its stream there, and left again before the
	// deletion, so that the runtime's kill does not end its stream: it
	// must lose the pod's SVID as soon as the agent hears of the deletion.
	// One container, so that the runtime stops it first.
	t.Run("pod deleted", func(t *testing.T) {
		p := s.runPodIn(t, s.podName(t), demoNS, map[string]string{"app": "web"})
		wcfg := e.clientContainer("watch")
		wcfg.Command = []string{clientDest + "/spiffeclient", "watch"}
		wid, err := s.createContainerConfig(p, wcfg)
		if err != nil {
			t.Fatalf("CreateContainer watch: %v", err)
		}
		if err := s.startContainer(wid); err != nil {
			t.Fatalf("StartContainer watch: %v", err)
		}

		into, home := cgroupProcs(t, s.pid(t, wid)), cgroupProcs(t, os.Getpid())
		w := exec.Command("/bin/sh", "-c", `echo $$ > "$1" && exec "$2" watch`, "sh", into, s.client)
		w.Env = append(os.Environ(), demoEnv+"="+hostAddr)
		out, err := w.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		w.Stderr = os.Stderr
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = w.Process.Kill(); _ = w.Wait() })
		lines := make(chan clientOutput, 16)
		go func() {
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				var o clientOutput
				if json.Unmarshal(sc.Bytes(), &o) == nil {
					lines <- o
				}
			}
			close(lines)
		}()
		next := func(what string) clientOutput {
			t.Helper()
			select {
			case o, ok := <-lines:
				if !ok {
					t.Fatalf("the host watcher exited before %s", what)
				}
				return o
			case <-time.After(10 * time.Second):
				t.Fatalf("the host watcher printed nothing for 10s, waiting for %s", what)
			}
			return clientOutput{}
		}
		if o := next("its first SVIDs"); !slices.Contains(o.ids(), demoID) {
			t.Fatalf("the host process in container %s's cgroup: first update %v (%s), want the SVID for %s", wid, o.ids(), o.Error, demoID)
		}
		// The container's watch holds its stream too.
		logPath := filepath.Join(s.dir, "logs", p.name, "watch.log")
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(readFileOr(logPath), demoID) {
			if time.Now().After(deadline) {
				t.Fatalf("the watch container's log has no SVID for %s after 10s:\n%s", demoID, readFileOr(logPath))
			}
			time.Sleep(20 * time.Millisecond)
		}
		if n := e.metric(t, "trustgate_agent_subscribers"); n != 2 {
			t.Fatalf("the agent has %v open streams, want 2 (the container's and the host process's)", n)
		}
		if err := os.WriteFile(home, []byte(strconv.Itoa(w.Process.Pid)), 0o644); err != nil {
			t.Fatalf("move the host watcher back to %s: %v", home, err)
		}

		t0 := time.Now()
		zero := make(chan time.Duration, 1)
		go func() {
			for time.Since(t0) < 10*time.Second {
				if n, err := e.readMetric("trustgate_agent_subscribers"); err == nil && n == 0 {
					zero <- time.Since(t0)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
			close(zero)
		}()
		s.removePod(p)
		removed := time.Since(t0)
		o := next("the pod's deletion")
		lost := time.Unix(0, o.Time).Sub(t0)
		if o.has(demoID) {
			t.Errorf("after the pod's deletion, the host process's stream still carries the SVID for %s", demoID)
		}
		if lost >= time.Second {
			t.Errorf("the host process's stream lost the pod's SVID %v after StopPodSandbox began, want under 1s", lost)
		}
		allGone, ok := <-zero
		if !ok {
			t.Errorf("the agent still has open streams 10s after the pod's deletion")
		}
		t.Logf("pod deleted (StopPodSandbox+RemovePodSandbox %v): the host process's stream lost the SVID after %v (%q); no stream left open after %v",
			removed.Round(time.Millisecond), lost.Round(time.Millisecond), o.Error, allGone.Round(time.Millisecond))
	})

	// The agent restarts (SIGTERM, then the same configuration, its SVID
	// from data_dir): the running container keeps its identity, nothing
	// adjusts it again, and a new container gets exactly one mount and one
	// variable.
	t.Run("agent restart", func(t *testing.T) {
		p := s.runPodIn(t, s.podName(t), demoNS, map[string]string{"app": "web"})
		old := e.runClientContainer(t, p, "before")
		if o, errOut, code := e.fetch(t, old); code != 0 {
			t.Fatalf("before the restart: the client in %s: exit %d %s", old, code, errOut)
		} else {
			e.verify(t, o, demoID)
		}
		pid := s.pid(t, old)
		about := func(id string) func(record) bool {
			return func(r record) bool { return r.str("audit") != "" && r.str("container") == id }
		}
		audits := len(e.gw.find(about(old)))
		spec := s.bundleSpec(t, old)

		e.agent.stop()
		e.startAgent(t)
		e.agent.waitRecord(t, "the plugin's synchronization", 10*time.Second, func(r record) bool {
			n, _ := r["containers"].(float64)
			return r.str("msg") == "nriplugin: synchronized" && n >= 1
		})
		if o, errOut, code := e.fetch(t, old); code != 0 {
			t.Errorf("after the restart: the client in the running container %s: exit %d %s", old, code, errOut)
		} else {
			e.verify(t, o, demoID)
		}
		if n := len(e.gw.find(about(old))); n != audits {
			t.Errorf("the gateway audited %d records about the running container %s after the restart, want none (it was not to be adjusted again)%s", n-audits, old, e.gw.digestIf())
		}
		if now := s.pid(t, old); now != pid {
			t.Errorf("the running container's pid changed across the restart: %d, was %d", now, pid)
		}
		if again := s.bundleSpec(t, old); !slices.Equal(again.Process.Env, spec.Process.Env) || len(again.Mounts) != len(spec.Mounts) {
			t.Errorf("the running container's spec changed across the restart")
		}

		fresh := e.runClientContainer(t, p, "after")
		if m := identityMounts(t, s, fresh); len(m) != 1 {
			t.Errorf("a container created after the restart has %d mounts at %s (%q), want exactly one", len(m), demoDest, m)
		}
		if v := identityEnvs(t, s, fresh); len(v) != 1 {
			t.Errorf("a container created after the restart has %d %s entries (%q), want exactly one", len(v), demoEnv, v)
		}
		if o, errOut, code := e.fetch(t, fresh); code != 0 {
			t.Errorf("after the restart: the client in a new container: exit %d %s", code, errOut)
		} else {
			e.verify(t, o, demoID)
		}
	})

	// The real agent configured to inject elsewhere than its role allows
	// (destination /etc/ssl) is refused: the container is not created,
	// and the gateway audits the denial under the agent's role.
	t.Run("agent beyond its role", func(t *testing.T) {
		cfg := strings.Replace(readFile(t, e.agentCfg), `destination = "`+demoDest+`"`, `destination = "/etc/ssl"`, 1)
		if !strings.Contains(cfg, `"/etc/ssl"`) {
			t.Fatalf("the agent's configuration has no destination = %q to change", demoDest)
		}
		e.agentCfg = filepath.Join(e.dir, "agent-etc-ssl.toml")
		if err := os.WriteFile(e.agentCfg, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		e.agent.stop()
		e.startAgent(t)
		p := s.runPodIn(t, s.podName(t), demoNS, map[string]string{"app": "web"})
		if id, err := e.s.createContainerConfig(p, e.clientContainer("app")); err == nil {
			t.Fatalf("the runtime created container %s with the agent's socket at /etc/ssl; want a refusal%s", id, e.gw.digestIf())
		}
		e.gw.waitRecord(t, "a deny audit record of role workload-identity for pod "+p.ref(), 5*time.Second, func(r record) bool {
			return r.isAudit("deny") && r.str("role") == "workload-identity" && r.str("pod") == p.ref()
		})
	})
}

// TestIdentityRoleRefusesMore: the agent's key, used by another plugin
// (the suite's test plugin, registered as the agent) to ask for anything
// beyond the workload-identity role of examples/nri-identity/gateway.toml,
// is refused by the gateway and audited; exactly what the agent asks for is
// allowed (the control).
func TestIdentityRoleRefusesMore(t *testing.T) {
	s := need(t)
	dir, err := os.MkdirTemp(s.dir, "role")
	if err != nil {
		t.Fatal(err)
	}
	sockDir := filepath.Join(dir, "workload-api")
	for _, d := range []string{sockDir, filepath.Join(dir, "gateway")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	k, err := pluginauth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "agent-nri.key")
	if err := k.WriteFile(key); err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer(demoBase, dir, "/var/run/nri/nri.sock", s.nriSock, "AGENT-PUBLIC-KEY", k.Public().String()).
		Replace(readFile(t, filepath.Join("..", "examples", "nri-identity", "gateway.toml")))
	g := s.startGatewayFile(t, cfg, filepath.Join(dir, "gateway", "nri.sock"))

	exact := pluginspec.Mount{Source: sockDir, Destination: demoDest, Type: "bind", Options: nriplugin.MountOptions}
	endpoint := map[string]string{demoEnv: "unix://" + demoDest + "/agent.sock"}
	with := func(m pluginspec.Mount, f func(*pluginspec.Mount)) []pluginspec.Mount {
		m.Options = slices.Clone(m.Options)
		f(&m)
		return []pluginspec.Mount{m}
	}
	for _, c := range []struct {
		name   string
		spec   pluginspec.Spec
		field  string // the denied field, in the audit record
		allows bool
	}{
		{name: "exactly the agent's adjustment", spec: pluginspec.Spec{Mounts: []pluginspec.Mount{exact}, Env: endpoint}, allows: true},
		{name: "another variable", spec: pluginspec.Spec{Mounts: []pluginspec.Mount{exact}, Env: map[string]string{demoEnv: endpoint[demoEnv], "LD_PRELOAD": "/x.so"}}, field: "env"},
		{name: "a writable mount", spec: pluginspec.Spec{Mounts: with(exact, func(m *pluginspec.Mount) { m.Options = []string{"bind", "rw"} }), Env: endpoint}, field: "mount"},
		{name: "another source", spec: pluginspec.Spec{Mounts: with(exact, func(m *pluginspec.Mount) { m.Source = "/etc" }), Env: endpoint}, field: "mount"},
		{name: "another destination", spec: pluginspec.Spec{Mounts: with(exact, func(m *pluginspec.Mount) { m.Destination = "/etc/ssl" }), Env: endpoint}, field: "mount"},
		{name: "an annotation", spec: pluginspec.Spec{Mounts: []pluginspec.Mount{exact}, Env: endpoint, Annotations: map[string]string{"x": "y"}}, field: "annotation"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := s.runPodIn(t, s.podName(t), demoNS, map[string]string{"app": "web"})
			c.spec.Pod = p.name
			pl := s.startPlugin(t, pluginOpts{Name: agentName, Idx: agentIdx, KeyFile: key, Socket: g.socket, Spec: c.spec})
			defer pl.stop()
			id, err := s.createContainer(p, "app")
			if c.allows {
				if err != nil {
					t.Fatalf("CreateContainer with exactly the agent's adjustment: %v%s", err, g.digestIf())
				}
				if err := s.startContainer(id); err != nil {
					t.Fatalf("StartContainer %s: %v", id, err)
				}
				if m := identityMounts(t, s, id); len(m) != 1 {
					t.Errorf("the container's spec has mounts %q at %s, want the agent's one", m, demoDest)
				}
				return
			}
			if err == nil {
				t.Fatalf("the runtime created container %s with the agent's key asking for %s; want a refusal%s", id, c.name, g.digestIf())
			}
			g.waitRecord(t, fmt.Sprintf("a deny audit record of role workload-identity for pod %s", p.ref()), 5*time.Second, func(r record) bool {
				return r.isAudit("deny") && r.str("role") == "workload-identity" && r.str("pod") == p.ref() &&
					strings.Contains(strings.ToLower(r.str("field")), c.field)
			})
		})
	}
}

// cgroupProcs is the cgroup.procs file of pid's cgroup: in the unified
// hierarchy, or else in the pids hierarchy of cgroup v1 (the nri attestor
// knows a container by any one of its hierarchies).
func cgroupProcs(t testing.TB, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var fs unix.Statfs_t
	v2 := unix.Statfs("/sys/fs/cgroup", &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		if v2 && f[0] == "0" {
			return filepath.Join("/sys/fs/cgroup", f[2], "cgroup.procs")
		}
		if !v2 && slices.Contains(strings.Split(f[1], ","), "pids") {
			return filepath.Join("/sys/fs/cgroup/pids", f[2], "cgroup.procs")
		}
	}
	t.Fatalf("no cgroup to move a process into for pid %d:\n%s", pid, b)
	return ""
}

// readFileOr returns a file's content, or the error's text.
func readFileOr(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
