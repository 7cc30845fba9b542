// Package external connects the broker to plugins that run in their own
// process and speak gRPC: Trustee's kbs.plugin.v1.KbsPlugin service
// (package pb), so a plugin written for Trustee serves trustgate unchanged.
//
// Per request the broker asks the plugin ValidateAuth (admin or attested),
// then, for attested callers, NeedsEncryption, and, once authentication and
// policy pass, Handle. Each call is bounded by Options.Timeout.
//
// On a unix socket the broker dials the plugin and, before gRPC starts on
// the connection, runs the server side of the pluginauth handshake on it:
// the plugin process proves that it holds the X25519 key configured for
// this plugin name (Options.PublicKey), so that a process that took over
// the socket path cannot pose as the plugin. The plugin runs the client
// side on each connection it accepts (Listener does it). A TCP address has
// no such check and no TLS, so it is refused unless it is on loopback, both
// when configured and for the address each dial connects to.
package external

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/external/pb"
	"github.com/trustgate/trustgate/pluginauth"
)

// HandshakeIndex is the plugin index external plugins claim in the
// pluginauth handshake (the handshake's NRI-style index carries no meaning
// here).
const HandshakeIndex = "00"

// DefaultTimeout bounds one gRPC call unless Options.Timeout says otherwise.
const DefaultTimeout = 10 * time.Second

// DefaultMaxResponseBytes bounds a plugin's answer.
const DefaultMaxResponseBytes = 4 << 20

// Options configure one external plugin.
type Options struct {
	// Name is the plugin's name under /kbs/v0/.
	Name string
	// Address is "unix:///path/to.sock" or "tcp://host:port".
	Address string
	// PublicKey is the plugin's pluginauth key; required for unix sockets.
	PublicKey pluginauth.PublicKey
	// Timeout bounds each call (default DefaultTimeout).
	Timeout time.Duration
	// HandshakeTimeout bounds the pluginauth handshake (default that of
	// pluginauth).
	HandshakeTimeout time.Duration
	// MaxResponseBytes bounds a plugin's answer (default
	// DefaultMaxResponseBytes).
	MaxResponseBytes int
	// Log receives connection and handshake events.
	Log *slog.Logger
}

// Plugin is an external plugin. It is safe for concurrent use.
type Plugin struct {
	opts   Options
	conn   *grpc.ClientConn
	client pb.KbsPluginClient
}

// New prepares a connection to the plugin; gRPC dials lazily, so a plugin
// that starts after the broker is reached on first use.
func New(opts Options) (*Plugin, error) {
	if !plugin.ValidSegment(opts.Name) {
		return nil, fmt.Errorf("external plugin %q: the name must be a valid path segment", opts.Name)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxResponseBytes <= 0 {
		opts.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	network, addr, err := ParseAddress(opts.Address)
	if err != nil {
		return nil, fmt.Errorf("external plugin %s: %w", opts.Name, err)
	}
	p := &Plugin{opts: opts}
	var dial func(ctx context.Context, _ string) (net.Conn, error)
	switch network {
	case "unix":
		if opts.PublicKey.IsZero() {
			return nil, fmt.Errorf("external plugin %s: a unix socket plugin needs public_key (its pluginauth key)", opts.Name)
		}
		auth, err := p.authServer()
		if err != nil {
			return nil, err
		}
		dial = func(ctx context.Context, _ string) (net.Conn, error) { return p.dialUnix(ctx, auth, addr) }
	case "tcp":
		dial = func(ctx context.Context, _ string) (net.Conn, error) {
			// "localhost" is resolved at dial time; the address actually
			// connected to must still be loopback.
			d := net.Dialer{Control: func(_, address string, _ syscall.RawConn) error {
				host, _, err := net.SplitHostPort(address)
				if err != nil || !isLoopback(host) {
					return fmt.Errorf("external plugin %s: %s: %w", opts.Name, address, ErrCleartextRemote)
				}
				return nil
			}}
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	conn, err := grpc.NewClient("passthrough:///"+opts.Name,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dial),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(opts.MaxResponseBytes)),
	)
	if err != nil {
		return nil, fmt.Errorf("external plugin %s: %w", opts.Name, err)
	}
	p.conn, p.client = conn, pb.NewKbsPluginClient(conn)
	return p, nil
}

// ErrCleartextRemote reports a tcp:// address that is not on loopback.
var ErrCleartextRemote = errors.New("a tcp:// plugin connection has neither TLS nor the pluginauth handshake, so it must stay on loopback")

// ParseAddress splits "unix:///path" or "tcp://host:port". A tcp address
// must name a loopback address (127.0.0.0/8, ::1) or "localhost": the
// connection is cleartext and unauthenticated, so it may not leave the host.
func ParseAddress(a string) (network, addr string, err error) {
	switch {
	case strings.HasPrefix(a, "unix://"):
		addr = strings.TrimPrefix(a, "unix://")
		if !strings.HasPrefix(addr, "/") {
			return "", "", fmt.Errorf("address %q: want unix:///absolute/path.sock", a)
		}
		return "unix", addr, nil
	case strings.HasPrefix(a, "tcp://"):
		addr = strings.TrimPrefix(a, "tcp://")
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return "", "", fmt.Errorf("address %q: want tcp://host:port: %w", a, err)
		}
		if !isLoopback(host) {
			return "", "", fmt.Errorf("address %q: %w: use tcp://127.0.0.1:PORT, or unix:///path.sock with public_key (the plugin then proves its key); a plugin on another host needs a local TLS tunnel", a, ErrCleartextRemote)
		}
		return "tcp", addr, nil
	default:
		return "", "", fmt.Errorf("address %q: want unix:///path.sock or tcp://host:port", a)
	}
}

// isLoopback reports whether host is "localhost" or a loopback IP literal.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Zone() == "" && ip.Unmap().IsLoopback()
}

// authServer is a pluginauth server that accepts exactly this plugin's key
// under this plugin's name.
func (p *Plugin) authServer() (*pluginauth.Server, error) {
	cfg := pluginauth.DefaultServerConfig()
	if p.opts.HandshakeTimeout > 0 {
		cfg.HandshakeTimeout = pluginauth.Duration(p.opts.HandshakeTimeout)
	}
	cfg.Roles = []pluginauth.RoleConfig{{
		Role: "broker-plugin", Keys: []string{p.opts.PublicKey.String()},
		Names: []string{p.opts.Name}, Indices: []string{HandshakeIndex},
	}}
	s, err := pluginauth.NewServer(cfg, pluginauth.WithLogger(p.opts.Log))
	if err != nil {
		return nil, fmt.Errorf("external plugin %s: pluginauth: %w", p.opts.Name, err)
	}
	return s, nil
}

// dialUnix dials the plugin's socket and has the plugin prove its key.
func (p *Plugin) dialUnix(ctx context.Context, auth *pluginauth.Server, path string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	id, err := auth.Handshake(ctx, c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("external plugin %s: %w", p.opts.Name, err)
	}
	if !id.Authenticated() || !id.PublicKey.Equal(p.opts.PublicKey) || !id.MayRegister(p.opts.Name, HandshakeIndex) {
		c.Close()
		return nil, fmt.Errorf("external plugin %s: the plugin on %s did not prove the configured key", p.opts.Name, path)
	}
	return c, nil
}

// Close closes the connection to the plugin.
func (p *Plugin) Close() error { return p.conn.Close() }

// Name is the configured name.
func (p *Plugin) Name() string { return p.opts.Name }

// Access is Attested for the plugin methods; Decide, which asks the plugin,
// is what the broker uses.
func (p *Plugin) Access(method string) plugin.Access {
	switch method {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete:
		return plugin.Attested
	}
	return plugin.Denied
}

// Encrypt is false; Decide asks the plugin.
func (p *Plugin) Encrypt(string) bool { return false }

// Decide asks the plugin ValidateAuth and, for attested callers,
// NeedsEncryption.
func (p *Plugin) Decide(ctx context.Context, req *plugin.Request) (plugin.Access, bool, error) {
	q := queryOf(req)
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	va, err := p.client.ValidateAuth(ctx, &pb.ValidateAuthRequest{Body: req.Body, Query: q, Path: req.Path, Method: req.Method})
	if err != nil {
		return plugin.Denied, false, fmt.Errorf("ValidateAuth: %w", err)
	}
	if va.GetRequiresAdminAuth() {
		return plugin.Admin, false, nil
	}
	ne, err := p.client.NeedsEncryption(ctx, &pb.NeedsEncryptionRequest{Body: req.Body, Query: q, Path: req.Path, Method: req.Method})
	if err != nil {
		return plugin.Denied, false, fmt.Errorf("NeedsEncryption: %w", err)
	}
	return plugin.Attested, ne.GetRequiresPayloadEncryption(), nil
}

// Handle forwards the request.
func (p *Plugin) Handle(ctx context.Context, req *plugin.Request) (*plugin.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	resp, err := p.client.Handle(ctx, &pb.PluginRequest{Body: req.Body, Query: queryOf(req), Path: req.Path, Method: req.Method})
	if err != nil {
		return nil, fmt.Errorf("external plugin %s: Handle: %w", p.opts.Name, err)
	}
	out, err := FromPB(resp)
	if err != nil {
		return nil, fmt.Errorf("external plugin %s: %w", p.opts.Name, err)
	}
	return out, nil
}

func queryOf(req *plugin.Request) map[string]string {
	q := make(map[string]string, len(req.Query))
	for k, v := range req.Query {
		if len(v) > 0 {
			q[k] = v[0]
		}
	}
	return q
}

// maxDetail bounds the part of a plugin's error body shown to the caller.
const maxDetail = 512

// FromPB checks a plugin's answer and turns it into a plugin.Response or,
// for a 4xx status, a *plugin.Error that passes the plugin's explanation
// (its body, as text, truncated) to the caller. Any other status, or a bad
// content type, is the plugin's failure.
func FromPB(r *pb.PluginResponse) (*plugin.Response, error) {
	status := int(r.GetStatusCode())
	switch {
	case status == 0 || (status >= 200 && status <= 299):
	case status >= 400 && status <= 499:
		detail := string(r.GetBody())
		if len(detail) > maxDetail {
			detail = detail[:maxDetail]
		}
		detail = strings.ToValidUTF8(detail, "\uFFFD")
		if detail == "" {
			detail = http.StatusText(status)
		}
		return nil, &plugin.Error{Status: status, Detail: detail}
	default:
		return nil, fmt.Errorf("plugin answered status %d", status)
	}
	ct := r.GetContentType()
	if ct != "" {
		if !utf8.ValidString(ct) || strings.ContainsAny(ct, "\r\n") {
			return nil, errors.New("plugin answered an invalid content type")
		}
		if _, _, err := mime.ParseMediaType(ct); err != nil {
			return nil, fmt.Errorf("plugin answered content type %.60q: %w", ct, err)
		}
	}
	return &plugin.Response{Status: status, ContentType: ct, Body: r.GetBody()}, nil
}
