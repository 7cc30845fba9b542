//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	rspec "github.com/opencontainers/runtime-spec/specs-go"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// podNamespace is the Kubernetes namespace of every pod the suite makes.
const podNamespace = "e2e"

// pod is a running pod sandbox.
type pod struct {
	id   string
	name string
	cfg  *cri.PodSandboxConfig
}

// ref is the pod as the gateway's audit records name it.
func (p *pod) ref() string { return p.cfg.Metadata.Namespace + "/" + p.name }

var unsafeChars = regexp.MustCompile(`[^a-z0-9-]+`)

// podName returns a fresh pod name derived from the test's name.
func (s *suite) podName(t testing.TB) string {
	s.podSeq++
	n := strings.Trim(unsafeChars.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(n) > 40 {
		n = n[len(n)-40:]
	}
	return fmt.Sprintf("%s-%d", strings.Trim(n, "-"), s.podSeq)
}

func ctx(t testing.TB, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// runPod starts a host-network pod named name; the test's cleanup stops
// and removes it.
func (s *suite) runPod(t testing.TB, name string) *pod {
	t.Helper()
	return s.runPodIn(t, name, podNamespace, nil)
}

// runPodIn is runPod in namespace ns, with these pod labels.
func (s *suite) runPodIn(t testing.TB, name, ns string, labels map[string]string) *pod {
	t.Helper()
	p, err := s.startPodIn(name, ns, labels)
	if err != nil {
		t.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	t.Cleanup(func() { s.removePod(p) })
	return p
}

func (s *suite) startPod(name string) (*pod, error) {
	return s.startPodIn(name, podNamespace, nil)
}

func (s *suite) startPodIn(name, ns string, labels map[string]string) (*pod, error) {
	logDir := filepath.Join(s.dir, "logs", name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	cfg := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: name, Namespace: ns, Uid: name + "-uid"},
		Labels:       labels,
		LogDirectory: logDir,
		Linux: &cri.LinuxPodSandboxConfig{
			CgroupParent: "/trustgate-e2e",
			SecurityContext: &cri.LinuxSandboxSecurityContext{
				NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_POD},
			},
		},
	}
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := s.rt.RunPodSandbox(c, &cri.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return nil, err
	}
	return &pod{id: r.PodSandboxId, name: name, cfg: cfg}, nil
}

func (s *suite) removePod(p *pod) {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, _ = s.rt.StopPodSandbox(c, &cri.StopPodSandboxRequest{PodSandboxId: p.id})
	_, _ = s.rt.RemovePodSandbox(c, &cri.RemovePodSandboxRequest{PodSandboxId: p.id})
}

// containerConfig is a busybox container that sleeps, under the runtime's
// default seccomp profile.
func containerConfig(name string) *cri.ContainerConfig {
	return &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: name},
		Image:    &cri.ImageSpec{Image: imageRef},
		Command:  []string{"/bin/sleep", "3600"},
		LogPath:  name + ".log",
		Linux: &cri.LinuxContainerConfig{
			SecurityContext: &cri.LinuxContainerSecurityContext{
				Seccomp:          &cri.SecurityProfile{ProfileType: cri.SecurityProfile_RuntimeDefault},
				NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_POD},
			},
		},
	}
}

// createContainer asks CRI to create a container in p; the error is the
// runtime's, for tests that expect a refusal.
func (s *suite) createContainer(p *pod, name string) (string, error) {
	return s.createContainerConfig(p, containerConfig(name))
}

// createContainerConfig is createContainer with a configuration of the
// test's.
func (s *suite) createContainerConfig(p *pod, cfg *cri.ContainerConfig) (string, error) {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := s.rt.CreateContainer(c, &cri.CreateContainerRequest{PodSandboxId: p.id, Config: cfg, SandboxConfig: p.cfg})
	if err != nil {
		return "", err
	}
	return r.ContainerId, nil
}

func (s *suite) startContainer(id string) error {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := s.rt.StartContainer(c, &cri.StartContainerRequest{ContainerId: id})
	return err
}

// runContainer creates and starts a container, failing the test on error.
func (s *suite) runContainer(t testing.TB, p *pod, name string) string {
	t.Helper()
	id, err := s.createContainer(p, name)
	if err != nil {
		t.Fatalf("CreateContainer %s in pod %s: %v", name, p.name, err)
	}
	if err := s.startContainer(id); err != nil {
		t.Fatalf("StartContainer %s (%s): %v", name, id, err)
	}
	return id
}

// exec runs cmd in the container and returns its output and exit code.
func (s *suite) exec(t testing.TB, id string, cmd ...string) (stdout, stderr string, code int32) {
	t.Helper()
	r, err := s.rt.ExecSync(ctx(t, 30*time.Second), &cri.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 20})
	if err != nil {
		t.Fatalf("ExecSync %v in %s: %v", cmd, id, err)
	}
	return string(r.Stdout), string(r.Stderr), r.ExitCode
}

// status returns the container's CRI status and the runtime's verbose
// info (pid, ...).
func (s *suite) status(t testing.TB, id string) (*cri.ContainerStatus, map[string]any) {
	t.Helper()
	r, err := s.rt.ContainerStatus(ctx(t, 30*time.Second), &cri.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		t.Fatalf("ContainerStatus %s: %v", id, err)
	}
	info := map[string]any{}
	if raw := r.Info["info"]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &info); err != nil {
			t.Fatalf("ContainerStatus %s: verbose info: %v", id, err)
		}
	}
	return r.Status, info
}

// pid is the host pid of the container's process.
func (s *suite) pid(t testing.TB, id string) int {
	t.Helper()
	_, info := s.status(t, id)
	pid, _ := info["pid"].(float64)
	if pid <= 0 {
		t.Fatalf("container %s: no pid in the runtime's verbose status", id)
	}
	return int(pid)
}

// bundleSpec reads the OCI spec that runc was given: config.json in the
// shim's bundle directory.
func (s *suite) bundleSpec(t testing.TB, id string) *rspec.Spec {
	t.Helper()
	path := filepath.Join(s.ctrdDir, "state", "io.containerd.runtime.v2.task", "k8s.io", id, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read the container's bundle spec: %v", err)
	}
	var sp rspec.Spec
	if err := json.Unmarshal(b, &sp); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &sp
}

// environ reads the environment of the container's process from /proc.
func environ(t testing.TB, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Fatalf("read the container process's environment: %v", err)
	}
	out := map[string]string{}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			out[k] = v
		}
	}
	return out
}

// specEnv returns the value of key in the spec's process environment.
func specEnv(sp *rspec.Spec, key string) (string, bool) {
	if sp.Process == nil {
		return "", false
	}
	for _, kv := range sp.Process.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// short abbreviates long values in failure messages.
func short(v string) string {
	if len(v) <= 80 {
		return strconv.Quote(v)
	}
	return fmt.Sprintf("%q... (%d bytes)", v[:60], len(v))
}
