package k8spsat

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/config"
)

// Defaults for ClusterConfig.
const (
	// DefaultAPITimeout bounds every Kubernetes API or JWKS request.
	DefaultAPITimeout = 10 * time.Second
)

// DefaultAudience is SPIRE's default token audience.
var DefaultAudience = []string{"spire-server"}

// Config configures the k8s_psat attestor.
type Config struct {
	// Clusters maps the cluster name that callers send in their evidence to
	// how tokens from that cluster are verified. The name appears in the
	// agent's SPIFFE ID, so it must be a valid SPIFFE ID path segment.
	Clusters map[string]ClusterConfig `toml:"clusters"`
}

// ClusterConfig configures one cluster. Tokens are verified online with the
// TokenReview API (set KubeConfigFile, or APIServerURL with
// BearerTokenFile), or offline against the service-account issuer's keys
// (set Offline).
type ClusterConfig struct {
	// ServiceAccountAllowList names the service accounts allowed to attest,
	// as "namespace:name". Required.
	ServiceAccountAllowList []string `toml:"service_account_allow_list"`
	// Audience is the audience tokens must carry. Unset means
	// DefaultAudience; an empty list means the API server's own audiences
	// (TokenReview mode only).
	Audience *[]string `toml:"audience"`
	// KubeConfigFile is a kubeconfig file for the API server; its current
	// context is used.
	KubeConfigFile string `toml:"kube_config_file"`
	// APIServerURL is the API server's https URL, used instead of
	// KubeConfigFile, such as "https://kubernetes.default.svc".
	APIServerURL string `toml:"api_server_url"`
	// APIServerCAFile is a PEM bundle to verify the API server with; empty
	// means the system roots.
	APIServerCAFile string `toml:"api_server_ca_file"`
	// BearerTokenFile holds the token the broker authenticates to the API
	// server with. It is read for every request, so rotated tokens work.
	BearerTokenFile string `toml:"bearer_token_file"`
	// AllowedNodeLabelKeys are node label keys turned into
	// agent_node_label selectors.
	AllowedNodeLabelKeys []string `toml:"allowed_node_label_keys"`
	// AllowedPodLabelKeys are pod label keys turned into agent_pod_label
	// selectors.
	AllowedPodLabelKeys []string `toml:"allowed_pod_label_keys"`
	// UsePodUIDForAgentID makes the agent ID end in pod/<pod-uid> instead
	// of the node UID.
	UsePodUIDForAgentID bool `toml:"use_pod_uid_for_agent_id"`
	// APITimeout bounds each API or JWKS request, as a Go duration such as
	// "10s". Empty means DefaultAPITimeout.
	APITimeout string `toml:"api_timeout"`
	// Offline, when set, verifies tokens against the issuer's JWKS and
	// makes no API calls.
	Offline *OfflineConfig `toml:"offline"`
}

// OfflineConfig verifies tokens without the API server.
type OfflineConfig struct {
	// Issuer is the service-account issuer tokens must name in "iss", the
	// API server's --service-account-issuer.
	Issuer string `toml:"issuer"`
	// JWKSFile is a JSON Web Key Set file with the issuer's public keys,
	// such as the output of `kubectl get --raw /openid/v1/jwks`.
	JWKSFile string `toml:"jwks_file"`
	// JWKSURL is an https URL serving the key set; it is fetched when first
	// needed, refreshed every five minutes, and re-fetched (at most every
	// 30 s) when a token names an unknown key.
	JWKSURL string `toml:"jwks_url"`
	// JWKSCAFile is a PEM bundle to verify JWKSURL's server with; empty
	// means the system roots.
	JWKSCAFile string `toml:"jwks_ca_file"`
}

// Validate reports every problem with the configuration, including files
// that cannot be read.
func (c Config) Validate() error {
	_, err := c.build()
	return err
}

// cluster is a validated ClusterConfig, ready to use.
type cluster struct {
	name          string
	allowed       map[string]bool
	audience      []string
	client        *apiClient       // nil in offline mode
	offline       *offlineVerifier // nil in TokenReview mode
	nodeLabelKeys map[string]bool
	podLabelKeys  map[string]bool
	usePodUID     bool
	timeout       time.Duration
}

func (c Config) build() (map[string]*cluster, error) {
	var p config.Problems
	out := map[string]*cluster{}
	if len(c.Clusters) == 0 {
		p.Addf("k8s_psat: no clusters configured: add a [clusters.<name>] table with service_account_allow_list and kube_config_file")
	}
	names := make([]string, 0, len(c.Clusters))
	for name := range c.Clusters {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if cl := c.Clusters[name].build(name, &p); cl != nil {
			out[name] = cl
		}
	}
	return out, p.Err()
}

func (cc ClusterConfig) build(name string, p *config.Problems) *cluster {
	before := len(*p)
	at := fmt.Sprintf("k8s_psat: clusters.%s", name)
	if err := spiffeid.ValidatePathSegment(name); err != nil {
		p.Addf("%s: the cluster name goes into agent SPIFFE IDs and is not a valid path segment (%v): use letters, digits, '.', '-' and '_'", at, err)
	}
	cl := &cluster{
		name:          name,
		allowed:       map[string]bool{},
		audience:      DefaultAudience,
		nodeLabelKeys: setOf(cc.AllowedNodeLabelKeys),
		podLabelKeys:  setOf(cc.AllowedPodLabelKeys),
		usePodUID:     cc.UsePodUIDForAgentID,
		timeout:       DefaultAPITimeout,
	}
	if len(cc.ServiceAccountAllowList) == 0 {
		p.Addf("%s: service_account_allow_list is empty: list the agents' service accounts as \"namespace:name\"", at)
	}
	for _, sa := range cc.ServiceAccountAllowList {
		ns, n, ok := strings.Cut(sa, ":")
		if !ok || ns == "" || n == "" || strings.Contains(n, ":") {
			p.Addf("%s: service_account_allow_list entry %q: want \"namespace:name\", such as \"spire:spire-agent\"", at, sa)
		}
		cl.allowed[sa] = true
	}
	if cc.Audience != nil {
		cl.audience = *cc.Audience
		if slices.Contains(cl.audience, "") {
			p.Addf("%s: audience has an empty entry: remove it", at)
		}
	}
	if cc.APITimeout != "" {
		d, err := time.ParseDuration(cc.APITimeout)
		if err != nil || d <= 0 {
			p.Addf("%s: api_timeout = %q: want a positive duration such as \"10s\"", at, cc.APITimeout)
		}
		cl.timeout = d
	}
	if cc.Offline != nil {
		cc.buildOffline(cl, at, p)
	} else {
		cc.buildClient(cl, at, p)
	}
	if len(*p) > before {
		return nil
	}
	return cl
}

func (cc ClusterConfig) buildOffline(cl *cluster, at string, p *config.Problems) {
	o := cc.Offline
	if cc.KubeConfigFile != "" || cc.APIServerURL != "" || cc.APIServerCAFile != "" || cc.BearerTokenFile != "" {
		p.Addf("%s: offline mode makes no API calls: remove kube_config_file, api_server_url, api_server_ca_file and bearer_token_file, or remove [offline]", at)
	}
	if len(cc.AllowedNodeLabelKeys) > 0 || len(cc.AllowedPodLabelKeys) > 0 {
		p.Addf("%s: label selectors need the API server: remove allowed_node_label_keys and allowed_pod_label_keys in offline mode", at)
	}
	if len(cl.audience) == 0 {
		p.Addf("%s: offline mode needs an explicit audience: set audience to the audiences the agent's projected token carries", at)
	}
	if o.Issuer == "" {
		p.Addf("%s.offline: issuer is empty: set it to the API server's --service-account-issuer", at)
	}
	var src *jwksSource
	switch {
	case (o.JWKSFile == "") == (o.JWKSURL == ""):
		p.Addf("%s.offline: set exactly one of jwks_file or jwks_url", at)
	case o.JWKSFile != "":
		if o.JWKSCAFile != "" {
			p.Addf("%s.offline: jwks_ca_file applies to jwks_url only: remove it", at)
		}
		var err error
		if src, err = staticJWKS(o.JWKSFile); err != nil {
			p.Addf("%s.offline: %v", at, err)
		}
	default:
		u, err := url.Parse(o.JWKSURL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			p.Addf("%s.offline: jwks_url = %q: want an https URL, such as \"https://kubernetes.default.svc/openid/v1/jwks\"", at, o.JWKSURL)
			break
		}
		client, err := httpsClient(o.JWKSCAFile, cl.timeout)
		if err != nil {
			p.Addf("%s.offline: jwks_ca_file: %v", at, err)
			break
		}
		src = remoteJWKS(o.JWKSURL, client)
	}
	cl.offline = &offlineVerifier{issuer: o.Issuer, keys: src}
}

func (cc ClusterConfig) buildClient(cl *cluster, at string, p *config.Problems) {
	switch {
	case cc.KubeConfigFile != "" && cc.APIServerURL != "":
		p.Addf("%s: set one of kube_config_file or api_server_url, not both", at)
	case cc.KubeConfigFile != "":
		if cc.APIServerCAFile != "" || cc.BearerTokenFile != "" {
			p.Addf("%s: api_server_ca_file and bearer_token_file go with api_server_url; the kubeconfig file carries its own", at)
		}
		client, err := kubeConfigClient(cc.KubeConfigFile)
		if err != nil {
			p.Addf("%s: kube_config_file: %v", at, err)
			return
		}
		client.http.Timeout = cl.timeout
		cl.client = client
	case cc.APIServerURL != "":
		u, err := url.Parse(cc.APIServerURL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			p.Addf("%s: api_server_url = %q: want an https URL, such as \"https://kubernetes.default.svc\"", at, cc.APIServerURL)
			return
		}
		if cc.BearerTokenFile == "" {
			p.Addf("%s: bearer_token_file is empty: point it at a token allowed to create tokenreviews and get pods and nodes (in a pod: /var/run/secrets/kubernetes.io/serviceaccount/token)", at)
			return
		}
		if _, err := os.Stat(cc.BearerTokenFile); err != nil {
			p.Addf("%s: bearer_token_file: %v", at, err)
			return
		}
		conf := &tls.Config{MinVersion: tls.VersionTLS12}
		if cc.APIServerCAFile != "" {
			if conf.RootCAs, err = loadPool(cc.APIServerCAFile); err != nil {
				p.Addf("%s: api_server_ca_file: %v", at, err)
				return
			}
		}
		client, err := newAPIClient(cc.APIServerURL, conf, tokenFile(cc.BearerTokenFile))
		if err != nil {
			p.Addf("%s: %v", at, err)
			return
		}
		client.http.Timeout = cl.timeout
		cl.client = client
	default:
		p.Addf("%s: set kube_config_file (or api_server_url and bearer_token_file) so tokens can be reviewed, or add an [offline] table", at)
	}
}

// httpsClient returns a client that trusts caFile (or the system roots)
// and gives up after timeout.
func httpsClient(caFile string, timeout time.Duration) (*http.Client, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pool, err := loadPool(caFile)
		if err != nil {
			return nil, err
		}
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: t, Timeout: timeout}, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA bundle %s holds no PEM certificate", path)
	}
	return pool, nil
}

func setOf(keys []string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}
