package external

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/trustgate/trustgate/pluginauth"
)

// Listener is the plugin side: it wraps the plugin's unix socket listener
// so that each connection the broker opens first runs the client side of
// the pluginauth handshake, proving key under name, and is then handed to
// the gRPC server. Serve a pb.KbsPluginServer with grpc.Server.Serve(l).
type Listener struct {
	net.Listener
	key     *pluginauth.PrivateKey
	name    string
	timeout time.Duration
}

// NewListener wraps inner. timeout bounds each handshake (0 means
// pluginauth's default).
func NewListener(inner net.Listener, key *pluginauth.PrivateKey, name string, timeout time.Duration) (*Listener, error) {
	if key == nil {
		return nil, errors.New("external: a plugin key is required")
	}
	if err := pluginauth.CheckPluginName(name); err != nil {
		return nil, fmt.Errorf("external: %w", err)
	}
	return &Listener{Listener: inner, key: key, name: name, timeout: timeout}, nil
}

// Accept returns the next connection whose handshake succeeded. A failed
// handshake closes that connection and waits for the next one, so one bad
// peer cannot stop the server.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		var opts []pluginauth.DialOption
		if l.timeout > 0 {
			opts = append(opts, pluginauth.WithHandshakeTimeout(l.timeout))
		}
		if _, err := pluginauth.ClientHandshake(context.Background(), c, l.key, l.name, HandshakeIndex, opts...); err != nil {
			c.Close()
			continue
		}
		return c, nil
	}
}
