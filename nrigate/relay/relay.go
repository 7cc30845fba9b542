// Package relay carries one authenticated plugin's NRI connection to the
// gateway's private NRI runtime, and enforces on the way what the runtime
// itself cannot: which name the plugin registers under, and which container
// updates it may ask for.
//
// Accept reads the plugin's stream until its RegisterPlugin request is
// complete and lets a Checker decide on it; only then does the caller dial
// the runtime and call Run, so a plugin that stalls or lies never reaches
// the runtime. Run relays both directions, checking every unsolicited
// UpdateContainers request and every answer to an UpdateContainer request
// before the runtime sees it; a refused request is answered to the plugin
// with PermissionDenied, and a refused answer reaches the runtime as one.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/containerd/ttrpc"
	"github.com/trustgate/trustgate/nrigate/wire"
)

const (
	runtimeService = "nri.pkg.api.v1alpha1.Runtime"
	pluginService  = "nri.pkg.api.v1alpha1.Plugin"
)

// Checker decides on what a plugin sends towards the runtime. A non-nil
// error refuses; its text is the reason given to the plugin and the log.
type Checker interface {
	// Register decides on the plugin's registration.
	Register(ctx context.Context, req *api.RegisterPluginRequest) error
	// Updates decides on container updates the plugin asks for: event is
	// "unsolicited-update" for an UpdateContainers request, or the name of
	// the runtime request whose answer carries them ("CreateContainer",
	// "UpdateContainer", "StopContainer", "Synchronize").
	Updates(ctx context.Context, event string, updates []*api.ContainerUpdate) error
}

// answers maps the runtime requests whose answers carry container updates
// to a decoder of those answers.
var answers = map[string]func([]byte) ([]*api.ContainerUpdate, error){
	"CreateContainer": func(b []byte) ([]*api.ContainerUpdate, error) {
		m := &api.CreateContainerResponse{}
		err := proto.Unmarshal(b, m)
		return m.GetUpdate(), err
	},
	"UpdateContainer": func(b []byte) ([]*api.ContainerUpdate, error) {
		m := &api.UpdateContainerResponse{}
		err := proto.Unmarshal(b, m)
		return m.GetUpdate(), err
	},
	"StopContainer": func(b []byte) ([]*api.ContainerUpdate, error) {
		m := &api.StopContainerResponse{}
		err := proto.Unmarshal(b, m)
		return m.GetUpdate(), err
	},
	"Synchronize": func(b []byte) ([]*api.ContainerUpdate, error) {
		m := &api.SynchronizeResponse{}
		err := proto.Unmarshal(b, m)
		return m.GetUpdate(), err
	},
}

// ErrRefused wraps every refusal by the Checker.
var ErrRefused = errors.New("refused by policy")

// Conn is a plugin connection whose registration was accepted.
type Conn struct {
	plugin net.Conn
	chk    Checker
	log    *slog.Logger

	// pending holds what the plugin sent up to and including its
	// registration, re-framed, for the runtime.
	pending []byte
	// Streams being reassembled, plugin to runtime.
	toRuntimeRPC    wire.Stream // the plugin's requests (RuntimeService)
	toRuntimeAnswer wire.Stream // the plugin's answers (PluginService)
	// The runtime's requests to the plugin, runtime to plugin.
	fromRuntimeRPC wire.Stream

	mu sync.Mutex // guards pendingAnswers and writes to plugin
	// pendingAnswers maps the stream IDs of the runtime's requests whose
	// answers carry updates to the request's method.
	pendingAnswers map[uint32]string
}

// Accept reads from plugin until its RegisterPlugin request is complete,
// within timeout, and asks chk whether it may register. On success the
// returned Conn is ready for Run; on failure plugin is left to the caller
// to close.
func Accept(ctx context.Context, plugin net.Conn, chk Checker, timeout time.Duration, log *slog.Logger) (*Conn, *api.RegisterPluginRequest, error) {
	c := &Conn{plugin: plugin, chk: chk, log: log, pendingAnswers: map[uint32]string{}}
	if err := plugin.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, nil, fmt.Errorf("set registration deadline: %w", err)
	}
	defer func() { _ = plugin.SetReadDeadline(time.Time{}) }()
	for {
		f, err := wire.ReadFrame(plugin)
		if err != nil {
			return nil, nil, fmt.Errorf("waiting for registration: %w", err)
		}
		switch f.Conn {
		case wire.PluginService:
			// Nothing was asked of the plugin yet; keep whatever it sent.
			c.pending = wire.AppendFrames(c.pending, f.Conn, f.Payload)
			continue
		case wire.RuntimeService:
		default:
			return nil, nil, fmt.Errorf("%w: frame for unknown mux connection %d", wire.ErrMalformed, f.Conn)
		}
		c.toRuntimeRPC.Feed(f.Payload)
		m, ok, err := c.toRuntimeRPC.Next()
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			continue
		}
		req, err := registration(m)
		if err != nil {
			return nil, nil, err
		}
		if err := chk.Register(ctx, req); err != nil {
			return nil, req, fmt.Errorf("%w: registration as %s-%s: %v", ErrRefused, req.PluginIdx, req.PluginName, err)
		}
		c.pending = wire.AppendFrames(c.pending, wire.RuntimeService, m.Append(nil))
		return c, req, nil
	}
}

// registration decodes the plugin's first request, which must be
// RegisterPlugin.
func registration(m wire.Message) (*api.RegisterPluginRequest, error) {
	if m.Type != wire.TypeRequest {
		return nil, fmt.Errorf("%w: first message is of type %d, not a request", wire.ErrMalformed, m.Type)
	}
	r, err := wire.ParseRequest(m.Body)
	if err != nil {
		return nil, err
	}
	if r.Service != runtimeService || r.Method != "RegisterPlugin" {
		return nil, fmt.Errorf("%w: first request is %s/%s, not RegisterPlugin", wire.ErrMalformed, r.Service, r.Method)
	}
	req := &api.RegisterPluginRequest{}
	if err := proto.Unmarshal(r.Payload, req); err != nil {
		return nil, fmt.Errorf("%w: RegisterPlugin request: %v", wire.ErrMalformed, err)
	}
	return req, nil
}

// Run relays between the plugin and runtime until either side closes or
// breaks the protocol, then closes both. It returns nil on a clean close.
func (c *Conn) Run(ctx context.Context, runtime net.Conn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- c.toRuntime(ctx, runtime) }()
	go func() { errc <- c.fromRuntime(runtime) }()
	go func() {
		<-ctx.Done()
		_ = c.plugin.Close()
		_ = runtime.Close()
	}()
	err := <-errc
	cancel()
	<-errc
	if isClosed(err) {
		return nil
	}
	return err
}

// isClosed reports whether err is one side hanging up.
func isClosed(err error) bool {
	return err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// toRuntime relays the plugin's frames to the runtime.
func (c *Conn) toRuntime(ctx context.Context, runtime net.Conn) error {
	if _, err := runtime.Write(c.pending); err != nil {
		return fmt.Errorf("forward registration: %w", err)
	}
	c.pending = nil
	var out []byte
	for {
		f, err := wire.ReadFrame(c.plugin)
		if err != nil {
			return err
		}
		out = out[:0]
		switch f.Conn {
		case wire.RuntimeService:
			c.toRuntimeRPC.Feed(f.Payload)
			for {
				m, ok, err := c.toRuntimeRPC.Next()
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				fwd, err := c.pluginRequest(ctx, m)
				if err != nil {
					return err
				}
				if fwd {
					out = wire.AppendFrames(out, wire.RuntimeService, m.Append(nil))
				}
			}
		case wire.PluginService:
			c.toRuntimeAnswer.Feed(f.Payload)
			for {
				m, ok, err := c.toRuntimeAnswer.Next()
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				m, err = c.pluginAnswer(ctx, m)
				if err != nil {
					return err
				}
				out = wire.AppendFrames(out, wire.PluginService, m.Append(nil))
			}
		default:
			return fmt.Errorf("%w: frame for unknown mux connection %d", wire.ErrMalformed, f.Conn)
		}
		if len(out) > 0 {
			if _, err := runtime.Write(out); err != nil {
				return fmt.Errorf("write to runtime: %w", err)
			}
		}
	}
}

// pluginRequest decides on one of the plugin's own requests; it reports
// whether to forward it.
func (c *Conn) pluginRequest(ctx context.Context, m wire.Message) (bool, error) {
	if m.Type != wire.TypeRequest {
		return true, nil
	}
	r, err := wire.ParseRequest(m.Body)
	if err != nil {
		return false, err
	}
	if r.Service != runtimeService {
		return true, nil
	}
	switch r.Method {
	case "RegisterPlugin":
		return false, fmt.Errorf("%w: plugin tried to register a second time", ErrRefused)
	case "UpdateContainers":
		req := &api.UpdateContainersRequest{}
		if err := proto.Unmarshal(r.Payload, req); err != nil {
			return false, fmt.Errorf("%w: UpdateContainers request: %v", wire.ErrMalformed, err)
		}
		if err := c.chk.Updates(ctx, "unsolicited-update", req.GetUpdate()); err != nil {
			c.log.Info("refused unsolicited container update", "reason", err)
			return false, c.answerPlugin(m.StreamID, status.New(codes.PermissionDenied, "trustgate: "+err.Error()))
		}
	}
	return true, nil
}

// answerPlugin sends the plugin a ttrpc error response on RuntimeService.
func (c *Conn) answerPlugin(stream uint32, st *status.Status) error {
	body, err := proto.Marshal(&ttrpc.Response{Status: st.Proto()})
	if err != nil {
		return fmt.Errorf("marshal refusal: %w", err)
	}
	msg := wire.Message{StreamID: stream, Type: wire.TypeResponse, Body: body}
	out := wire.AppendFrames(nil, wire.RuntimeService, msg.Append(nil))
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.plugin.Write(out); err != nil {
		return fmt.Errorf("write refusal to plugin: %w", err)
	}
	return nil
}

// pluginAnswer checks the updates in the plugin's answer to a runtime
// request and replaces a refused answer with PermissionDenied.
func (c *Conn) pluginAnswer(ctx context.Context, m wire.Message) (wire.Message, error) {
	if m.Type != wire.TypeResponse {
		return m, nil
	}
	c.mu.Lock()
	method, tracked := c.pendingAnswers[m.StreamID]
	delete(c.pendingAnswers, m.StreamID)
	c.mu.Unlock()
	if !tracked {
		return m, nil
	}
	payload, failed, err := wire.ParseResponsePayload(m.Body)
	if err != nil || failed {
		return m, err
	}
	updates, err := answers[method](payload)
	if err != nil {
		return m, fmt.Errorf("%w: %s response: %v", wire.ErrMalformed, method, err)
	}
	if len(updates) == 0 {
		return m, nil
	}
	if err := c.chk.Updates(ctx, method, updates); err != nil {
		c.log.Info("refused container updates in a plugin's answer", "request", method, "reason", err)
		body, merr := proto.Marshal(&ttrpc.Response{Status: status.New(codes.PermissionDenied, "trustgate: "+err.Error()).Proto()})
		if merr != nil {
			return m, fmt.Errorf("marshal refusal: %w", merr)
		}
		m.Body = body
	}
	return m, nil
}

// fromRuntime relays the runtime's frames to the plugin, noting which of
// the runtime's requests are UpdateContainer.
func (c *Conn) fromRuntime(runtime net.Conn) error {
	var out []byte
	for {
		f, err := wire.ReadFrame(runtime)
		if err != nil {
			return err
		}
		if f.Conn == wire.PluginService {
			c.fromRuntimeRPC.Feed(f.Payload)
			for {
				m, ok, err := c.fromRuntimeRPC.Next()
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				if m.Type == wire.TypeRequest {
					r, err := wire.ParseRequest(m.Body)
					if err != nil {
						return err
					}
					if _, ok := answers[r.Method]; ok && r.Service == pluginService {
						c.mu.Lock()
						c.pendingAnswers[m.StreamID] = r.Method
						c.mu.Unlock()
					}
				}
			}
		}
		out = wire.AppendFrames(out[:0], f.Conn, f.Payload)
		c.mu.Lock()
		_, err = c.plugin.Write(out)
		c.mu.Unlock()
		if err != nil {
			return fmt.Errorf("write to plugin: %w", err)
		}
	}
}
