package nrigate

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"github.com/prometheus/client_golang/prometheus"
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
	// knownPlugins lists upstream plugins that are expected to take part
	// (the runtime's built-in validator, say), not alerted on.
	knownPlugins nripolicy.Globs
	state        *state
	// issued is what the gateway returned per container being created.
	issued *issuedLog
	audit  *nripolicy.Audit
	// foreign counts plugins seen on the runtime's socket that did not
	// come through the gateway.
	foreign *prometheus.CounterVec
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
	u.issued.put(ctr.GetId(), rsp.Adjust, rsp.Update, time.Now())
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
	u.issued.forget(ctr.GetId())
	return u.down.RemoveContainer(ctx, &api.RemoveContainerRequest{Pod: pod, Container: ctr})
}

// ValidateContainerAdjustment closes the bypass: upstream, only the gateway
// itself and explicitly allowed plugins may adjust or update containers, so
// a plugin cannot skip authentication by dialing the runtime's socket
// directly. Fields owned under the gateway's own name must hold exactly
// what the gateway returned for this container: containerd accepts a second
// plugin registered under the same name, and its claims carry that name.
// Device cgroup rules and removals, which NRI records no owner for, must be
// the gateway's unless an allowed upstream plugin took part. Every refusal is
// an audit record.
func (u *upstream) ValidateContainerAdjustment(ctx context.Context, req *api.ValidateContainerAdjustmentRequest) error {
	created := req.GetContainer().GetId()
	rec := u.issued.take(created)
	if rec == nil {
		rec = &issued{}
	}
	allowedTookPart := u.watchPlugins(ctx, req.GetPlugins(), req.GetPod(), created)
	var refusals []nripolicy.Decision
	refuse := func(plugin, ctr string, field api.Field, key, reason string) {
		refusals = append(refusals, nripolicy.Decision{
			Subject:   nripolicy.Subject{Plugin: plugin, Role: nripolicy.UpstreamRole},
			Event:     "create",
			Pod:       podName(req.GetPod()),
			Container: ctr,
			Field:     field.String(),
			Key:       key,
			Reason:    reason,
		})
	}
	check := func(ctr string, field api.Field, key, owners string) {
		for _, o := range strings.Split(owners, ",") {
			o = api.ClearRemovalMarker(o)
			switch {
			case o == u.self:
				got, known := ownedValue(req.GetAdjust(), req.GetUpdate(), created, ctr, field, key)
				want, _ := ownedValue(rec.adjust, rec.updates, created, ctr, field, key)
				switch {
				case !known:
					refuse(o, ctr, field, key, "a field the gateway does not know is owned under its name: another plugin is registered under the gateway's name")
				case !sameValue(got, want):
					refuse(o, ctr, field, key, "owned under the gateway's name but not what the gateway returned for this container: another plugin is registered under the gateway's name")
				}
			case u.allowOwners.Match(o):
			default:
				refuse(o, ctr, field, key, "adjusted the container without authenticating through the gateway")
			}
		}
	}
	for ctr, fo := range req.GetOwners().GetOwners() {
		for f, o := range fo.GetSimple() {
			check(ctr, api.Field(f), "", o)
		}
		for f, c := range fo.GetCompound() {
			for k, o := range c.GetOwners() {
				check(ctr, api.Field(f), k, o)
			}
		}
	}
	if !allowedTookPart {
		got := req.GetAdjust().GetLinux().GetResources().GetDevices()
		want := rec.adjust.GetLinux().GetResources().GetDevices()
		if !protoSlicesEqual(got, want) {
			refuse("(unknown)", created, api.Field_None, "linux.resources.devices",
				"device cgroup rules (which NRI records no owner for) differ from what the gateway returned: a plugin that did not come through the gateway added them")
		}
		wantRm := removals(rec.adjust)
		for _, k := range slices.Sorted(maps.Keys(removals(req.GetAdjust()))) {
			if !wantRm[k] {
				refuse("(unknown)", created, api.Field_None, k,
					"a removal (which NRI records no owner for) that the gateway did not return: a plugin that did not come through the gateway made it")
			}
		}
	}
	if len(refusals) == 0 {
		return nil
	}
	slices.SortFunc(refusals, func(a, b nripolicy.Decision) int {
		return strings.Compare(a.Subject.Plugin+a.Container+a.Field+a.Key, b.Subject.Plugin+b.Container+b.Field+b.Key)
	})
	var offenders []string
	for _, d := range refusals {
		if u.audit != nil {
			u.audit.Record(ctx, d)
		}
		offenders = append(offenders, d.Subject.Plugin)
	}
	offenders = slices.Compact(offenders)
	return fmt.Errorf("trustgate: plugins %s adjusted the container without authenticating through the gateway (%s %s: %s)",
		strings.Join(offenders, ", "), refusals[0].Field, refusals[0].Key, refusals[0].Reason)
}

// watchPlugins alerts, with a log line and a metric, on every plugin that
// took part in a container's creation without being the gateway, allowed,
// or known, and on any name registered more than once (a second plugin
// under the gateway's name above all). It reports whether an allowed
// upstream plugin took part.
func (u *upstream) watchPlugins(ctx context.Context, plugins []*api.PluginInstance, pod *api.PodSandbox, ctr string) bool {
	allowed := false
	seen := map[string]int{}
	for _, p := range plugins {
		name := p.GetIndex() + "-" + p.GetName()
		seen[name]++
		switch {
		case name == u.self:
		case u.allowOwners.Match(name):
			allowed = true
		case u.knownPlugins.Match(name):
		default:
			if seen[name] == 1 {
				u.alertForeign(ctx, name, pod, ctr, "a plugin that did not come through the gateway is connected to the runtime")
			}
		}
	}
	for name, n := range seen {
		if n > 1 {
			u.alertForeign(ctx, name, pod, ctr, fmt.Sprintf("%d plugins are registered with the runtime under this name", n))
		}
	}
	return allowed
}

func (u *upstream) alertForeign(ctx context.Context, name string, pod *api.PodSandbox, ctr, why string) {
	if u.foreign != nil {
		u.foreign.WithLabelValues(name).Inc()
	}
	u.log.LogAttrs(ctx, slog.LevelWarn, "foreign NRI plugin on the runtime's socket",
		slog.String("plugin", name), slog.String("pod", podName(pod)), slog.String("container", ctr), slog.String("reason", why))
}

// podName is a pod's namespace/name, as audit records spell it.
func podName(p *api.PodSandbox) string {
	if p == nil {
		return ""
	}
	return p.GetNamespace() + "/" + p.GetName()
}

// removals lists the removals in an adjustment that NRI may record no owner
// for (mounts, annotations, sysctls, network devices), as "<kind> <key>".
func removals(a *api.ContainerAdjustment) map[string]bool {
	out := map[string]bool{}
	for _, m := range a.GetMounts() {
		if dst, rm := m.IsMarkedForRemoval(); rm {
			out["mount "+dst] = true
		}
	}
	for kind, m := range map[string]map[string]string{"annotation": a.GetAnnotations(), "sysctl": a.GetLinux().GetSysctl()} {
		for k := range m {
			if key, rm := api.IsMarkedForRemoval(k); rm {
				out[kind+" "+key] = true
			}
		}
	}
	for k := range a.GetLinux().GetNetDevices() {
		if key, rm := api.IsMarkedForRemoval(k); rm {
			out["net device "+key] = true
		}
	}
	return out
}
