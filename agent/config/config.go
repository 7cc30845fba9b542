// Package config is the node agent's configuration file: one strict TOML
// document, with an embedded commented default that
// `trustgate agent --print-default-config` prints.
package config

import (
	_ "embed"
	"fmt"
	"net/url"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/agentapi/wire"
	"github.com/trustgate/trustgate/config"
)

//go:embed default.toml
var defaultTOML string

// DefaultTOML is the commented default configuration.
func DefaultTOML() string { return defaultTOML }

// Attestor types.
const (
	JoinToken = "join_token"
	X509Pop   = "x509pop"
	K8sPSAT   = "k8s_psat"
	Sample    = "sample"
)

// Config is the agent's configuration file.
type Config struct {
	// BrokerURL is the broker's API base URL.
	BrokerURL string `toml:"broker_url"`
	// TrustBundlePath holds the broker's CA roots (PEM).
	TrustBundlePath string `toml:"trust_bundle_path"`
	// InsecureBootstrap skips verifying the broker (development).
	InsecureBootstrap bool `toml:"insecure_bootstrap"`
	// TrustDomain is the agent's trust domain.
	TrustDomain string `toml:"trust_domain"`
	// DataDir holds the agent's SVID and key.
	DataDir string `toml:"data_dir"`
	// SocketPath is the Workload API socket.
	SocketPath string `toml:"socket_path"`
	// MetricsAddress serves /metrics, /healthz and /readyz; empty: none.
	MetricsAddress string `toml:"metrics_address"`
	// SyncWait is the long poll's wait.
	SyncWait config.Duration `toml:"sync_wait"`
	// SyncPollInterval is the fallback poll period after a failed sync.
	SyncPollInterval config.Duration `toml:"sync_poll_interval"`
	// AllowUnauthenticatedVerifiers is SPIRE's option of that name.
	AllowUnauthenticatedVerifiers bool `toml:"allow_unauthenticated_verifiers"`
	// Attestor is the node attestor.
	Attestor Attestor `toml:"attestor"`
	// WorkloadAttestors configures the workload attestors.
	WorkloadAttestors WorkloadAttestors `toml:"workload_attestors"`
}

// Attestor configures the node attestor.
type Attestor struct {
	// Type is join_token, x509pop, k8s_psat or sample.
	Type string `toml:"type"`
	// JoinTokenFile and JoinTokenEnv say where the join token is.
	JoinTokenFile string `toml:"join_token_file"`
	JoinTokenEnv  string `toml:"join_token_env"`
	// X509PopCertPath and X509PopKeyPath are the node's certificate and key.
	X509PopCertPath string `toml:"x509pop_cert_path"`
	X509PopKeyPath  string `toml:"x509pop_key_path"`
	// K8sPSATCluster and K8sPSATTokenPath configure k8s_psat.
	K8sPSATCluster   string `toml:"k8s_psat_cluster"`
	K8sPSATTokenPath string `toml:"k8s_psat_token_path"`
	// SampleSVN is the sample TEE's claimed SVN.
	SampleSVN string `toml:"sample_svn"`
}

// CanReattest says whether the attestor can prove the node again after the
// agent's SVID expired: a join token is consumed by its first use.
func (a Attestor) CanReattest() bool { return a.Type != JoinToken }

// WorkloadAttestors configures the workload attestors.
type WorkloadAttestors struct {
	Unix Unix `toml:"unix"`
	NRI  NRI  `toml:"nri"`
}

// Unix configures the unix workload attestor.
type Unix struct {
	Enabled              bool  `toml:"enabled"`
	DiscoverWorkloadPath bool  `toml:"discover_workload_path"`
	WorkloadSizeLimit    int64 `toml:"workload_size_limit"`
}

// NRI configures the nri workload attestor and the agent's NRI plugin.
type NRI struct {
	Enabled         bool   `toml:"enabled"`
	GatewaySocket   string `toml:"gateway_socket"`
	KeyFile         string `toml:"key_file"`
	SocketDir       string `toml:"socket_dir"`
	Destination     string `toml:"destination"`
	OptInAnnotation string `toml:"opt_in_annotation"`
}

// Default is the embedded default configuration.
func Default() Config {
	var c Config
	if err := config.Decode([]byte(defaultTOML), &c); err != nil {
		panic(fmt.Sprintf("agent/config: embedded default.toml is invalid: %v", err))
	}
	return c
}

// Validate reports every problem of the configuration.
func (c *Config) Validate() error {
	var p config.Problems
	if u, err := url.Parse(c.BrokerURL); err != nil || u.Scheme != "https" || u.Host == "" {
		p.Addf("broker_url = %q: want an https URL", c.BrokerURL)
	}
	switch {
	case c.InsecureBootstrap && c.TrustBundlePath != "":
		p.Addf("insecure_bootstrap = true excludes trust_bundle_path: remove one")
	case !c.InsecureBootstrap && c.TrustBundlePath == "":
		p.Addf("trust_bundle_path is empty: give the broker's bundle (or insecure_bootstrap = true for development)")
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		p.Addf("trust_domain = %q: %v", c.TrustDomain, err)
	}
	for name, v := range map[string]string{"data_dir": c.DataDir, "socket_path": c.SocketPath} {
		if !filepath.IsAbs(v) {
			p.Addf("%s = %q: want an absolute path", name, v)
		}
	}
	if c.SyncWait.Duration < 0 || c.SyncWait.Duration > wire.MaxWait {
		p.Addf("sync_wait = %q: want 0 to %s", c.SyncWait.Duration, wire.MaxWait)
	}
	if c.SyncPollInterval.Duration < 100*time.Millisecond {
		p.Addf("sync_poll_interval = %q: want at least 100ms", c.SyncPollInterval.Duration)
	}
	a := c.Attestor
	switch a.Type {
	case JoinToken:
		if a.JoinTokenFile == "" && a.JoinTokenEnv == "" {
			p.Addf("attestor: join_token needs join_token_file or join_token_env")
		}
	case X509Pop:
		if a.X509PopCertPath == "" || a.X509PopKeyPath == "" {
			p.Addf("attestor: x509pop needs x509pop_cert_path and x509pop_key_path")
		}
	case K8sPSAT:
		if a.K8sPSATCluster == "" || a.K8sPSATTokenPath == "" {
			p.Addf("attestor: k8s_psat needs k8s_psat_cluster and k8s_psat_token_path")
		}
	case Sample:
		if a.SampleSVN == "" {
			p.Addf("attestor: sample needs sample_svn")
		}
	default:
		p.Addf("attestor.type = %q: want join_token, x509pop, k8s_psat or sample", a.Type)
	}
	w := c.WorkloadAttestors
	if !w.Unix.Enabled && !w.NRI.Enabled {
		p.Addf("workload_attestors: enable unix, nri or both")
	}
	if w.NRI.Enabled {
		if !filepath.IsAbs(w.NRI.GatewaySocket) || !filepath.IsAbs(w.NRI.KeyFile) {
			p.Addf("workload_attestors.nri: gateway_socket and key_file must be absolute paths")
		}
		if w.NRI.SocketDir != "" {
			if !filepath.IsAbs(w.NRI.SocketDir) || filepath.Clean(w.NRI.SocketDir) != w.NRI.SocketDir {
				p.Addf("workload_attestors.nri.socket_dir = %q: want a clean absolute path", w.NRI.SocketDir)
			} else if filepath.Dir(c.SocketPath) != w.NRI.SocketDir {
				p.Addf("workload_attestors.nri.socket_dir = %q: socket_path %q must be directly inside it", w.NRI.SocketDir, c.SocketPath)
			}
		}
	}
	return p.Err()
}
