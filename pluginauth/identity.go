package pluginauth

import (
	"log/slog"
	"maps"
	"net"
	"slices"
)

// Identity is what a server-side handshake established about a plugin: the
// key it proved (if any), the role that key maps to, and the name and index
// it claimed in its hello.
type Identity struct {
	// PublicKey is the key the plugin proved it holds; zero when the plugin
	// authenticated with algorithm "none".
	PublicKey PublicKey
	// Role is the name of the plugin's role.
	Role string
	// Tags are the role's tags.
	Tags map[string]string
	// Capabilities are the role's opaque capabilities.
	Capabilities []string
	// Name is the plugin name claimed in the hello.
	Name string
	// Index is the plugin index claimed in the hello.
	Index string

	role *RoleConfig
}

func newIdentity(k PublicKey, r *RoleConfig, name, index string) *Identity {
	return &Identity{
		PublicKey:    k,
		Role:         r.Role,
		Tags:         maps.Clone(r.Tags),
		Capabilities: slices.Clone(r.Capabilities),
		Name:         name,
		Index:        index,
		role:         r,
	}
}

// Authenticated reports whether the plugin proved a key.
func (id *Identity) Authenticated() bool { return !id.PublicKey.IsZero() }

// Fingerprint is the SHA-256 fingerprint of the plugin's key, or "" without
// one.
func (id *Identity) Fingerprint() string { return id.PublicKey.Fingerprint() }

// MayRegister reports whether the plugin may register with the runtime as
// name and index: they must be the ones it claimed in the handshake, and its
// role must allow them. The NRI gateway calls it at registration time.
func (id *Identity) MayRegister(name, index string) bool {
	if id == nil || id.role == nil {
		return false
	}
	return name == id.Name && index == id.Index && id.role.MayClaim(name, index)
}

// Outcome returns what the plugin was told it was granted.
func (id *Identity) Outcome() Outcome {
	return Outcome{Role: id.Role, Tags: maps.Clone(id.Tags), Capabilities: slices.Clone(id.Capabilities)}
}

// LogValue implements slog.LogValuer.
func (id *Identity) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("plugin", id.Index+"-"+id.Name),
		slog.String("role", id.Role),
	}
	if id.Authenticated() {
		attrs = append(attrs, slog.String("key", id.PublicKey.String()), slog.String("fingerprint", id.Fingerprint()))
	} else {
		attrs = append(attrs, slog.Bool("authenticated", false))
	}
	return slog.GroupValue(attrs...)
}

// Conn is a server-side connection whose plugin passed the handshake. Reads
// and writes go straight to the underlying connection.
type Conn struct {
	net.Conn
	id *Identity
}

// Identity returns what the handshake established.
func (c *Conn) Identity() *Identity { return c.id }

// IdentityOf returns the Identity of a connection accepted from a Listener,
// and false for any other connection.
func IdentityOf(c net.Conn) (*Identity, bool) {
	ac, ok := c.(*Conn)
	if !ok {
		return nil, false
	}
	return ac.id, true
}
