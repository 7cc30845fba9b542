package nrigate

import (
	_ "embed"
	"fmt"
	"path"
	"path/filepath"
	"sort"
	"time"

	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/nripolicy"
	"github.com/trustgate/trustgate/pluginauth"
)

//go:embed default.toml
var defaultTOML string

// DefaultConfigTOML is the commented default configuration that
// `trustgate nri-gateway --print-default-config` prints.
func DefaultConfigTOML() string { return defaultTOML }

// Config is the gateway's configuration file.
type Config struct {
	// UpstreamSocket is the runtime's NRI socket.
	UpstreamSocket string `toml:"upstream_socket"`
	// Socket is where plugins connect to the gateway.
	Socket string `toml:"socket"`
	// SocketGroup, when set, makes Socket mode 0660 and owned by this
	// group (name or numeric ID); otherwise it is 0600, root only.
	SocketGroup string `toml:"socket_group"`
	// StateDir holds the private socket of the gateway's own NRI runtime;
	// it is created mode 0700.
	StateDir string `toml:"state_dir"`
	// PluginName and PluginIndex are the gateway's registration upstream.
	PluginName  string `toml:"plugin_name"`
	PluginIndex string `toml:"plugin_index"`
	// RegistrationTimeout bounds a plugin's wait between authenticating
	// and registering, and NRI's registration.
	RegistrationTimeout pluginauth.Duration `toml:"registration_timeout"`
	// RuntimeRequestTimeout is the runtime's own timeout for each NRI
	// request to the gateway: containerd's plugin_request_timeout
	// (default 2s). The gateway must answer within it.
	RuntimeRequestTimeout pluginauth.Duration `toml:"runtime_request_timeout"`
	// RequestTimeout bounds each NRI request to a downstream plugin. It
	// must be below RuntimeRequestTimeout, so that the gateway drops a slow
	// plugin and still answers the runtime in time. Zero derives it:
	// three quarters of RuntimeRequestTimeout.
	RequestTimeout pluginauth.Duration `toml:"request_timeout"`
	// FailClosed asks the runtime (NRI failure policy fail_request) to fail
	// a request that the gateway does not answer in time, instead of going
	// on without the gateway, and so without its policy. The gateway always
	// asks to stay registered after a timeout (keep_connected).
	FailClosed bool `toml:"fail_closed"`
	// ReconnectMaxBackoff caps the wait between upstream reconnections.
	ReconnectMaxBackoff pluginauth.Duration `toml:"reconnect_max_backoff"`
	// ValidateUpstream registers the gateway as a validator upstream,
	// refusing adjustments by plugins that did not come through it.
	ValidateUpstream bool `toml:"validate_upstream"`
	// AllowUpstreamPlugins lists plugins ("<index>-<name>", globs) that
	// may adjust containers upstream without the gateway.
	AllowUpstreamPlugins nripolicy.Globs `toml:"allow_upstream_plugins"`
	// KnownUpstreamPlugins lists plugins ("<index>-<name>", globs) expected
	// on the runtime's socket that adjust nothing, such as containerd's
	// built-in "00-default-validator": the gateway does not alert on them.
	// Their adjustments are refused all the same.
	KnownUpstreamPlugins nripolicy.Globs `toml:"known_upstream_plugins"`

	// RequireAuthentication refuses plugins without a key; otherwise they
	// get the role "default".
	RequireAuthentication bool `toml:"require_authentication"`
	// HandshakeTimeout bounds each plugin's authentication handshake.
	HandshakeTimeout pluginauth.Duration `toml:"handshake_timeout"`
	// MaxPendingHandshakes bounds concurrent handshakes.
	MaxPendingHandshakes int `toml:"max_pending_handshakes"`
	// FirstFrameTimeout bounds the wait for a plugin's first handshake
	// frame; a peer that stays silent is dropped then.
	FirstFrameTimeout pluginauth.Duration `toml:"first_frame_timeout"`
	// MaxPendingHandshakesPerUID bounds concurrent handshakes from one
	// peer uid (SO_PEERCRED).
	MaxPendingHandshakesPerUID int `toml:"max_pending_handshakes_per_uid"`
	// AllowedPeerUIDs and AllowedPeerGIDs, when either is set, admit to
	// the handshake only peers with a listed uid or (primary) gid.
	AllowedPeerUIDs []uint32 `toml:"allowed_peer_uids"`
	AllowedPeerGIDs []uint32 `toml:"allowed_peer_gids"`
	// KeyFile is the gateway's own key, for plugins that pin it.
	KeyFile string `toml:"key_file"`

	// Roles map plugin keys to names they may register under and to what
	// they may change.
	Roles []Role `toml:"roles"`
	// Global rules apply whatever the role.
	Global nripolicy.Globals `toml:"global"`
	// DefaultValidator, if given, defines the "default" role with
	// containerd's [plugins."io.containerd.nri.v1.nri".default_validator]
	// knobs, one to one.
	DefaultValidator *nripolicy.DefaultValidatorConfig `toml:"default_validator"`
}

// Role is one plugin role: pluginauth's key-to-name binding plus the
// role's mutation policy.
type Role struct {
	pluginauth.RoleConfig
	Policy nripolicy.Policy `toml:"policy"`
}

// DefaultConfig returns the configuration default.toml describes.
func DefaultConfig() Config {
	var c Config
	if err := config.Decode([]byte(defaultTOML), &c); err != nil {
		panic(fmt.Sprintf("nrigate: embedded default.toml is invalid: %v", err))
	}
	return c
}

// RequestTimeoutMargin is the least time the gateway keeps, within the
// runtime's request timeout, for its own work after dropping a slow plugin
// (collation, policy, relaying the answer). A request_timeout closer to
// runtime_request_timeout than this draws a start-up warning.
const RequestTimeoutMargin = 250 * time.Millisecond

// derivedRequestTimeout is the default request_timeout for a runtime
// timeout rt: three quarters of it (1.5s for containerd's 2s).
func derivedRequestTimeout(rt time.Duration) time.Duration { return rt * 3 / 4 }

// requestTimeout is the timeout of each NRI request to a downstream
// plugin: request_timeout, or derived from runtime_request_timeout.
func (c *Config) requestTimeout() time.Duration {
	if c.RequestTimeout > 0 {
		return time.Duration(c.RequestTimeout)
	}
	return derivedRequestTimeout(time.Duration(c.RuntimeRequestTimeout))
}

// timeoutWarning says why request_timeout is too close to the runtime's,
// or returns "".
func (c *Config) timeoutWarning() string {
	rt, rq := time.Duration(c.RuntimeRequestTimeout), c.requestTimeout()
	if rt-rq >= RequestTimeoutMargin {
		return ""
	}
	return fmt.Sprintf("request_timeout (%s) leaves less than %s below runtime_request_timeout (%s): a slow plugin can make the runtime time the gateway out", rq, RequestTimeoutMargin, rt)
}

// authConfig is the pluginauth part of the configuration.
func (c *Config) authConfig() pluginauth.ServerConfig {
	ac := pluginauth.ServerConfig{
		RequireAuthentication: c.RequireAuthentication,
		HandshakeTimeout:      c.HandshakeTimeout,
		MaxPendingHandshakes:  c.MaxPendingHandshakes,
		KeyFile:               c.KeyFile,

		FirstFrameTimeout:          c.FirstFrameTimeout,
		MaxPendingHandshakesPerUID: c.MaxPendingHandshakesPerUID,
		AllowedPeerUIDs:            c.AllowedPeerUIDs,
		AllowedPeerGIDs:            c.AllowedPeerGIDs,
	}
	for _, r := range c.Roles {
		ac.Roles = append(ac.Roles, r.RoleConfig)
	}
	if c.DefaultValidator != nil && c.role(pluginauth.DefaultRole) == nil {
		ac.Roles = append(ac.Roles, pluginauth.RoleConfig{Role: pluginauth.DefaultRole, Names: []string{"*"}, Indices: []string{"*"}})
	}
	return ac
}

// role returns the configured role named name, or nil.
func (c *Config) role(name string) *Role {
	for i := range c.Roles {
		if c.Roles[i].Role == name {
			return &c.Roles[i]
		}
	}
	return nil
}

// policies returns each role's policy, and the globals, with the default
// validator knobs applied.
func (c *Config) policies() (map[string]*nripolicy.Policy, nripolicy.Globals) {
	out := map[string]*nripolicy.Policy{}
	for i := range c.Roles {
		out[c.Roles[i].Role] = &c.Roles[i].Policy
	}
	g := c.Global
	if c.DefaultValidator != nil {
		p, dg := nripolicy.FromDefaultValidator(*c.DefaultValidator)
		out[pluginauth.DefaultRole] = &p
		g.RequiredPlugins = append(g.RequiredPlugins, dg.RequiredPlugins...)
		if g.TolerateMissingAnnotation == "" {
			g.TolerateMissingAnnotation = dg.TolerateMissingAnnotation
		}
	}
	return out, g
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var p config.Problems
	for name, v := range map[string]string{"upstream_socket": c.UpstreamSocket, "socket": c.Socket, "state_dir": c.StateDir} {
		if !filepath.IsAbs(v) {
			p.Addf("%s = %q: want an absolute path", name, v)
		}
	}
	if g := c.SocketGroup; g != "" {
		if _, err := lookupGroup(g); err != nil {
			p.Addf("socket_group = %q: no such group on this host (%v): create it (groupadd %s), name an existing group or a numeric gid, or leave socket_group empty for a root-only socket", g, err, g)
		}
	}
	if c.Socket == c.UpstreamSocket {
		p.Addf("socket and upstream_socket are both %q: the gateway needs its own socket", c.Socket)
	}
	if c.PluginName == "" || len(c.PluginIndex) != 2 || c.PluginIndex[0] < '0' || c.PluginIndex[0] > '9' || c.PluginIndex[1] < '0' || c.PluginIndex[1] > '9' {
		p.Addf("plugin_name = %q, plugin_index = %q: want a name and a two-digit index such as \"10\"", c.PluginName, c.PluginIndex)
	}
	for name, d := range map[string]pluginauth.Duration{"registration_timeout": c.RegistrationTimeout, "runtime_request_timeout": c.RuntimeRequestTimeout, "reconnect_max_backoff": c.ReconnectMaxBackoff} {
		if time.Duration(d) <= 0 {
			p.Addf("%s = %q: want a positive duration such as \"5s\"", name, time.Duration(d))
		}
	}
	switch rt, rq := time.Duration(c.RuntimeRequestTimeout), time.Duration(c.RequestTimeout); {
	case rq < 0:
		p.Addf("request_timeout = %q: want a positive duration, or leave it out to derive it from runtime_request_timeout", rq)
	case rt > 0 && rq >= rt:
		p.Addf("request_timeout = %q is not below runtime_request_timeout = %q: the runtime would time the gateway out before the gateway drops a slow plugin, failing every container creation; leave request_timeout out (%s) or set it below %s",
			rq, rt, derivedRequestTimeout(rt), rt-RequestTimeoutMargin)
	}
	for name, globs := range map[string]nripolicy.Globs{"allow_upstream_plugins": c.AllowUpstreamPlugins, "known_upstream_plugins": c.KnownUpstreamPlugins} {
		for _, g := range globs {
			if _, err := path.Match(g, ""); err != nil {
				p.Addf("%s: pattern %q: %v", name, g, err)
			}
		}
	}
	ac := c.authConfig()
	if err := ac.Validate(); err != nil {
		p = append(p, config.ProblemsOf(err)...)
	}
	for i := range c.Roles {
		r := &c.Roles[i]
		if err := r.Policy.Validate(fmt.Sprintf("roles[%d] (%q).policy", i, r.Role)); err != nil {
			p = append(p, config.ProblemsOf(err)...)
		}
	}
	if c.DefaultValidator != nil && c.role(pluginauth.DefaultRole) != nil {
		p.Addf("both [default_validator] and a role named \"default\" are configured: keep one of them")
	}
	sort.Strings(p)
	return p.Err()
}
