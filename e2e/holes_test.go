//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trustgate/trustgate/e2e/internal/pluginspec"
)

// expectRefused creates a container in p and expects the runtime to refuse
// it. If the runtime created it, the test fails with what diagnose finds
// in the container. It then expects a deny audit record for the pod whose
// field contains field (case-insensitive; "" for any).
func (s *suite) expectRefused(t *testing.T, g *gateway, p *pod, what, field string, diagnose func(id string) string) {
	t.Helper()
	id, err := s.createContainer(p, "app")
	if err == nil {
		found := "(not started)"
		if serr := s.startContainer(id); serr == nil {
			found = diagnose(id)
		} else {
			found = "start failed: " + serr.Error()
		}
		t.Errorf("%s: the runtime created the container; want a refusal. In the container: %s%s", what, found, g.digestIf())
	} else {
		t.Logf("refused as expected: %v", err)
	}
	g.waitRecord(t, fmt.Sprintf("a deny audit record (audit=nri, verdict=deny, pod %s, field ~%q) for %s", p.ref(), field, what), 5*time.Second, func(r record) bool {
		return r.isAudit("deny") && strings.Contains(r.str("pod"), p.name) &&
			strings.Contains(strings.ToLower(r.str("field")), strings.ToLower(field))
	})
}

// TestImpostorRegisteredAsGatewayIsRefused: a plugin that dials
// containerd's socket directly and registers under the gateway's own name,
// 10-trustgate-gateway, must not get its adjustment into a container
// (issue 11, item 2).
func TestImpostorRegisteredAsGatewayIsRefused(t *testing.T) {
	s := need(t)
	pub, _ := s.newKey(t)
	g := s.startGateway(t, "", envRole(pub, "injector"))
	p := s.runPod(t, s.podName(t))
	s.startPlugin(t, pluginOpts{Name: "trustgate-gateway", Idx: "10", Socket: s.nriSock,
		Spec: pluginspec.Spec{Pod: p.name, Env: map[string]string{"TG_INJECTED": "bypass-as-gateway"}}})
	s.expectRefused(t, g, p, "an adjustment by a direct plugin registered as "+gatewayName, "", func(id string) string {
		return "TG_INJECTED=" + short(environ(t, s.pid(t, id))["TG_INJECTED"])
	})
}

// TestForeignUnsolicitedUpdateIsAlerted: a plugin on containerd's socket
// sends an unsolicited UpdateContainers (a 96 MiB memory limit). The
// gateway cannot stop it, but must detect the foreign plugin and alert: a
// WARN or ERROR line naming the plugin (90-foreign) or the container
// (issue 11, item 2).
func TestForeignUnsolicitedUpdateIsAlerted(t *testing.T) {
	s := need(t)
	pub, _ := s.newKey(t)
	g := s.startGateway(t, "", envRole(pub, "injector"))
	p := s.runPod(t, s.podName(t))
	foreign := s.startPlugin(t, pluginOpts{Name: "foreign", Idx: "90", Socket: s.nriSock,
		Spec: pluginspec.Spec{Pod: p.name, UpdateMemoryLimit: 96 << 20}})
	id := s.runContainer(t, p, "app")
	ev := foreign.waitEvent(t, "unsolicited update of "+id, 10*time.Second, 0, func(e pluginspec.Event) bool {
		return e.Event == "update" && e.Container == id
	})
	t.Logf("the foreign plugin's UpdateContainers returned %q; the container's memory limit is now %s (the gateway alone cannot prevent this; containerd's socket permissions and disable_connections can)",
		ev.Error, memoryLimit(t, s.pid(t, id)))
	// More events give a gateway that watches container state a chance.
	s.runContainer(t, p, "second")
	g.waitRecord(t, "a WARN/ERROR record naming the foreign plugin 90-foreign or container "+id, 10*time.Second, func(r record) bool {
		txt := r.String()
		return r.warnOrWorse() && (strings.Contains(txt, "90-foreign") || strings.Contains(txt, id))
	})
}

// memoryLimit reads the memory cgroup limit of a process (cgroup v1 or v2).
func memoryLimit(t testing.TB, pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return err.Error()
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		var path string
		switch {
		case strings.Contains(","+f[1]+",", ",memory,"):
			path = filepath.Join("/sys/fs/cgroup/memory", f[2], "memory.limit_in_bytes")
		case f[0] == "0" && f[1] == "":
			path = filepath.Join("/sys/fs/cgroup", f[2], "memory.max")
		default:
			continue
		}
		if v, err := os.ReadFile(path); err == nil {
			return strings.TrimSpace(string(v))
		}
	}
	return "(unknown)"
}

// TestSlowPluginDoesNotFailCreation: a plugin that sleeps 6 s in
// CreateContainer, with the gateway's default timeouts and containerd's
// default 2 s plugin_request_timeout: the gateway must drop the slow plugin
// before containerd gives up on the gateway, so all 3 creations succeed,
// and the drop is audited (issue 11, item 3).
func TestSlowPluginDoesNotFailCreation(t *testing.T) {
	s := need(t)
	pub, key := s.newKey(t)
	g := s.startGateway(t, "", envRole(pub, "slow"))
	p := s.runPod(t, s.podName(t))
	s.startPlugin(t, pluginOpts{Name: "slow", Idx: "50", KeyFile: key, Socket: g.socket,
		Spec: pluginspec.Spec{Pod: p.name, SleepMillis: 6000, Env: map[string]string{"TG_SLOW": "1"}}})
	failed := 0
	for i := range 3 {
		t0 := time.Now()
		id, err := s.createContainer(p, fmt.Sprintf("app-%d", i))
		if err != nil {
			failed++
			t.Errorf("creation %d/3 failed after %v: %v", i+1, time.Since(t0).Round(time.Millisecond), err)
			continue
		}
		t.Logf("creation %d/3 succeeded in %v", i+1, time.Since(t0).Round(time.Millisecond))
		if err := s.startContainer(id); err != nil {
			t.Errorf("start %d/3: %v", i+1, err)
		}
	}
	if failed > 0 {
		t.Errorf("%d of 3 creations failed because of one slow plugin%s", failed, g.digestIf())
	}
	g.waitRecord(t, "an audit record (audit=nri, plugin 50-slow, verdict other than allow) for the dropped slow plugin", 5*time.Second, func(r record) bool {
		return r.str("audit") == "nri" && r.str("plugin") == "50-slow" && r.str("verdict") != "allow"
	})
}

// TestMountEscapesAreRefused: the mount policy judges what runc will do
// (issue 11, item 4). A role limited to one read-only directory must not
// get the host's / through a relative source (whatever Type says), nor a
// writable bind through ["rbind","ro","rw"].
func TestMountEscapesAreRefused(t *testing.T) {
	s := need(t)
	allowed := filepath.Join(s.dir, "allowed")
	data := filepath.Join(allowed, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "marker"), []byte("allowed-data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pathPub, pathKey := s.newKey(t)
	tmpfsPub, tmpfsKey := s.newKey(t)
	g := s.startGateway(t, "", fmt.Sprintf(`
[[roles]]
role = "one-ro-dir"
keys = [%[1]q]
names = ["mounter"]
indices = ["*"]
[roles.policy.mounts]
sources = ["%[3]s/**"]
destinations = ["/mnt/allowed/*"]
read_only = true

[[roles]]
role = "tmpfs-only"
keys = [%[2]q]
names = ["tmpfser"]
indices = ["*"]
[roles.policy.mounts]
types = ["tmpfs"]
destinations = ["/mnt/allowed/*"]
`, pathPub, tmpfsPub, allowed))
	up := strings.Repeat("../", 8) + ".."
	hostRoot := func(id string) string {
		out, _, code := s.exec(t, id, "/bin/ls", "/mnt/allowed/host")
		return fmt.Sprintf("ls /mnt/allowed/host exited %d: %s", code, strings.Join(strings.Fields(out), " "))
	}
	for _, c := range []struct {
		name, plugin, key string
		mount             pluginspec.Mount
		refuse            bool
		diagnose          func(id string) string
	}{
		{"control-read-only-bind", "mounter", pathKey,
			pluginspec.Mount{Source: data, Destination: "/mnt/allowed/data", Type: "bind", Options: []string{"rbind", "ro"}}, false, nil},
		{"relative-source-typed-as-allowed-path", "mounter", pathKey,
			pluginspec.Mount{Source: up, Destination: "/mnt/allowed/host", Type: allowed + "/x", Options: []string{"rbind", "ro"}}, true, hostRoot},
		{"relative-source-typed-tmpfs", "tmpfser", tmpfsKey,
			pluginspec.Mount{Source: up, Destination: "/mnt/allowed/host", Type: "tmpfs", Options: []string{"rbind", "ro"}}, true, hostRoot},
		{"ro-then-rw", "mounter", pathKey,
			pluginspec.Mount{Source: data, Destination: "/mnt/allowed/data", Type: "bind", Options: []string{"rbind", "ro", "rw"}}, true,
			func(id string) string {
				_, errOut, code := s.exec(t, id, "/bin/touch", "/mnt/allowed/data/written-by-container")
				return fmt.Sprintf("touch in the read-only role's mount exited %d %s", code, strings.TrimSpace(errOut))
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := s.runPod(t, s.podName(t))
			s.startPlugin(t, pluginOpts{Name: c.plugin, Idx: "20", KeyFile: c.key, Socket: g.socket,
				Spec: pluginspec.Spec{Pod: p.name, Mounts: []pluginspec.Mount{c.mount}}})
			if c.refuse {
				s.expectRefused(t, g, p, fmt.Sprintf("mount %+v", c.mount), "mount", c.diagnose)
				return
			}
			id := s.runContainer(t, p, "app")
			if out, errOut, code := s.exec(t, id, "/bin/cat", "/mnt/allowed/data/marker"); code != 0 || out != "allowed-data\n" {
				t.Errorf("control: cat /mnt/allowed/data/marker exited %d: %q %q; want \"allowed-data\"", code, out, errOut)
			}
			if _, errOut, code := s.exec(t, id, "/bin/touch", "/mnt/allowed/data/x"); code == 0 || !strings.Contains(errOut, "Read-only file system") {
				t.Errorf("control: touch in a read-only bind exited %d %q; want \"Read-only file system\"", code, errOut)
			}
		})
	}
}

// TestDeviceImpersonationIsRefused: a role allowed /dev/fuse may add the
// host's /dev/fuse, not a node of that name with another type or numbers,
// such as block 8:0 (a disk) or char 1:1 (/dev/mem) (issue 11, item 5).
func TestDeviceImpersonationIsRefused(t *testing.T) {
	s := need(t)
	pub, key := s.newKey(t)
	g := s.startGateway(t, "", fmt.Sprintf(`
[[roles]]
role = "fuse"
keys = [%q]
names = ["fuser"]
indices = ["*"]
[roles.policy]
devices = ["/dev/fuse"]
`, pub))
	statFuse := func(id string) string {
		out, _, code := s.exec(t, id, "/bin/stat", "-c", "%F %t:%T", "/dev/fuse")
		return fmt.Sprintf("stat /dev/fuse exited %d: %s (type major:minor in hex)", code, strings.TrimSpace(out))
	}
	type devCase struct {
		name   string
		dev    pluginspec.Device
		refuse bool
	}
	cases := []devCase{
		{"block-8:0", pluginspec.Device{Path: "/dev/fuse", Type: "b", Major: 8, Minor: 0}, true},
		{"char-1:1", pluginspec.Device{Path: "/dev/fuse", Type: "c", Major: 1, Minor: 1}, true},
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/dev/fuse", &st); err == nil && st.Mode&syscall.S_IFMT == syscall.S_IFCHR {
		maj, minor := int64(st.Rdev>>8&0xfff), int64(st.Rdev&0xff|(st.Rdev>>12)&0xfff00)
		cases = append([]devCase{{"control-host-node", pluginspec.Device{Path: "/dev/fuse", Type: "c", Major: maj, Minor: minor}, false}}, cases...)
	} else {
		t.Log("the host has no /dev/fuse character device: no control case")
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := s.runPod(t, s.podName(t))
			s.startPlugin(t, pluginOpts{Name: "fuser", Idx: "20", KeyFile: key, Socket: g.socket,
				Spec: pluginspec.Spec{Pod: p.name, Devices: []pluginspec.Device{c.dev}}})
			if c.refuse {
				s.expectRefused(t, g, p, fmt.Sprintf("device %+v", c.dev), "device", statFuse)
				return
			}
			id := s.runContainer(t, p, "app")
			want := fmt.Sprintf("character special file %x:%x", c.dev.Major, c.dev.Minor)
			if got := statFuse(id); !strings.Contains(got, want) {
				t.Errorf("control: %s; want %q", got, want)
			}
		})
	}
}

// TestRuntimeAnnotationsAreRefused: annotations that the runtime
// interprets (crun's run.oci.seccomp_bpf_data replaces the seccomp filter)
// are refused to a role below seccomp "any", even one allowed every
// annotation (issue 11, item 7).
func TestRuntimeAnnotationsAreRefused(t *testing.T) {
	s := need(t)
	pub, key := s.newKey(t)
	g := s.startGateway(t, "", fmt.Sprintf(`
[[roles]]
role = "annotator"
keys = [%q]
names = ["annotator"]
indices = ["*"]
[roles.policy]
annotations = ["*"]
`, pub))
	for _, c := range []struct {
		name, key string
		refuse    bool
	}{
		{"control-ordinary", "example.com/e2e", false},
		{"crun-seccomp-bpf", "run.oci.seccomp_bpf_data", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := s.runPod(t, s.podName(t))
			s.startPlugin(t, pluginOpts{Name: "annotator", Idx: "20", KeyFile: key, Socket: g.socket,
				Spec: pluginspec.Spec{Pod: p.name, Annotations: map[string]string{c.key: "AAAA"}}})
			if c.refuse {
				s.expectRefused(t, g, p, "annotation "+c.key, "annotation", func(id string) string {
					return fmt.Sprintf("annotation %s = %q in the OCI spec", c.key, s.bundleSpec(t, id).Annotations[c.key])
				})
				return
			}
			id := s.runContainer(t, p, "app")
			if got := s.bundleSpec(t, id).Annotations[c.key]; got != "AAAA" {
				t.Errorf("control: annotation %s = %q in the OCI spec, want \"AAAA\"", c.key, got)
			}
		})
	}
}

// TestOKStatusUpdateIsChecked: a plugin answers CreateContainer with a
// ttrpc status of code 0 and message "ok", carrying a 96 MiB memory limit
// for a container of another pod, which its role may not touch. ttrpc
// reads the answer as a success, so the gateway must check its updates
// whatever the status says: the other container's limit stays as it was,
// and the refusal is audited (issue 11, item 6). The control sends the
// same update in an ordinary answer, without a status.
func TestOKStatusUpdateIsChecked(t *testing.T) {
	s := need(t)
	pub, key := s.newKey(t)
	g := s.startGateway(t, "", envRole(pub, "updater"))
	for _, okStatus := range []bool{false, true} {
		name := map[bool]string{false: "control-no-status", true: "status-code-0-message-ok"}[okStatus]
		t.Run(name, func(t *testing.T) {
			victimPod := s.runPod(t, s.podName(t))
			victim := s.runContainer(t, victimPod, "victim")
			before := memoryLimit(t, s.pid(t, victim))
			p := s.runPod(t, s.podName(t))
			spec := pluginspec.Spec{Pod: p.name}
			u := &pluginspec.Update{Container: victim, MemoryLimit: 96 << 20}
			if okStatus {
				spec.OKStatusUpdate = u
			} else {
				spec.CreateUpdate = u
			}
			pl := s.startPlugin(t, pluginOpts{Name: "updater", Idx: "50", KeyFile: key, Socket: g.socket, Spec: spec})
			id, err := s.createContainer(p, "app")
			t.Logf("creation: id %q, err %v", id, err)
			pl.waitEvent(t, "the CreateContainer call", 5*time.Second, 0, func(e pluginspec.Event) bool { return e.Event == "create" })
			time.Sleep(500 * time.Millisecond) // an accepted update is applied right after the creation
			if after := memoryLimit(t, s.pid(t, victim)); after != before {
				t.Errorf("the other pod's container %s: memory limit %s before, %s after; the plugin's update (96 MiB = 100663296) went through unchecked%s",
					victim, before, after, g.digestIf())
			}
			g.waitRecord(t, "a deny audit record (audit=nri, verdict=deny) for the update of container "+victim, 5*time.Second, func(r record) bool {
				return r.isAudit("deny") && r.str("container") == victim
			})
		})
	}
}
