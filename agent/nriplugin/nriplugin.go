// Package nriplugin is the node agent's NRI plugin. It connects to the NRI
// gateway (nrigate) with its own key (pluginauth), follows every pod and
// container on the node to feed the nri workload attestor, and gives the
// containers that should have an identity the Workload API: a read-only
// bind mount of the agent's socket directory at one fixed destination, and
// SPIFFE_ENDPOINT_SOCKET.
//
// The plugin never updates a running container: on (re)connection it
// learns the runtime's state from Synchronize and returns no updates, and
// it adjusts a container only in CreateContainer, once.
package nriplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/trustgate/trustgate/agent/attestor"
	"github.com/trustgate/trustgate/agent/attestor/nri"
	"github.com/trustgate/trustgate/agent/cache"
	"github.com/trustgate/trustgate/pluginauth"
)

// Defaults.
const (
	// DefaultPluginName and DefaultPluginIndex are the name and index the
	// plugin registers with, as the example gateway config's
	// workload-identity role expects.
	DefaultPluginName  = "trustgate-agent"
	DefaultPluginIndex = "20"
	// DefaultDestination is where the socket directory appears in a
	// container (the path SPIFFE's CSI driver examples use).
	DefaultDestination = "/spiffe-workload-api"
	// DefaultSocketName is the Workload API socket's file name in the
	// socket directory.
	DefaultSocketName = "agent.sock"
	// EndpointEnv is the variable go-spiffe and SPIRE's clients read the
	// Workload API address from.
	EndpointEnv = "SPIFFE_ENDPOINT_SOCKET"
)

// MountOptions are the options of the injected mount: a non-recursive
// read-only bind (the socket directory holds no submounts to bring along),
// which the gateway's read-only mount policy accepts as runc applies it.
var MountOptions = []string{"bind", "ro", "nosuid", "nodev", "noexec"}

// Config configures a Plugin.
type Config struct {
	// GatewaySocket is the NRI gateway's plugin socket. Required.
	GatewaySocket string
	// KeyFile is the plugin's private key (trustgate keygen); Key, when
	// set, is used instead.
	KeyFile string
	Key     *pluginauth.PrivateKey
	// PluginName and PluginIndex default to DefaultPluginName and
	// DefaultPluginIndex.
	PluginName, PluginIndex string
	// Attestor is the nri attestor the plugin feeds. Required.
	Attestor *nri.Attestor
	// SocketDir is the host directory holding the Workload API socket,
	// bind-mounted read-only into the containers given an identity. It
	// must be clean and absolute. Empty turns injection off.
	SocketDir string
	// SocketName is the socket's name in SocketDir; default
	// DefaultSocketName.
	SocketName string
	// Destination is where SocketDir appears in the container; default
	// DefaultDestination.
	Destination string
	// Match, when set, gives the socket to a container whose selectors (the
	// nri attestor's, k8s: and nri:) match at least one registration entry
	// under this agent. MatchCache builds it from the agent's cache.
	Match func([]attestor.Selector) bool
	// OptInAnnotation, when set, gives the socket to a container whose pod
	// carries this annotation with the value "true".
	OptInAnnotation string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// RetryMin and RetryMax bound the wait between connection attempts;
	// defaults 100ms and 5s.
	RetryMin, RetryMax time.Duration
}

// Plugin is the agent's NRI plugin.
type Plugin struct {
	cfg Config
	key *pluginauth.PrivateKey
	log *slog.Logger
}

// New checks cfg, loads the key and returns a plugin; Run connects it.
func New(cfg Config) (*Plugin, error) {
	if cfg.GatewaySocket == "" || cfg.Attestor == nil {
		return nil, errors.New("nriplugin: the gateway socket and the attestor are required")
	}
	key := cfg.Key
	if key == nil {
		if cfg.KeyFile == "" {
			return nil, errors.New("nriplugin: a key or key file is required")
		}
		k, err := pluginauth.LoadPrivateKeyFile(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("nriplugin: %w", err)
		}
		key = k
	}
	if cfg.PluginName == "" {
		cfg.PluginName = DefaultPluginName
	}
	if cfg.PluginIndex == "" {
		cfg.PluginIndex = DefaultPluginIndex
	}
	if cfg.SocketName == "" {
		cfg.SocketName = DefaultSocketName
	}
	if cfg.Destination == "" {
		cfg.Destination = DefaultDestination
	}
	if err := pluginauth.CheckPluginName(cfg.PluginName); err != nil {
		return nil, fmt.Errorf("nriplugin: %w", err)
	}
	if err := pluginauth.CheckPluginIndex(cfg.PluginIndex); err != nil {
		return nil, fmt.Errorf("nriplugin: %w", err)
	}
	for what, p := range map[string]string{"socket directory": cfg.SocketDir, "destination": cfg.Destination} {
		if p != "" && (!strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/") {
			return nil, fmt.Errorf("nriplugin: the %s %q must be a clean absolute path", what, p)
		}
	}
	if strings.Contains(cfg.SocketName, "/") || cfg.SocketName == "." || cfg.SocketName == ".." {
		return nil, fmt.Errorf("nriplugin: socket name %q is not a file name", cfg.SocketName)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 100 * time.Millisecond
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(5*time.Second, cfg.RetryMin)
	}
	return &Plugin{cfg: cfg, key: key, log: cfg.Logger}, nil
}

// MatchCache returns a Match function backed by the agent's cache: a
// container matches when the entries it would be entitled to with its
// nri selectors alone are not none. Entries that also need selectors of
// other attestors (unix:uid ...) cannot be judged at creation and do not
// count.
func MatchCache(c *cache.Cache) func([]attestor.Selector) bool {
	return func(sel []attestor.Selector) bool { return len(c.Fetch(sel).Entries) > 0 }
}

// Run connects to the gateway and serves NRI events until ctx ends,
// reconnecting with backoff when the connection is lost or refused. Each
// connection starts with the runtime's Synchronize, which rebuilds the
// attestor's index.
func (p *Plugin) Run(ctx context.Context) error {
	wait := p.cfg.RetryMin
	for {
		start := time.Now()
		err := p.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > p.cfg.RetryMax {
			wait = p.cfg.RetryMin // it ran for a while: start over
		}
		p.log.Warn("nriplugin: disconnected from the NRI gateway; reconnecting", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, p.cfg.RetryMax)
	}
}

// runOnce makes one connection and serves it until it closes.
func (p *Plugin) runOnce(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pluginauth.Dial(dctx, p.cfg.GatewaySocket, p.key, p.cfg.PluginName, p.cfg.PluginIndex)
	cancel()
	if err != nil {
		return fmt.Errorf("nriplugin: dial the gateway: %w", err)
	}
	s, err := stub.New(&handler{p: p}, stub.WithPluginName(p.cfg.PluginName), stub.WithPluginIdx(p.cfg.PluginIndex),
		stub.WithConnection(conn))
	if err != nil {
		conn.Close()
		return fmt.Errorf("nriplugin: %w", err)
	}
	p.log.Info("nriplugin: connected to the NRI gateway", "socket", p.cfg.GatewaySocket, "plugin", p.cfg.PluginIndex+"-"+p.cfg.PluginName)
	if err := s.Run(ctx); err != nil {
		return fmt.Errorf("nriplugin: %w", err)
	}
	return errors.New("nriplugin: connection closed")
}

// wants reports whether a container is to be given the Workload API.
func (p *Plugin) wants(pod *api.PodSandbox, ctr *api.Container) bool {
	if p.cfg.SocketDir == "" {
		return false
	}
	if a := p.cfg.OptInAnnotation; a != "" && pod.GetAnnotations()[a] == "true" {
		return true
	}
	return p.cfg.Match != nil && p.cfg.Match(nri.Selectors(pod, ctr))
}

// Adjustment returns what the plugin adds to a container being created:
// the socket mount and SPIFFE_ENDPOINT_SOCKET, or nil when the container
// is not to have them, or already has something at the destination or
// that variable (it is then left untouched).
func (p *Plugin) Adjustment(pod *api.PodSandbox, ctr *api.Container) *api.ContainerAdjustment {
	if !p.wants(pod, ctr) {
		return nil
	}
	for _, m := range ctr.GetMounts() {
		if path.Clean(m.GetDestination()) == p.cfg.Destination {
			p.log.Warn("nriplugin: the container already mounts something at the Workload API destination; not injecting",
				"container", ctr.GetId(), "destination", p.cfg.Destination)
			return nil
		}
	}
	for _, kv := range ctr.GetEnv() {
		if strings.HasPrefix(kv, EndpointEnv+"=") {
			p.log.Warn("nriplugin: the container sets "+EndpointEnv+"; not injecting", "container", ctr.GetId())
			return nil
		}
	}
	adj := &api.ContainerAdjustment{}
	adj.AddMount(&api.Mount{Destination: p.cfg.Destination, Type: "bind", Source: p.cfg.SocketDir,
		Options: append([]string(nil), MountOptions...)})
	adj.AddEnv(EndpointEnv, "unix://"+path.Join(p.cfg.Destination, p.cfg.SocketName))
	return adj
}

// handler receives the stub's events.
type handler struct{ p *Plugin }

func (h *handler) Configure(_ context.Context, _, runtime, version string) (api.EventMask, error) {
	h.p.log.Info("nriplugin: configured", "runtime", runtime, "version", version)
	return 0, nil // every event the handler implements
}

func (h *handler) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	h.p.cfg.Attestor.Synchronize(pods, ctrs)
	h.p.log.Info("nriplugin: synchronized", "pods", len(pods), "containers", len(ctrs), "indexed", h.p.cfg.Attestor.Len())
	return nil, nil // running containers are left as they are
}

func (h *handler) StopPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	h.p.cfg.Attestor.RemovePod(pod.GetId())
	return nil
}

func (h *handler) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	h.p.cfg.Attestor.RemovePod(pod.GetId())
	return nil
}

func (h *handler) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	adj := h.p.Adjustment(pod, ctr)
	if adj != nil {
		h.p.log.Info("nriplugin: giving the container the Workload API", "pod", pod.GetNamespace()+"/"+pod.GetName(), "container", ctr.GetName())
	}
	return adj, nil, nil
}

func (h *handler) StartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	h.p.cfg.Attestor.StartContainer(pod, ctr)
	return nil
}

func (h *handler) StopContainer(_ context.Context, _ *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	h.p.cfg.Attestor.RemoveContainer(ctr.GetId())
	return nil, nil
}

func (h *handler) RemoveContainer(_ context.Context, _ *api.PodSandbox, ctr *api.Container) error {
	h.p.cfg.Attestor.RemoveContainer(ctr.GetId())
	return nil
}
