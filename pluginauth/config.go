package pluginauth

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"time"

	"github.com/trustgate/trustgate/config"
)

// DefaultRole is the role a plugin without a key gets when authentication is
// not required.
const DefaultRole = "default"

// DefaultHandshakeTimeout bounds a whole handshake when the configuration
// leaves it unset.
const DefaultHandshakeTimeout = 5 * time.Second

// DefaultMaxPendingHandshakes bounds concurrent handshakes on one Listener
// when the configuration leaves it unset.
const DefaultMaxPendingHandshakes = 128

// DefaultFirstFrameTimeout bounds the wait for a plugin's first handshake
// frame when the configuration leaves it unset: a plugin sends it as soon
// as it connects, so a peer that stays silent longer is dropped early.
const DefaultFirstFrameTimeout = time.Second

// DefaultMaxPendingHandshakesPerUID bounds concurrent handshakes from one
// peer uid when the configuration leaves it unset.
const DefaultMaxPendingHandshakesPerUID = 8

// Duration is a time.Duration that TOML spells as a string such as "5s".
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: %w (write it like \"5s\" or \"500ms\")", b, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalText prints the duration in Go syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// ServerConfig is the runtime side's authentication policy. The NRI gateway
// embeds it in its own TOML configuration.
type ServerConfig struct {
	// RequireAuthentication refuses plugins without a key. When false they
	// get the "default" role, which must then be configured.
	RequireAuthentication bool `toml:"require_authentication"`
	// HandshakeTimeout bounds each handshake, every read included. Zero
	// means DefaultHandshakeTimeout.
	HandshakeTimeout Duration `toml:"handshake_timeout"`
	// MaxPendingHandshakes bounds the handshakes a Listener runs at once.
	// Zero means DefaultMaxPendingHandshakes.
	MaxPendingHandshakes int `toml:"max_pending_handshakes"`
	// FirstFrameTimeout bounds the wait for the plugin's first frame (its
	// hello); the rest of the handshake has HandshakeTimeout. Zero means
	// DefaultFirstFrameTimeout.
	FirstFrameTimeout Duration `toml:"first_frame_timeout"`
	// MaxPendingHandshakesPerUID bounds the handshakes a Listener runs at
	// once for one peer uid (SO_PEERCRED). Zero means
	// DefaultMaxPendingHandshakesPerUID.
	MaxPendingHandshakesPerUID int `toml:"max_pending_handshakes_per_uid"`
	// AllowedPeerUIDs and AllowedPeerGIDs, when either is set, admit to the
	// handshake only peers whose uid is in the one or whose (primary) gid
	// is in the other, as SO_PEERCRED reports them; others are closed at
	// once. Empty: any peer that can open the socket.
	AllowedPeerUIDs []uint32 `toml:"allowed_peer_uids"`
	AllowedPeerGIDs []uint32 `toml:"allowed_peer_gids"`
	// KeyFile is the server's static private key, needed only for mutual
	// authentication (plugins that pin the server's public key).
	KeyFile string `toml:"key_file"`
	// Roles map keys to what they may claim and are granted.
	Roles []RoleConfig `toml:"roles"`
}

// RoleConfig is one role: the keys in it, the plugin names and indices those
// keys may claim, and what a plugin in the role is told it may do.
type RoleConfig struct {
	// Role names the role. "default" is the role of plugins without a key.
	Role string `toml:"role"`
	// Keys are the base64 X25519 public keys in this role. A key may be in
	// only one role.
	Keys []string `toml:"keys"`
	// Tags are free-form labels handed to the plugin and to validators.
	Tags map[string]string `toml:"tags"`
	// Names are the plugin names (exact or glob, as in path.Match) that keys
	// of this role may claim. At least one is required; "*" allows any.
	Names []string `toml:"names"`
	// Indices are the plugin indices (exact or glob, such as "1?") that keys
	// of this role may claim. At least one is required; "*" allows any.
	Indices []string `toml:"indices"`
	// Capabilities are opaque to pluginauth: they are handed back to the
	// plugin and exposed on the Identity for the policy layer.
	Capabilities []string `toml:"capabilities"`
}

// DefaultServerConfig returns the defaults to fill before decoding a file:
// authentication required and a 5 s handshake timeout.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		RequireAuthentication:      true,
		HandshakeTimeout:           Duration(DefaultHandshakeTimeout),
		MaxPendingHandshakes:       DefaultMaxPendingHandshakes,
		FirstFrameTimeout:          Duration(DefaultFirstFrameTimeout),
		MaxPendingHandshakesPerUID: DefaultMaxPendingHandshakesPerUID,
	}
}

// MayClaim reports whether the role's name and index patterns allow a
// plugin to claim name and index.
func (r *RoleConfig) MayClaim(name, index string) bool {
	return matchAny(r.Names, name) && matchAny(r.Indices, index)
}

func matchAny(patterns []string, s string) bool {
	for _, p := range patterns {
		if ok, err := path.Match(p, s); err == nil && ok {
			return true
		}
	}
	return false
}

// Validate reports every problem in the configuration at once, each with how
// to fix it.
func (c *ServerConfig) Validate() error {
	var p config.Problems
	if c.HandshakeTimeout < 0 {
		p.Addf("handshake_timeout is negative (%s); set a positive duration such as \"5s\"", time.Duration(c.HandshakeTimeout))
	}
	if c.FirstFrameTimeout < 0 {
		p.Addf("first_frame_timeout is negative (%s); set a positive duration such as \"1s\"", time.Duration(c.FirstFrameTimeout))
	}
	if c.MaxPendingHandshakesPerUID < 0 {
		p.Addf("max_pending_handshakes_per_uid is negative (%d); set a positive number or leave it out for %d", c.MaxPendingHandshakesPerUID, DefaultMaxPendingHandshakesPerUID)
	}
	if c.MaxPendingHandshakes < 0 {
		p.Addf("max_pending_handshakes is negative (%d); set a positive number or leave it out for %d", c.MaxPendingHandshakes, DefaultMaxPendingHandshakes)
	}
	roleAt := map[string]int{}
	keyRole := map[PublicKey]string{}
	hasDefault := false
	for i, r := range c.Roles {
		where := fmt.Sprintf("roles[%d]", i)
		if r.Role == "" {
			p.Addf("%s: role name is empty; set role = \"...\"", where)
		} else {
			where = fmt.Sprintf("roles[%d] (%q)", i, r.Role)
			if j, dup := roleAt[r.Role]; dup {
				p.Addf("%s: role name is also used by roles[%d]; give each role its own name", where, j)
			}
			roleAt[r.Role] = i
		}
		if r.Role == DefaultRole {
			hasDefault = true
		}
		for _, ks := range r.Keys {
			k, err := ParsePublicKey(ks)
			if err != nil {
				p.Addf("%s: key %q: %v; use the public key printed by \"trustgate keygen\"", where, ks, err)
				continue
			}
			if other, dup := keyRole[k]; dup {
				if other == r.Role {
					p.Addf("%s: key %s is listed twice; remove one", where, k)
				} else {
					p.Addf("%s: key %s is also in role %q; a key may be in only one role, so remove it from one of them", where, k, other)
				}
				continue
			}
			keyRole[k] = r.Role
		}
		if len(r.Keys) == 0 && r.Role != DefaultRole {
			p.Addf("%s: no keys; add the public keys of the plugins in this role, or remove the role", where)
		}
		checkPatterns(&p, where, "names", r.Names, "\"my-plugin\" or \"acme-*\"")
		checkPatterns(&p, where, "indices", r.Indices, "\"10\" or \"1?\"")
		checkIndices(&p, where, r.Indices)
		for _, cp := range r.Capabilities {
			if cp == "" {
				p.Addf("%s: empty capability; remove it", where)
			}
		}
		if r.Role != "" {
			if _, err := encodeOutcome(&Outcome{Role: r.Role, Tags: r.Tags, Capabilities: r.Capabilities}); err != nil {
				p.Addf("%s: %v; shorten the role's name, tags or capabilities", where, err)
			}
		}
	}
	if !c.RequireAuthentication && !hasDefault {
		p.Addf("require_authentication is false but no role is named %q; add a role \"default\" (with the names and indices keyless plugins may claim) or set require_authentication = true", DefaultRole)
	}
	return p.Err()
}

func checkPatterns(p *config.Problems, where, field string, patterns []string, example string) {
	if len(patterns) == 0 {
		p.Addf("%s: %s is empty; list what this role may claim, such as %s, or \"*\" for anything", where, field, example)
	}
	seen := map[string]bool{}
	for _, pat := range patterns {
		if _, err := path.Match(pat, ""); err != nil || pat == "" {
			p.Addf("%s: %s pattern %q is not a valid glob; use path.Match syntax such as %s", where, field, pat, example)
		}
		if seen[pat] {
			p.Addf("%s: %s pattern %q is listed twice; remove one", where, field, pat)
		}
		seen[pat] = true
	}
}

// checkIndices refuses index patterns that no plugin can ever claim: NRI
// plugin indices are exactly two digits, 00 to 99.
func checkIndices(p *config.Problems, where string, patterns []string) {
	for _, pat := range patterns {
		if _, err := path.Match(pat, ""); err != nil || pat == "" {
			continue // reported by checkPatterns
		}
		ok := false
		for i := 0; i < 100 && !ok; i++ {
			ok, _ = path.Match(pat, fmt.Sprintf("%02d", i))
		}
		if !ok {
			p.Addf("%s: indices pattern %q can never match: an NRI plugin index is exactly two digits (00 to 99); write \"5?\" for 50 to 59, \"0[1-9]\" for 01 to 09, or \"10\"", where, pat)
		}
	}
}

// policy is a validated ServerConfig ready for lookups.
type policy struct {
	require     bool
	byKey       map[PublicKey]*RoleConfig
	defaultRole *RoleConfig
}

func newPolicy(c *ServerConfig) (*policy, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("pluginauth config: %w", err)
	}
	p := &policy{require: c.RequireAuthentication, byKey: map[PublicKey]*RoleConfig{}}
	for i := range c.Roles {
		r := cloneRole(&c.Roles[i])
		if r.Role == DefaultRole {
			p.defaultRole = r
		}
		for _, ks := range r.Keys {
			k, _ := ParsePublicKey(ks) // checked by Validate
			p.byKey[k] = r
		}
	}
	return p, nil
}

// cloneRole copies a role so later edits of the caller's config cannot
// change a running server's policy.
func cloneRole(r *RoleConfig) *RoleConfig {
	c := *r
	c.Keys = slices.Clone(r.Keys)
	c.Names = slices.Clone(r.Names)
	c.Indices = slices.Clone(r.Indices)
	c.Capabilities = slices.Clone(r.Capabilities)
	c.Tags = maps.Clone(r.Tags)
	return &c
}
