package nri

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/trustgate/trustgate/agent/attestor"
)

// hierarchy is a cgroup hierarchy this test may create cgroups in.
type hierarchy struct {
	name, root string
}

// hierarchies returns the writable cgroup hierarchies of this machine: the
// unified one (cgroup v2, pure or hybrid) and v1's pids controller.
func hierarchies(t testing.TB) []hierarchy {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating cgroups needs root")
	}
	var out []hierarchy
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		out = append(out, hierarchy{"v2", "/sys/fs/cgroup"})
	} else if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err == nil {
		out = append(out, hierarchy{"v2-hybrid", "/sys/fs/cgroup/unified"})
	}
	if _, err := os.Stat("/sys/fs/cgroup/pids/cgroup.procs"); err == nil {
		out = append(out, hierarchy{"v1-pids", "/sys/fs/cgroup/pids"})
	}
	if len(out) == 0 {
		t.Skip("no cgroup hierarchy found")
	}
	return out
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// spawnIn starts a sleeping process and moves it into the cgroup rel (a
// path under the hierarchy's root), made for it; both go at cleanup.
func spawnIn(t testing.TB, h hierarchy, rel string) int32 {
	t.Helper()
	dir := filepath.Join(h.root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skipf("cannot create cgroup: %v", err)
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		// Remove the created cgroups, deepest first.
		for p := dir; p != h.root && len(p) > len(h.root); p = filepath.Dir(p) {
			_ = os.Remove(p)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatalf("move into cgroup: %v", err)
	}
	return int32(cmd.Process.Pid)
}

func testPod(id string) *api.PodSandbox {
	return &api.PodSandbox{Id: id, Name: "web-0", Namespace: "demo", Uid: "uid-" + id, RuntimeHandler: "runc",
		Labels: map[string]string{"app": "web", "io.kubernetes.pod.namespace": "demo"}}
}

func testCtr(pod *api.PodSandbox, id, cgroupsPath string, pid int32) *api.Container {
	return &api.Container{Id: id, PodSandboxId: pod.Id, Name: "app", State: api.ContainerState_CONTAINER_RUNNING,
		Pid: uint32(pid), Image: &api.Image{Name: "docker.io/library/nginx:1.27", Digest: "sha256:aa", ConfigDigest: "sha256:bb"},
		Linux: &api.LinuxContainer{CgroupsPath: cgroupsPath}}
}

func has(sel []attestor.Selector, typ, value string) bool {
	return slices.Contains(sel, attestor.Selector{Type: typ, Value: value})
}

// TestRealProcessesMapToTheirContainer: a process in a container's cgroup
// (cgroupfs layout, systemd layout, a child cgroup of the container's)
// gets the container's selectors; the test process, outside every
// container, gets none; once the container is removed, its process
// matches nothing and watchers are told.
func TestRealProcessesMapToTheirContainer(t *testing.T) {
	for _, h := range hierarchies(t) {
		t.Run(h.name, func(t *testing.T) {
			top := "tg-nritest-" + randHex(4)
			a := New(Config{})

			pod := testPod("pod-" + randHex(4))
			idFS, idSD := randHex(16), randHex(16)
			pidFS := spawnIn(t, h, top+"/pod1/"+idFS)
			pidSub := spawnIn(t, h, top+"/pod1/"+idFS+"/sub")
			slice := "tgtest" + randHex(3) + "-pod1.slice"
			sdRel := "tgtest" + slice[6:12] + ".slice/" + slice + "/cri-containerd-" + idSD + ".scope"
			pidSD := spawnIn(t, h, sdRel)
			t.Cleanup(func() { _ = os.Remove(filepath.Join(h.root, filepath.Dir(filepath.Dir(sdRel)))) })

			ctrFS := testCtr(pod, idFS, "/"+top+"/pod1/"+idFS, pidFS)
			ctrSD := testCtr(pod, idSD, slice+":cri-containerd:"+idSD, pidSD)
			ctrSD.Name = "sidecar"
			a.Synchronize([]*api.PodSandbox{pod}, []*api.Container{ctrFS, ctrSD})

			ctx := context.Background()
			for _, tc := range []struct {
				pid  int32
				ctr  *api.Container
				name string
			}{{pidFS, ctrFS, "app"}, {pidSub, ctrFS, "app"}, {pidSD, ctrSD, "sidecar"}} {
				sel, err := a.Attest(ctx, tc.pid)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(sel, Selectors(pod, tc.ctr)) {
					t.Fatalf("pid %d: %v", tc.pid, sel)
				}
				for _, want := range []string{"ns:demo", "pod-name:web-0", "pod-uid:" + pod.Uid, "pod-label:app:web",
					"container-name:" + tc.name, "container-image:docker.io/library/nginx:1.27", "container-image:docker.io/library/nginx@sha256:aa"} {
					if !has(sel, "k8s", want) {
						t.Errorf("pid %d: no k8s:%s in %v", tc.pid, want, sel)
					}
				}
				if !has(sel, "nri", "container-id:"+tc.ctr.Id) {
					t.Errorf("pid %d: nri selectors %v", tc.pid, sel)
				}
			}
			if sel, err := a.Attest(ctx, int32(os.Getpid())); err != nil || len(sel) != 0 {
				t.Fatalf("a process outside every container: %v %v", sel, err)
			}

			_, gone, err := a.AttestWatch(ctx, pidFS)
			if err != nil || gone == nil {
				t.Fatalf("watch: %v %v", gone, err)
			}
			a.RemoveContainer(idFS)
			select {
			case <-gone:
			case <-time.After(time.Second):
				t.Fatal("removing the container did not close its watch channel")
			}
			for _, pid := range []int32{pidFS, pidSub} {
				if sel, err := a.Attest(ctx, pid); err != nil || len(sel) != 0 {
					t.Fatalf("a process of a removed container: %v %v", sel, err)
				}
			}
			if sel, _ := a.Attest(ctx, pidSD); len(sel) == 0 {
				t.Fatal("the other container lost its selectors")
			}
			a.RemovePod(pod.Id)
			if sel, _ := a.Attest(ctx, pidSD); len(sel) != 0 || a.Len() != 0 {
				t.Fatalf("after the pod's removal: %v, %d containers", sel, a.Len())
			}
		})
	}
}

// TestInitCgroupIsLearnedOnlyWhenItNamesTheContainer: with a cgroupsPath
// the attestor cannot place, the init process's cgroup is learned, but
// only when it is named after the container; a PID that now names another
// process (here the test's own) teaches nothing.
func TestInitCgroupIsLearnedOnlyWhenItNamesTheContainer(t *testing.T) {
	h := hierarchies(t)[0]
	a := New(Config{})
	pod := testPod("p1")
	id := randHex(16)
	pid := spawnIn(t, h, "tg-nritest-"+randHex(4)+"/ctr-"+id)
	a.StartContainer(pod, testCtr(pod, id, "relative:unplaceable", pid))
	if sel, _ := a.Attest(context.Background(), pid); !has(sel, "nri", "container-id:"+id) {
		t.Fatalf("learned cgroup: %v", sel)
	}
	// A reused PID: the container claims the test process as its init.
	other := randHex(16)
	a.StartContainer(pod, testCtr(pod, other, "", int32(os.Getpid())))
	if sel, _ := a.Attest(context.Background(), int32(os.Getpid())); len(sel) != 0 {
		t.Fatalf("a reused init PID taught the attestor: %v", sel)
	}
}

// TestSynchronize: Synchronize drops containers
// that are stopped and those whose pod is unknown, and closes the watch of
// a container that is no longer there; an unchanged container keeps its
// entry, so its watchers are not woken.
func TestSynchronize(t *testing.T) {
	dir := t.TempDir()
	writeCgroup := func(pid int, p string) {
		if err := os.MkdirAll(filepath.Join(dir, strconv.Itoa(pid)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, strconv.Itoa(pid), "cgroup"), []byte("0::"+p+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeCgroup(100, "/k/p/a")
	writeCgroup(101, "/k/p/b")
	writeCgroup(102, "/k/p/c")
	a := New(Config{ProcRoot: dir})
	pod := testPod("p")
	ca, cb, cc := testCtr(pod, "a", "/k/p/a", 0), testCtr(pod, "b", "/k/p/b", 0), testCtr(pod, "c", "/k/p/c", 0)
	cc.State = api.ContainerState_CONTAINER_STOPPED
	orphan := testCtr(testPod("elsewhere"), "d", "/k/p/d", 0)
	a.Synchronize([]*api.PodSandbox{pod}, []*api.Container{ca, cb, cc, orphan})
	ctx := context.Background()
	if a.Len() != 2 {
		t.Fatalf("%d containers indexed", a.Len())
	}
	_, goneA, _ := a.AttestWatch(ctx, 100)
	_, goneB, _ := a.AttestWatch(ctx, 101)
	if sel, _ := a.Attest(ctx, 102); len(sel) != 0 {
		t.Fatalf("a stopped container matched: %v", sel)
	}
	a.Synchronize([]*api.PodSandbox{pod}, []*api.Container{ca})
	select {
	case <-goneB:
	default:
		t.Fatal("b's watch is open after it left")
	}
	select {
	case <-goneA:
		t.Fatal("a's watch closed though nothing changed")
	default:
	}
	if sel, _ := a.Attest(ctx, 101); len(sel) != 0 {
		t.Fatalf("b still matches: %v", sel)
	}
	if _, err := a.Attest(ctx, 999); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a process that does not exist: %v", err)
	}
}

func TestSelectors(t *testing.T) {
	pod := testPod("p")
	ctr := &api.Container{Id: "c", Name: "app", Annotations: map[string]string{imageNameAnnotation: "reg:5000/team/app:v1"}}
	sel := Selectors(pod, ctr)
	if !has(sel, "k8s", "container-image:reg:5000/team/app:v1") || has(sel, "k8s", "pod-label:io.kubernetes.pod.namespace:demo") {
		t.Fatalf("%v", sel)
	}
	for _, s := range sel {
		if strings.HasPrefix(s.Value, "runtime:") || s.Type == "k8s" && strings.HasPrefix(s.Value, "sa:") {
			t.Fatalf("unexpected selector %v", s)
		}
	}
	for in, want := range map[string]string{"reg:5000/team/app:v1": "reg:5000/team/app", "nginx": "nginx",
		"docker.io/library/nginx@sha256:ab": "docker.io/library/nginx", "reg:5000/app": "reg:5000/app"} {
		if got := repository(in); got != want {
			t.Errorf("repository(%q) = %q, want %q", in, got, want)
		}
	}
}
