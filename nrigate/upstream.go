package nrigate

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"google.golang.org/protobuf/proto"

	"github.com/trustgate/trustgate/nripolicy"
)

// upstream is the gateway as one ordinary NRI plugin of the real runtime:
// it relays every event to the downstream runtime, where the gateway's own
// plugins and policy run, and answers with the merged result.
type upstream struct {
	down *adaptation.Adaptation
	log  *slog.Logger
	// self is the gateway's own plugin name upstream, "<index>-<name>".
	self string
	// allowOwners lists the plugins that may adjust containers upstream
	// without coming through the gateway.
	allowOwners nripolicy.Globs
	state       *state
}

// state is the runtime's pods and containers as the gateway last saw them;
// downstream plugins are synchronized from it.
type state struct {
	mu         sync.Mutex
	synced     chan struct{} // closed at the first Synchronize
	once       sync.Once
	pods       map[string]*api.PodSandbox
	containers map[string]*api.Container
}

func newState() *state {
	return &state{synced: make(chan struct{}), pods: map[string]*api.PodSandbox{}, containers: map[string]*api.Container{}}
}

func (s *state) reset(pods []*api.PodSandbox, containers []*api.Container) {
	s.mu.Lock()
	s.pods = map[string]*api.PodSandbox{}
	s.containers = map[string]*api.Container{}
	for _, p := range pods {
		s.pods[p.Id] = p
	}
	for _, c := range containers {
		s.containers[c.Id] = c
	}
	s.mu.Unlock()
	s.once.Do(func() { close(s.synced) })
}

func (s *state) putPod(p *api.PodSandbox) {
	if p == nil {
		return
	}
	s.mu.Lock()
	s.pods[p.Id] = p
	s.mu.Unlock()
}

func (s *state) removePod(p *api.PodSandbox) {
	if p == nil {
		return
	}
	s.mu.Lock()
	delete(s.pods, p.Id)
	s.mu.Unlock()
}

func (s *state) putContainer(c *api.Container) {
	if c == nil {
		return
	}
	s.mu.Lock()
	s.containers[c.Id] = c
	s.mu.Unlock()
}

func (s *state) removeContainer(c *api.Container) {
	if c == nil {
		return
	}
	s.mu.Lock()
	delete(s.containers, c.Id)
	s.mu.Unlock()
}

// snapshot returns copies of the pods and containers, so that a plugin's
// synchronization never races with the relay updating them.
func (s *state) snapshot() ([]*api.PodSandbox, []*api.Container) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pods := make([]*api.PodSandbox, 0, len(s.pods))
	for _, p := range s.pods {
		pods = append(pods, proto.Clone(p).(*api.PodSandbox))
	}
	ctrs := make([]*api.Container, 0, len(s.containers))
	for _, c := range s.containers {
		ctrs = append(ctrs, proto.Clone(c).(*api.Container))
	}
	return pods, ctrs
}

// Configure subscribes to every event, which the stub does for the
// handlers upstream implements.
func (u *upstream) Configure(_ context.Context, _, runtime, version string) (api.EventMask, error) {
	u.log.Info("connected to runtime", "runtime", runtime, "version", version)
	return 0, nil
}

// Synchronize records the runtime's state. Downstream plugins are
// synchronized from it when they connect; updates they request at that
// point go upstream through the runtime's UpdateContainers.
func (u *upstream) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	u.state.reset(pods, ctrs)
	u.log.Info("synchronized with runtime", "pods", len(pods), "containers", len(ctrs))
	return nil, nil
}

// Shutdown is the runtime going away; the stub's close handler reconnects.
func (u *upstream) Shutdown(context.Context) { u.log.Info("runtime shut the gateway down") }

func (u *upstream) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	u.state.putPod(pod)
	return u.down.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: pod})
}

func (u *upstream) UpdatePodSandbox(ctx context.Context, pod *api.PodSandbox, overhead, res *api.LinuxResources) error {
	_, err := u.down.UpdatePodSandbox(ctx, &api.UpdatePodSandboxRequest{Pod: pod, OverheadLinuxResources: overhead, LinuxResources: res})
	return err
}

func (u *upstream) PostUpdatePodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	u.state.putPod(pod)
	return u.down.PostUpdatePodSandbox(ctx, &api.PostUpdatePodSandboxRequest{Pod: pod})
}

func (u *upstream) StopPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	u.state.putPod(pod)
	return u.down.StopPodSandbox(ctx, &api.StopPodSandboxRequest{Pod: pod})
}

func (u *upstream) RemovePodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	u.state.removePod(pod)
	return u.down.RemovePodSandbox(ctx, &api.RemovePodSandboxRequest{Pod: pod})
}

func (u *upstream) CreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	rsp, err := u.down.CreateContainer(ctx, &api.CreateContainerRequest{Pod: pod, Container: ctr})
	if err != nil {
		return nil, nil, err
	}
	if len(rsp.Evict) > 0 {
		// The stub API has no way to relay evictions; say so rather than
		// drop them silently.
		u.log.Warn("downstream plugins asked for evictions, which the gateway cannot relay", "container", ctr.GetId(), "evictions", len(rsp.Evict))
	}
	u.state.putContainer(ctr)
	return rsp.Adjust, rsp.Update, nil
}

func (u *upstream) PostCreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	u.state.putContainer(ctr)
	return u.down.PostCreateContainer(ctx, &api.PostCreateContainerRequest{Pod: pod, Container: ctr})
}

func (u *upstream) StartContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	u.state.putContainer(ctr)
	return u.down.StartContainer(ctx, &api.StartContainerRequest{Pod: pod, Container: ctr})
}

func (u *upstream) PostStartContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	u.state.putContainer(ctr)
	return u.down.PostStartContainer(ctx, &api.PostStartContainerRequest{Pod: pod, Container: ctr})
}

func (u *upstream) UpdateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container, res *api.LinuxResources) ([]*api.ContainerUpdate, error) {
	rsp, err := u.down.UpdateContainer(ctx, &api.UpdateContainerRequest{Pod: pod, Container: ctr, LinuxResources: res})
	if err != nil {
		return nil, err
	}
	return rsp.Update, nil
}

func (u *upstream) PostUpdateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	u.state.putContainer(ctr)
	return u.down.PostUpdateContainer(ctx, &api.PostUpdateContainerRequest{Pod: pod, Container: ctr})
}

func (u *upstream) StopContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	u.state.putContainer(ctr)
	rsp, err := u.down.StopContainer(ctx, &api.StopContainerRequest{Pod: pod, Container: ctr})
	if err != nil {
		return nil, err
	}
	return rsp.Update, nil
}

func (u *upstream) RemoveContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	u.state.removeContainer(ctr)
	return u.down.RemoveContainer(ctx, &api.RemoveContainerRequest{Pod: pod, Container: ctr})
}

// ValidateContainerAdjustment closes the bypass: upstream, only the gateway
// itself and explicitly allowed plugins may adjust containers, so a plugin
// cannot skip authentication by dialing the runtime's socket directly.
func (u *upstream) ValidateContainerAdjustment(_ context.Context, req *api.ValidateContainerAdjustmentRequest) error {
	var offenders []string
	for _, c := range ownersOf(req.GetOwners(), req.GetContainer().GetId()) {
		if c != u.self && !u.allowOwners.Match(c) {
			offenders = append(offenders, c)
		}
	}
	if len(offenders) == 0 {
		return nil
	}
	slices.Sort(offenders)
	offenders = slices.Compact(offenders)
	u.log.Warn("rejected adjustment by plugins that bypassed the gateway", "container", req.GetContainer().GetId(), "plugins", offenders)
	return fmt.Errorf("trustgate: plugins %s adjusted the container without authenticating through the gateway", strings.Join(offenders, ", "))
}

// ownersOf lists every plugin that claimed a field of container id.
func ownersOf(o *api.OwningPlugins, id string) []string {
	fo := o.GetOwners()[id]
	if fo == nil {
		return nil
	}
	var out []string
	for _, owner := range fo.Simple {
		out = append(out, api.ClearRemovalMarker(owner))
	}
	for _, comp := range fo.Compound {
		for _, owner := range comp.GetOwners() {
			out = append(out, api.ClearRemovalMarker(owner))
		}
	}
	return out
}
