package nrigate

import (
	"context"
	"errors"
)

// Ready reports why the gateway cannot take part in container creation, or
// nil: it is ready only while it is connected to the runtime's NRI socket
// and accepting plugins on its own.
func (g *Gateway) Ready(context.Context) error {
	g.mu.Lock()
	connected := g.stub != nil
	g.mu.Unlock()
	switch {
	case !connected:
		return errors.New("not connected to the runtime's NRI socket")
	case !g.serving.Load():
		return errors.New("not accepting plugins on its socket yet (waiting for the runtime's synchronization)")
	}
	return nil
}
