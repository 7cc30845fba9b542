// Package runner wires the node agent together from its configuration:
// node attestation and the agent SVID (agent/nodeattest), the broker client
// (agent/brokerclient), the sync (agent/sync), the cache, the workload
// attestors, the optional NRI plugin and the Workload API server, with the
// agent's Prometheus metrics and readiness.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"

	"github.com/trustgate/trustgate/agent/attestor"
	"github.com/trustgate/trustgate/agent/attestor/nri"
	"github.com/trustgate/trustgate/agent/attestor/unix"
	"github.com/trustgate/trustgate/agent/brokerclient"
	"github.com/trustgate/trustgate/agent/cache"
	"github.com/trustgate/trustgate/agent/config"
	"github.com/trustgate/trustgate/agent/nodeattest"
	"github.com/trustgate/trustgate/agent/nriplugin"
	agentsync "github.com/trustgate/trustgate/agent/sync"
	"github.com/trustgate/trustgate/agent/workloadapi"
	"github.com/trustgate/trustgate/client/kbs"
	"github.com/trustgate/trustgate/tlsclient"
)

// Agent is a configured node agent.
type Agent struct {
	cfg   config.Config
	log   *slog.Logger
	mgr   *nodeattest.Manager
	cache *cache.Cache
	sync  *agentsync.Syncer
	wl    *workloadapi.Server
	nri   *nriplugin.Plugin
}

// metrics are the agent's collectors.
type metrics struct {
	rotations  prometheus.Counter
	syncDur    prometheus.Histogram
	syncErrors prometheus.Counter
	calls      *prometheus.CounterVec
	callDur    *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer, c *cache.Cache) *metrics {
	m := &metrics{
		rotations: prometheus.NewCounter(prometheus.CounterOpts{Name: "trustgate_agent_svid_rotations_total",
			Help: "New agent X.509-SVIDs received (attestation and renewals)."}),
		syncDur: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "trustgate_agent_sync_duration_seconds",
			Help: "Duration of successful entry syncs with the broker, a long poll's wait included.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "trustgate_agent_sync_errors_total",
			Help: "Failed syncs with the broker (entries or bundle)."}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trustgate_agent_workload_api_calls_total",
			Help: "Workload API calls by method and gRPC status code."}, []string{"method", "code"}),
		callDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "trustgate_agent_workload_api_call_duration_seconds",
			Help: "Workload API call duration (streams: until they end).", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"method"}),
	}
	stat := func(name, help string, f func(cache.Stats) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(f(c.Stats())) })
	}
	reg.MustRegister(m.rotations, m.syncDur, m.syncErrors, m.calls, m.callDur,
		stat("trustgate_agent_svids_cached", "Workload X.509-SVIDs in the cache.", func(s cache.Stats) int { return s.SVIDs }),
		stat("trustgate_agent_entries", "Registration entries the broker authorized for the agent.", func(s cache.Stats) int { return s.Entries }),
		stat("trustgate_agent_subscribers", "Open Workload API streams.", func(s cache.Stats) int { return s.Subscribers }))
	return m
}

// New builds the agent; nothing runs before Run.
func New(cfg config.Config, log *slog.Logger, reg prometheus.Registerer) (*Agent, error) {
	tlsOpts := tlsclient.Options{TrustBundlePath: cfg.TrustBundlePath, InsecureBootstrap: cfg.InsecureBootstrap, Log: log}
	var pinned *pinnedBundle
	var err error
	if cfg.InsecureBootstrap {
		// Only the first contact goes unverified: the bundle the broker
		// gives then is pinned, and the broker is verified against it by
		// its SPIFFE ID from then on, restarts included (SPIRE's agents
		// do the same).
		if pinned, err = loadPinned(cfg.DataDir); err != nil {
			return nil, err
		}
		var td spiffeid.TrustDomain
		td, err = spiffeid.TrustDomainFromString(cfg.TrustDomain)
		if err != nil {
			return nil, fmt.Errorf("trust_domain: %w", err)
		}
		if tlsOpts.ServerID, err = spiffeid.FromSegments(td, "spire", "server"); err != nil {
			return nil, fmt.Errorf("broker ID: %w", err)
		}
		tlsOpts.Pinned = pinned.get
	}
	bootstrap, err := tlsclient.HTTPClient(tlsOpts)
	if err != nil {
		return nil, fmt.Errorf("broker TLS: %w", err)
	}
	a := &Agent{cfg: cfg, log: log}
	// The mTLS client presents the manager's current SVID on every new
	// connection, so renewals take effect without rebuilding it.
	var mgr *nodeattest.Manager
	tlsOpts.SVID = svidSource{&mgr}
	mtlsConf, err := tlsclient.Config(tlsOpts)
	if err != nil {
		return nil, fmt.Errorf("broker TLS: %w", err)
	}
	tr := newRotatingTransport(func() *http.Transport {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = mtlsConf.Clone()
		return t
	})
	broker := brokerclient.New(cfg.BrokerURL, &http.Client{Transport: tr})

	c, err := cache.New(cache.Config{Issuer: broker, Logger: log.With("component", "cache")})
	if err != nil {
		return nil, err
	}
	m := newMetrics(reg, c)
	mgr, err = nodeattest.New(nodeattest.Config{
		DataDir: cfg.DataDir, Broker: broker, Bootstrap: bootstrap, BrokerURL: cfg.BrokerURL,
		Attester: func() (kbs.Attester, error) { return attester(cfg.Attestor) }, CanReattest: cfg.Attestor.CanReattest(),
		Logger: log.With("component", "nodeattest"),
		OnRotate: func() {
			m.rotations.Inc()
			tr.Rotate() // the next calls present the new SVID
		},
	})
	if err != nil {
		return nil, err
	}
	a.mgr, a.cache = mgr, c
	var onBundle func(*spiffebundle.Bundle) error
	if pinned != nil {
		onBundle = func(b *spiffebundle.Bundle) error { return pinned.set(b.X509Authorities()) }
	}
	a.sync = agentsync.New(agentsync.Config{Broker: broker, Cache: c, Wait: cfg.SyncWait.Duration, PollInterval: cfg.SyncPollInterval.Duration,
		Logger: log.With("component", "sync"), OnBundle: onBundle,
		Observe: func(d time.Duration, _ bool) { m.syncDur.Observe(d.Seconds()) },
		OnError: func(err error) {
			m.syncErrors.Inc()
			var se *brokerclient.StatusError
			if errors.As(err, &se) && se.Status == http.StatusForbidden {
				// Evicted: serve nothing more.
				_ = c.SetEntries(nil)
			}
		}})

	var atts attestor.Multi
	if u := cfg.WorkloadAttestors.Unix; u.Enabled {
		atts = append(atts, unix.New(unix.Config{DiscoverWorkloadPath: u.DiscoverWorkloadPath, WorkloadSizeLimit: u.WorkloadSizeLimit}))
	}
	if n := cfg.WorkloadAttestors.NRI; n.Enabled {
		na := nri.New(nri.Config{})
		atts = append(atts, na)
		a.nri, err = nriplugin.New(nriplugin.Config{GatewaySocket: n.GatewaySocket, KeyFile: n.KeyFile, Attestor: na,
			SocketDir: n.SocketDir, SocketName: filepath.Base(cfg.SocketPath), Destination: n.Destination,
			Match: nriplugin.MatchCache(c), OptInAnnotation: n.OptInAnnotation, Logger: log.With("component", "nriplugin")})
		if err != nil {
			return nil, err
		}
	}
	a.wl, err = workloadapi.New(workloadapi.Config{Cache: c, Attestor: atts, Logger: log.With("component", "workloadapi"),
		AllowUnauthenticatedVerifiers: cfg.AllowUnauthenticatedVerifiers,
		Observe: func(method string, code codes.Code, d time.Duration) {
			m.calls.WithLabelValues(method, code.String()).Inc()
			m.callDur.WithLabelValues(method).Observe(d.Seconds())
		}})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// svidSource is the manager as an x509svid.Source, set once New built it.
type svidSource struct{ m **nodeattest.Manager }

// attester builds the node attester from the configuration. The join token
// is read from its file or environment variable, never from argv.
func attester(a config.Attestor) (kbs.Attester, error) {
	switch a.Type {
	case config.JoinToken:
		tok := ""
		if a.JoinTokenFile != "" {
			b, err := os.ReadFile(a.JoinTokenFile)
			if err != nil {
				return nil, fmt.Errorf("join token: %w", err)
			}
			tok = strings.TrimSpace(string(b))
		} else {
			tok = strings.TrimSpace(os.Getenv(a.JoinTokenEnv))
		}
		if tok == "" {
			return nil, errors.New("join token: none given (join_token_file or the join_token_env variable)")
		}
		return kbs.JoinToken(tok), nil
	case config.X509Pop:
		return kbs.LoadX509Pop(a.X509PopCertPath, a.X509PopKeyPath)
	case config.K8sPSAT:
		return kbs.K8sPSAT(a.K8sPSATCluster, a.K8sPSATTokenPath), nil
	case config.Sample:
		return kbs.Sample(a.SampleSVN), nil
	}
	return nil, fmt.Errorf("attestor type %q", a.Type)
}

// Ready reports whether the agent has its SVID and a synced bundle and
// entries.
func (a *Agent) Ready(context.Context) error {
	if a.mgr.Current() == nil {
		return errors.New("no agent SVID yet")
	}
	if !a.sync.Synced() {
		return errors.New("not synced with the broker yet")
	}
	return nil
}

// Run runs the agent until ctx ends. The Workload API is served once the
// agent has its SVID; a cached identity is never required from the broker
// to start serving what the broker authorized before.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.mgr.Start(ctx); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(a.cfg.SocketPath), 0o755); err != nil {
		return fmt.Errorf("workload API: %w", err)
	}
	grp, ctx := errgroup.WithContext(ctx)
	grp.Go(func() error { return a.mgr.Run(ctx) })
	grp.Go(func() error {
		if err := a.cache.Run(ctx); ctx.Err() == nil {
			return err
		}
		return nil
	})
	grp.Go(func() error { return a.sync.Run(ctx) })
	// Serve once the first sync is done (or FirstSyncTimeout passed): a
	// caller that connects earlier would match no entry yet and get
	// PermissionDenied, which go-spiffe clients retry only after a backoff.
	a.waitSynced(ctx, FirstSyncTimeout)
	l, err := workloadapi.Listen(a.cfg.SocketPath)
	if err != nil {
		cancelErr := fmt.Errorf("workload API: %w", err)
		grp.Go(func() error { return cancelErr })
		return grp.Wait()
	}
	a.log.Info("workload API listening", "socket", a.cfg.SocketPath, "spiffe_id", a.mgr.Current().ID.String())
	if a.nri != nil {
		grp.Go(func() error { return a.nri.Run(ctx) })
	}
	grp.Go(func() error {
		<-ctx.Done()
		a.wl.Stop()
		return nil
	})
	grp.Go(func() error {
		if err := a.wl.Serve(l); err != nil && ctx.Err() == nil {
			return fmt.Errorf("workload API: %w", err)
		}
		return nil
	})
	return grp.Wait()
}

// GetX509SVID implements x509svid.Source.
func (s svidSource) GetX509SVID() (*x509svid.SVID, error) { return (*s.m).GetX509SVID() }

// FirstSyncTimeout bounds how long the agent waits for its first sync
// before it serves the Workload API anyway.
const FirstSyncTimeout = 5 * time.Second

// waitSynced waits until the first sync is done, d passes or ctx ends.
func (a *Agent) waitSynced(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	for !a.sync.Synced() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if !a.sync.Synced() {
		a.log.Warn("serving the Workload API before the first sync with the broker", "waited", d)
	}
}
