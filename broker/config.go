package broker

import (
	_ "embed"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest/k8spsat"
	"github.com/trustgate/trustgate/attest/x509pop"
	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/external"
	"github.com/trustgate/trustgate/broker/plugin/nebulaca"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/pluginauth"
)

//go:embed default.toml
var defaultTOML string

// DefaultConfigTOML is the commented default configuration that
// `trustgate server --print-default-config` prints.
func DefaultConfigTOML() string { return defaultTOML }

// Config is the server's configuration file.
type Config struct {
	Listen string `toml:"listen"`
	// InsecureHTTP allows cleartext HTTP (tls.mode = "off") on an address
	// beyond loopback, for a broker behind a TLS-terminating proxy.
	// Trustee's KBS names this setting alike.
	InsecureHTTP bool `toml:"insecure_http"`
	// TLS is how the broker serves HTTPS.
	TLS   TLSConfig   `toml:"tls"`
	Store StoreConfig `toml:"store"`
	// ShutdownGrace bounds the graceful shutdown, e.g. "10s".
	ShutdownGrace Duration `toml:"shutdown_grace"`
	// TrustDomain is the SPIFFE trust domain of granted identities.
	TrustDomain string `toml:"trust_domain"`
	// Issuer is the "iss" claim of signed tokens.
	Issuer string `toml:"issuer"`
	// AttestTimeout bounds one attestor's verification.
	AttestTimeout Duration        `toml:"attest_timeout"`
	Session       SessionConfig   `toml:"session"`
	Token         TokenConfig     `toml:"token"`
	RateLimit     RateLimitConfig `toml:"rate_limit"`
	Keys          KeysConfig      `toml:"keys"`
	Admin         AdminConfig     `toml:"admin"`
	Attestors     AttestorsConfig `toml:"attestors"`
	Plugins       PluginsConfig   `toml:"plugins"`
	Policy        PolicyConfig    `toml:"policy"`
	// TokenService is GET/POST /token (docs/token-service.md).
	TokenService TokenServiceConfig `toml:"token_service"`
}

// TokenServiceConfig configures the scoped token service.
type TokenServiceConfig struct {
	Enabled bool `toml:"enabled"`
	// Realm is the public URL of /token; empty means issuer + "/token".
	Realm string `toml:"realm"`
	// Service is the broker's own service name (the audience of tokens
	// for its plugin endpoints).
	Service string `toml:"service"`
	// Services are the registries tokens may be issued for.
	Services []string `toml:"services"`
	// X5CServices are those of Services whose tokens carry an x5c chain
	// to the token CA, for registries that trust auth.token.rootcertbundle.
	X5CServices []string `toml:"x5c_services"`
	// ExpiresIn is a scoped token's lifetime.
	ExpiresIn Duration `toml:"expires_in"`
	// SVIDAudience is the audience a caller's JWT-SVID must hold; empty
	// means Service.
	SVIDAudience string `toml:"svid_audience"`
}

// RealmURL is the configured realm, or the issuer's /token.
func (c *Config) RealmURL() string {
	if c.TokenService.Realm != "" {
		return c.TokenService.Realm
	}
	return strings.TrimSuffix(c.Issuer, "/") + "/token"
}

// PluginsConfig configures /kbs/v0/<plugin>/... .
type PluginsConfig struct {
	// MaxBodyBytes bounds a plugin request body.
	MaxBodyBytes int64 `toml:"max_body_bytes"`
	// NebulaCA is the native Nebula CA (docs/plugin-nebula-ca.md).
	NebulaCA NebulaCAConfig `toml:"nebula_ca"`
	// SVID issues SPIFFE SVIDs (docs/plugin-svid.md).
	SVID SVIDConfig `toml:"svid"`
	// External plugins, each a gRPC KbsPlugin server.
	External []ExternalPluginConfig `toml:"external"`
}

// NebulaCAConfig enables the nebula-ca plugin.
type NebulaCAConfig struct {
	Enabled bool `toml:"enabled"`
	nebulaca.Config
}

// SVIDConfig enables the svid plugin.
type SVIDConfig struct {
	Enabled bool `toml:"enabled"`
	svid.Config
}

// ExternalPluginConfig is one external plugin (package
// broker/plugin/external).
type ExternalPluginConfig struct {
	// Name is its path segment under /kbs/v0/.
	Name string `toml:"name"`
	// Address is "unix:///path.sock" or "tcp://host:port".
	Address string `toml:"address"`
	// PublicKey is the plugin's pluginauth X25519 public key (base64);
	// required for unix sockets.
	PublicKey string `toml:"public_key"`
	// Timeout bounds each call to the plugin.
	Timeout Duration `toml:"timeout"`
}

// PolicyConfig configures the resource policy.
type PolicyConfig struct {
	// Default is the policy in force until an admin sets one: "deny-all",
	// or "sample-dev" (the sample TEE may GET resources; for --dev only).
	Default string `toml:"default"`
	// PolicyPath, when set, is the rego file that holds the policy: it
	// replaces Default, is reloaded when it changes, and the admin API
	// may not set the policy.
	PolicyPath string `toml:"policy_path"`
}

// StoreConfig selects and configures the persistent store.
type StoreConfig struct {
	// Driver is "sqlite" (embedded, one server) or "postgres" (replicas
	// sharing one PostgreSQL database).
	Driver string `toml:"driver"`
	// Path is the SQLite database file.
	Path string `toml:"path"`
	// Synchronous is SQLite's synchronous mode: "NORMAL" or "FULL".
	Synchronous string `toml:"synchronous"`
	// PostgreSQL's keys (postgres.go) are valid with driver "postgres" only.
	PostgresConfig
}

// SessionConfig bounds RCAR sessions.
type SessionConfig struct {
	// TTL is how long a session and its nonce live.
	TTL Duration `toml:"ttl"`
	// SweepInterval is how often expired sessions are deleted.
	SweepInterval Duration `toml:"sweep_interval"`
}

// TokenConfig configures the attestation token and its signing keys.
type TokenConfig struct {
	// TTL is the token's lifetime.
	TTL Duration `toml:"ttl"`
	// KeyLifetime is how long one signing key signs.
	KeyLifetime Duration `toml:"key_lifetime"`
	// Prepublish is how long a key is published before it signs.
	Prepublish Duration `toml:"prepublish"`
}

// RateLimitConfig limits attestation and /token requests per client
// network and in total (see RateLimit).
type RateLimitConfig struct {
	// PerSecond is the sustained rate per client network; 0 disables the
	// per-client limit.
	PerSecond float64 `toml:"per_second"`
	// Burst is how many requests a client network may send at once.
	Burst int `toml:"burst"`
	// MaxClients bounds the client networks tracked.
	MaxClients int `toml:"max_clients"`
	// IPv4Prefix and IPv6Prefix are the prefix lengths by which client
	// addresses share a bucket.
	IPv4Prefix int `toml:"ipv4_prefix"`
	IPv6Prefix int `toml:"ipv6_prefix"`
	// GlobalPerSecond is the sustained rate of all clients together; 0
	// disables the global limit.
	GlobalPerSecond float64 `toml:"global_per_second"`
	// GlobalBurst is how many requests all clients may send at once.
	GlobalBurst int `toml:"global_burst"`
}

// KeysConfig locates key material kept outside the database.
type KeysConfig struct {
	// SealKeyFile is the sealing key file (see package seal).
	SealKeyFile string `toml:"seal_key_file"`
}

// AdminConfig says how administrators reach the admin API: through the
// local socket at SocketPath without a token, and with a bearer token
// signed by the key of PublicKeyFile, JWKSFile or JWKSURL (at most one).
type AdminConfig struct {
	// SocketPath is the local admin socket (0600, root); empty disables it.
	SocketPath string `toml:"socket_path"`
	// MaxTokenTTL is the longest admin token lifetime accepted (0 means
	// DefaultAdminMaxTokenTTL).
	MaxTokenTTL   Duration `toml:"max_token_ttl"`
	PublicKeyFile string   `toml:"public_key_file"`
	JWKSFile      string   `toml:"jwks_file"`
	JWKSURL       string   `toml:"jwks_url"`
	// Audience, when set, must be in the admin token's "aud".
	Audience string `toml:"audience"`
}

// AttestorsConfig enables and configures the attestors. Each is offered
// under its name as an RCAR "tee".
type AttestorsConfig struct {
	Sample    SampleConfig    `toml:"sample"`
	JoinToken JoinTokenConfig `toml:"join_token"`
	X509Pop   X509PopConfig   `toml:"x509pop"`
	K8sPSAT   K8sPSATConfig   `toml:"k8s_psat"`
}

// X509PopConfig enables SPIRE's x509pop node attestor (package
// attest/x509pop, docs/attestor-x509pop.md).
type X509PopConfig struct {
	Enabled bool `toml:"enabled"`
	x509pop.Config
}

// K8sPSATConfig enables SPIRE's k8s_psat node attestor (package
// attest/k8spsat, docs/attestor-k8s_psat.md).
type K8sPSATConfig struct {
	Enabled bool `toml:"enabled"`
	k8spsat.Config
}

// SampleConfig configures the sample TEE attestor.
type SampleConfig struct {
	Enabled bool `toml:"enabled"`
}

// JoinTokenConfig configures the join_token attestor.
type JoinTokenConfig struct {
	Enabled bool `toml:"enabled"`
	// MaxTTL bounds the lifetime of created join tokens.
	MaxTTL Duration `toml:"max_ttl"`
}

// DefaultConfig returns the configuration that default.toml describes.
func DefaultConfig() Config {
	var c Config
	c.Plugins.NebulaCA.Config = nebulaca.DefaultConfig()
	c.Plugins.SVID.Config = svid.DefaultConfig()
	if err := config.Decode([]byte(defaultTOML), &c); err != nil {
		panic(fmt.Sprintf("broker: embedded default.toml is invalid: %v", err))
	}
	return c
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var p config.Problems
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		p.Addf("listen = %q: want host:port, such as \"127.0.0.1:8080\" (%v)", c.Listen, err)
	}
	c.validateTLS(&p)
	switch c.Store.Driver {
	case "sqlite":
		if c.Store.Path == "" {
			p.Addf("store.path is empty: set it to the SQLite database file, such as \"/var/lib/trustgate/trustgate.db\"")
		}
		if s := c.Store.Synchronous; s != "" && s != "NORMAL" && s != "FULL" {
			p.Addf("store.synchronous = %q: want \"NORMAL\" or \"FULL\"", s)
		}
		c.Store.PostgresConfig.refuse(&p)
	case "postgres":
		c.Store.PostgresConfig.validate(&p)
	default:
		p.Addf("store.driver = %q: want \"sqlite\" (embedded) or \"postgres\" (replicas on one database)", c.Store.Driver)
	}
	positive := func(name string, d Duration) {
		if d.Duration <= 0 {
			p.Addf("%s = %q: want a positive duration such as \"10s\"", name, d)
		}
	}
	positive("shutdown_grace", c.ShutdownGrace)
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		p.Addf("trust_domain = %q: %v (want a name such as \"example.org\")", c.TrustDomain, err)
	}
	if c.Issuer == "" {
		p.Addf("issuer is empty: set it to the broker's public URL")
	}
	positive("attest_timeout", c.AttestTimeout)
	positive("session.ttl", c.Session.TTL)
	positive("session.sweep_interval", c.Session.SweepInterval)
	positive("token.ttl", c.Token.TTL)
	positive("token.key_lifetime", c.Token.KeyLifetime)
	positive("token.prepublish", c.Token.Prepublish)
	if c.Token.Prepublish.Duration >= c.Token.KeyLifetime.Duration {
		p.Addf("token.prepublish = %q must be shorter than token.key_lifetime = %q", c.Token.Prepublish, c.Token.KeyLifetime)
	}
	if c.RateLimit.PerSecond < 0 {
		p.Addf("rate_limit.per_second = %v: want 0 (off) or more", c.RateLimit.PerSecond)
	}
	if c.RateLimit.PerSecond > 0 && (c.RateLimit.Burst < 1 || c.RateLimit.MaxClients < 1) {
		p.Addf("rate_limit.burst and rate_limit.max_clients must be at least 1 when rate_limit.per_second is set")
	}
	if n := c.RateLimit.IPv4Prefix; n < 1 || n > 32 {
		p.Addf("rate_limit.ipv4_prefix = %d: want a prefix length from 1 to 32 (32: one bucket per address)", n)
	}
	if n := c.RateLimit.IPv6Prefix; n < 1 || n > 128 {
		p.Addf("rate_limit.ipv6_prefix = %d: want a prefix length from 1 to 128 (64: one bucket per /64, the block one host usually holds)", n)
	}
	if c.RateLimit.GlobalPerSecond < 0 {
		p.Addf("rate_limit.global_per_second = %v: want 0 (off) or more", c.RateLimit.GlobalPerSecond)
	}
	if c.RateLimit.GlobalPerSecond > 0 && c.RateLimit.GlobalBurst < 1 {
		p.Addf("rate_limit.global_burst must be at least 1 when rate_limit.global_per_second is set")
	}
	if c.Keys.SealKeyFile == "" {
		p.Addf("keys.seal_key_file is empty: the sealing key must be a file outside the database")
	}
	n := 0
	for _, s := range []string{c.Admin.PublicKeyFile, c.Admin.JWKSFile, c.Admin.JWKSURL} {
		if s != "" {
			n++
		}
	}
	switch {
	case n > 1:
		p.Addf("admin: set at most one of public_key_file, jwks_file and jwks_url (%d set)", n)
	case n == 0 && c.Admin.SocketPath == "":
		p.Addf("admin: no way to administer this broker: set admin.socket_path (local, no token), or admin.public_key_file (tokens from `trustgate admin token`)")
	}
	if c.Admin.MaxTokenTTL.Duration < 0 {
		p.Addf("admin.max_token_ttl = %q: want a positive duration such as \"1h\" (0 means the default, 1h)", c.Admin.MaxTokenTTL)
	}
	if c.Admin.JWKSURL != "" {
		if u, err := url.Parse(c.Admin.JWKSURL); err != nil || u.Scheme != "https" || u.Host == "" {
			shown := c.Admin.JWKSURL
			if err == nil {
				shown = u.Redacted()
			}
			p.Addf("admin.jwks_url = %q: want an https:// URL (the keys that admit admins must not travel in cleartext); serve the JWKS over https, or save it to a file and set admin.jwks_file instead", shown)
		}
	}
	if !c.Attestors.Sample.Enabled && !c.Attestors.JoinToken.Enabled {
		p.Addf("attestors: every attestor is disabled, so nothing can attest")
	}
	if c.Attestors.JoinToken.Enabled {
		positive("attestors.join_token.max_ttl", c.Attestors.JoinToken.MaxTTL)
	}
	if c.Plugins.MaxBodyBytes < 1 {
		p.Addf("plugins.max_body_bytes = %d: want a positive size in bytes, such as 1048576", c.Plugins.MaxBodyBytes)
	}
	seen := map[string]bool{}
	for i, e := range c.Plugins.External {
		where := fmt.Sprintf("plugins.external[%d] (%q)", i, e.Name)
		switch {
		case !plugin.ValidSegment(e.Name):
			p.Addf("%s: name must match [a-zA-Z0-9_-][a-zA-Z0-9_.-]*", where)
		case slices.Contains(ReservedNames, e.Name) || slices.Contains(BuiltinPluginNames, e.Name):
			p.Addf("%s: name is taken by the broker (%s, %s)", where, strings.Join(ReservedNames, ", "), strings.Join(BuiltinPluginNames, ", "))
		case seen[e.Name]:
			p.Addf("%s: two external plugins have this name", where)
		}
		seen[e.Name] = true
		network, _, err := external.ParseAddress(e.Address)
		if err != nil {
			p.Addf("%s: %v", where, err)
		}
		if e.PublicKey != "" {
			if _, err := pluginauth.ParsePublicKey(e.PublicKey); err != nil {
				p.Addf("%s: public_key: %v", where, err)
			}
		} else if network == "unix" {
			p.Addf("%s: a unix socket plugin needs public_key (the plugin's pluginauth key; see trustgate keygen)", where)
		}
		if e.Timeout.Duration < 0 {
			p.Addf("%s: timeout must not be negative", where)
		}
	}
	switch c.Policy.Default {
	case "deny-all", "sample-dev":
	default:
		p.Addf("policy.default = %q: want \"deny-all\" or \"sample-dev\"", c.Policy.Default)
	}
	if ts := c.TokenService; ts.Enabled {
		if u, err := url.Parse(c.RealmURL()); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || strings.ContainsAny(c.RealmURL(), "\"\\") {
			p.Addf("token_service.realm = %q: want the absolute http(s) URL of /token as callers reach it (default: issuer + \"/token\")", c.RealmURL())
		}
		if ts.Service == "" || strings.ContainsAny(ts.Service, "\"\\") {
			p.Addf("token_service.service = %q: want a name without quotes or backslashes, such as \"trustgate\"", ts.Service)
		}
		for _, svc := range ts.Services {
			if svc == "" || strings.ContainsAny(svc, "\"\\") || svc == ts.Service {
				p.Addf("token_service.services: %q: want registry service names (as in their auth.token.service), each different from token_service.service", svc)
			}
		}
		for _, svc := range ts.X5CServices {
			if !slices.Contains(ts.Services, svc) {
				p.Addf("token_service.x5c_services: %q is not in token_service.services: list there the registries that trust /.well-known/token-ca.pem as auth.token.rootcertbundle", svc)
			}
		}
		positive("token_service.expires_in", ts.ExpiresIn)
	}
	sub := func(section string, enabled bool, err func() error) {
		if !enabled {
			return
		}
		if e := err(); e != nil {
			for _, msg := range config.ProblemsOf(e) {
				p.Addf("[%s] %s", section, msg)
			}
		}
	}
	sub("attestors.x509pop", c.Attestors.X509Pop.Enabled, c.Attestors.X509Pop.Validate)
	sub("attestors.k8s_psat", c.Attestors.K8sPSAT.Enabled, c.Attestors.K8sPSAT.Validate)
	sub("plugins.nebula_ca", c.Plugins.NebulaCA.Enabled, c.Plugins.NebulaCA.Validate)
	sub("plugins.svid", c.Plugins.SVID.Enabled, c.Plugins.SVID.Validate)
	return p.Err()
}

// Duration is a duration written in TOML as a string such as "90s".
type Duration = config.Duration
