package workloadapi_test

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/trustgate/trustgate/agent/attestor"
	"github.com/trustgate/trustgate/agent/attestor/nri"
	"github.com/trustgate/trustgate/agent/attestor/unix"
	"github.com/trustgate/trustgate/agent/cache"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// nriSelf returns an nri attestor that knows this test process as the
// container "app" of the pod demo/web (label app=web). The container's
// cgroup is the process's own when it is in one (read from the real
// /proc); otherwise the attestor reads a /proc/<pid>/cgroup written here.
func nriSelf(tb testing.TB) (*nri.Attestor, *api.PodSandbox) {
	tb.Helper()
	cfg := nri.Config{}
	cgroup := ""
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if parts := strings.SplitN(line, ":", 3); len(parts) == 3 && parts[2] != "/" && len(parts[2]) > len(cgroup) {
				cgroup = parts[2]
			}
		}
	}
	if cgroup == "" {
		cgroup = "/kubepods/podweb/ctrweb"
		cfg.ProcRoot = tb.TempDir()
		dir := filepath.Join(cfg.ProcRoot, strconv.Itoa(os.Getpid()))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::"+cgroup+"\n"), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	a := nri.New(cfg)
	pod := &api.PodSandbox{Id: "podweb", Name: "web-0", Namespace: "demo", Uid: "u-web", Labels: map[string]string{"app": "web"}}
	ctr := &api.Container{Id: "ctrweb", PodSandboxId: pod.Id, Name: "app", State: api.ContainerState_CONTAINER_RUNNING,
		Linux: &api.LinuxContainer{CgroupsPath: cgroup}}
	a.Synchronize([]*api.PodSandbox{pod}, []*api.Container{ctr})
	return a, pod
}

// webEntry is the entry of issue 14's demo: k8s:ns:demo and
// k8s:pod-label:app:web.
func webEntry() cache.Entry {
	return cache.Entry{ID: "web", SPIFFEID: "spiffe://example.org/web", ParentID: "spiffe://example.org/agent",
		Selectors: []cache.Selector{{Type: "k8s", Value: "ns:demo"}, {Type: "k8s", Value: "pod-label:app:web"}}}
}

// TestPodRemovalEndsStream: a workload attested by the nri attestor holds
// an X.509-SVID stream; when its pod is removed, the stream loses the
// pod's SVID (keeping the one it still matches by unix:uid) in under 1 s,
// and a stream with nothing else ends with PermissionDenied in under 1 s.
func TestPodRemovalEndsStream(t *testing.T) {
	t.Run("keeps its unix identity", func(t *testing.T) {
		a, pod := nriSelf(t)
		e := newEnv(t, options{attestor: attestor.Multi{unix.New(unix.Config{}), a}},
			webEntry(), uidEntry("me", "spiffe://example.org/me", os.Getuid()))
		w := watch(t, e.addr)
		for u := w.next(t, 5*time.Second); len(u.SVIDs) < 2; u = w.next(t, 5*time.Second) {
		}
		start := time.Now()
		a.RemovePod(pod.Id)
		u := w.next(t, time.Second)
		if got := ids(u); !slices.Equal(got, []string{"spiffe://example.org/me"}) {
			t.Fatalf("after the pod's removal the stream has %v", got)
		}
		t.Logf("pod removal to stream update: %s", time.Since(start))
	})
	t.Run("ends", func(t *testing.T) {
		a, _ := nriSelf(t)
		e := newEnv(t, options{attestor: a}, webEntry())
		w := watch(t, e.addr)
		if got := ids(w.next(t, 5*time.Second)); !slices.Equal(got, []string{"spiffe://example.org/web"}) {
			t.Fatalf("stream has %v", got)
		}
		start := time.Now()
		a.RemoveContainer("ctrweb")
		select {
		case err := <-w.errs:
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("after the container's removal: %v", err)
			}
			t.Logf("container removal to PermissionDenied: %s", time.Since(start))
		case u := <-w.updates:
			t.Fatalf("after the container's removal the stream still sends %v", ids(u))
		case <-time.After(time.Second):
			t.Fatal("the stream did not end within 1 s of the container's removal")
		}
	})
}

// TestProcessOutsideContainersGetsOnlyUnix: with both attestors, a
// process the nri attestor does not know gets the SVID of its unix:uid
// entry and not the pod's.
func TestProcessOutsideContainersGetsOnlyUnix(t *testing.T) {
	a := nri.New(nri.Config{})
	e := newEnv(t, options{attestor: attestor.Multi{unix.New(unix.Config{}), a}},
		webEntry(), uidEntry("me", "spiffe://example.org/me", os.Getuid()))
	w := watch(t, e.addr)
	if got := ids(w.next(t, 5*time.Second)); !slices.Equal(got, []string{"spiffe://example.org/me"}) {
		t.Fatalf("a process outside every container got %v", got)
	}
}
