// Package nri is the node agent's nri workload attestor. It knows every pod
// and container on the node from the runtime's NRI events (fed to it by the
// agent's NRI plugin, package agent/nriplugin) and maps a Workload API
// caller to its container by the caller's cgroup.
//
// Mapping: /proc/<pid>/cgroup of the caller (cgroup v1 and v2 alike) is
// looked up in an index of container cgroup paths. A container's path
// comes from its OCI linux.cgroupsPath as runc lays it out (cgroupfs and
// systemd drivers, see cgroupPath), and from /proc/<pid>/cgroup of the
// container's init process as the runtime reports it at StartContainer or
// Synchronize, accepted only when its last element names the container ID.
// A process in a child cgroup of a container's cgroup belongs to that
// container. The PID namespace was not used: the containers of a pod that
// shares its process namespace, and every hostPID pod, share one PID
// namespace, so it cannot tell them apart; every container has its own
// cgroup.
//
// A container leaves the index when it stops or is removed, and with its
// pod: a process left in it then matches nothing. The caller's own PID
// reuse is guarded by the Workload API server (it checks the caller after
// attesting); a container's init PID reused before the agent reads its
// cgroup gives a cgroup that does not name the container, which is
// ignored.
//
// Lookups are a read of /proc/<pid>/cgroup and a few map lookups, with no
// call to the kubelet or the runtime.
package nri

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/nri/pkg/api"
	"golang.org/x/sys/unix"

	"github.com/trustgate/trustgate/agent/attestor"
)

// Config configures an Attestor.
type Config struct {
	// ProcRoot is where procfs is mounted; empty means /proc.
	ProcRoot string
}

// container is one indexed container.
type container struct {
	id, podID string
	sel       []attestor.Selector
	cgroups   []string
	// gone is closed when the container leaves the index.
	gone chan struct{}
}

// Attestor implements attestor.WorkloadAttestor and attestor.Watcher from
// NRI's view of the node. Its index is fed by the NRI plugin through
// Synchronize, StartContainer, RemoveContainer and RemovePod.
type Attestor struct {
	proc string

	mu      sync.RWMutex
	ctrs    map[string]*container
	cgroups map[string]*container
}

// New returns an attestor with an empty index.
func New(cfg Config) *Attestor {
	p := cfg.ProcRoot
	if p == "" {
		p = "/proc"
	}
	return &Attestor{proc: p, ctrs: map[string]*container{}, cgroups: map[string]*container{}}
}

// Name returns "nri".
func (*Attestor) Name() string { return "nri" }

// Attest returns the nri and k8s selectors of the container pid runs in,
// and none for a process outside every known container.
func (a *Attestor) Attest(ctx context.Context, pid int32) ([]attestor.Selector, error) {
	sel, _, err := a.AttestWatch(ctx, pid)
	return sel, err
}

// AttestWatch is Attest, and returns a channel that is closed when the
// container leaves the index (stopped, removed, its pod gone). It is nil
// for a process outside every known container.
func (a *Attestor) AttestWatch(_ context.Context, pid int32) ([]attestor.Selector, <-chan struct{}, error) {
	paths, err := a.procCgroups(pid)
	if err != nil {
		return nil, nil, err
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	var found *container
	for _, p := range paths {
		c := a.lookupLocked(p)
		if c == nil {
			continue
		}
		if found != nil && found != c {
			// v1 hierarchies that disagree: the process is not wholly in
			// either container.
			return nil, nil, nil
		}
		found = c
	}
	if found == nil {
		return nil, nil, nil
	}
	return slices.Clone(found.sel), found.gone, nil
}

// lookupLocked finds the container whose cgroup is p or an ancestor of p.
func (a *Attestor) lookupLocked(p string) *container {
	for {
		if c, ok := a.cgroups[p]; ok {
			return c
		}
		parent := path.Dir(p)
		if parent == p || parent == "/" {
			return nil
		}
		p = parent
	}
}

// procCgroups reads the cgroup paths of pid.
func (a *Attestor) procCgroups(pid int32) ([]string, error) {
	b, err := readProc(filepath.Join(a.proc, strconv.Itoa(int(pid)), "cgroup"))
	if err != nil {
		return nil, fmt.Errorf("nri attestor: read cgroup of pid %d: %w", pid, err)
	}
	paths, err := parseProcCgroup(b)
	if err != nil {
		return nil, fmt.Errorf("nri attestor: pid %d: %w", pid, err)
	}
	return paths, nil
}

// readProc reads a small procfs file with plain system calls: procfs
// reports no size to stat, and its files gain nothing from the runtime's
// poller, which os.ReadFile would register them with.
func readProc(name string) ([]byte, error) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	defer unix.Close(fd)
	buf := make([]byte, 0, 1024)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return nil, &os.PathError{Op: "read", Path: name, Err: err}
		case n == 0:
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// newContainer builds the index entry of a container: its selectors and
// its cgroup paths.
func (a *Attestor) newContainer(pod *api.PodSandbox, ctr *api.Container) *container {
	c := &container{id: ctr.GetId(), podID: ctr.GetPodSandboxId(), sel: Selectors(pod, ctr), gone: make(chan struct{})}
	if c.podID == "" {
		c.podID = pod.GetId()
	}
	if p, ok := cgroupPath(ctr.GetLinux().GetCgroupsPath()); ok {
		c.cgroups = append(c.cgroups, p)
	}
	if pid := ctr.GetPid(); pid > 0 && c.id != "" {
		// What the init process's cgroup is, seen from here: this covers
		// cgroup namespaces and layouts cgroupPath does not know. Only a
		// cgroup named after the container counts, so that a reused PID
		// teaches nothing.
		// An error (the process has exited) leaves the configured path.
		if paths, err := a.procCgroups(int32(pid)); err == nil {
			for _, p := range paths {
				if strings.Contains(path.Base(p), c.id) && !slices.Contains(c.cgroups, p) {
					c.cgroups = append(c.cgroups, p)
				}
			}
		}
	}
	return c
}

// addLocked puts c in the index, replacing an entry of the same ID. An
// unchanged entry is kept, so that nobody watching it is woken.
func (a *Attestor) addLocked(c *container) {
	if old, ok := a.ctrs[c.id]; ok {
		if slices.Equal(old.sel, c.sel) && slices.Equal(old.cgroups, c.cgroups) {
			return
		}
		a.removeLocked(old)
	}
	a.ctrs[c.id] = c
	for _, p := range c.cgroups {
		if other, ok := a.cgroups[p]; ok && other != c {
			// Two live containers do not share a cgroup: the older one
			// is gone.
			a.removeLocked(other)
		}
		a.cgroups[p] = c
	}
}

func (a *Attestor) removeLocked(c *container) {
	if a.ctrs[c.id] == c {
		delete(a.ctrs, c.id)
	}
	for _, p := range c.cgroups {
		if a.cgroups[p] == c {
			delete(a.cgroups, p)
		}
	}
	close(c.gone)
}

// Synchronize replaces the index with the runtime's current state: every
// container that is not stopped.
func (a *Attestor) Synchronize(pods []*api.PodSandbox, ctrs []*api.Container) {
	byID := make(map[string]*api.PodSandbox, len(pods))
	for _, p := range pods {
		byID[p.GetId()] = p
	}
	fresh := map[string]*container{}
	for _, ctr := range ctrs {
		pod, ok := byID[ctr.GetPodSandboxId()]
		if !ok || ctr.GetState() == api.ContainerState_CONTAINER_STOPPED {
			continue
		}
		fresh[ctr.GetId()] = a.newContainer(pod, ctr)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, c := range a.ctrs {
		if _, ok := fresh[id]; !ok {
			a.removeLocked(c)
		}
	}
	for _, c := range fresh {
		a.addLocked(c)
	}
}

// StartContainer indexes a container as it starts; the runtime reports its
// init PID then.
func (a *Attestor) StartContainer(pod *api.PodSandbox, ctr *api.Container) {
	c := a.newContainer(pod, ctr)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.addLocked(c)
}

// RemoveContainer takes a stopped or removed container out of the index.
func (a *Attestor) RemoveContainer(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.ctrs[id]; ok {
		a.removeLocked(c)
	}
}

// RemovePod takes every container of a stopped or removed pod out of the
// index.
func (a *Attestor) RemovePod(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.ctrs {
		if c.podID == id {
			a.removeLocked(c)
		}
	}
}

// Len returns the number of indexed containers.
func (a *Attestor) Len() int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.ctrs)
}

var _ attestor.Watcher = (*Attestor)(nil)
