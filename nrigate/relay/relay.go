// Package relay carries one authenticated plugin's NRI connection to the
// gateway's private NRI runtime, and enforces on the way what the runtime
// itself cannot: which name the plugin registers under, and which container
// updates it may ask for.
//
// Accept reads the plugin's stream until its RegisterPlugin request is
// complete and lets a Checker decide on it; only then does the caller dial
// the runtime and call Run, so a plugin that stalls or lies never reaches
// the runtime. Run relays both directions message by message, re-framed
// exactly as ttrpc's writer frames them, so that the peers' multiplexers
// can read every message. It checks every unsolicited UpdateContainers
// request, and the container updates in every answer to a runtime request
// whatever the answer's status, before the runtime sees them; a refused
// request is answered to the plugin with PermissionDenied, and a refused
// answer reaches the runtime as one. It tracks every runtime request until
// it is answered, and reports each one that fails or is abandoned to the
// Checker, so that no adjustment is lost silently.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
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
	// Lost reports a request of the runtime to the plugin that got no
	// successful answer: the plugin answered with an error or with bytes
	// the runtime cannot decode, the runtime's deadline passed, or the
	// connection ended first. Whatever the plugin meant to adjust did not
	// reach the runtime. It is called once per such request.
	Lost(ctx context.Context, lost LostRequest)
}

// LostRequest describes a runtime request that got no successful answer.
type LostRequest struct {
	// Method is the request's method, e.g. "CreateContainer".
	Method string
	// ContainerID is the container the request is about, if it names one.
	ContainerID string
	// Reason says how the answer was lost.
	Reason string
}

// method describes a request of the runtime to a plugin (NRI's Plugin
// service) as the runtime's ttrpc client handles it.
type method struct {
	// request decodes the request, for methods whose request names a
	// container; nil otherwise.
	request func() proto.Message
	// answer is the type into which the runtime decodes the answer.
	answer func() proto.Message
}

func newOf[T any, P interface {
	*T
	proto.Message
}]() proto.Message {
	return P(new(T))
}

// methods lists the Plugin service's methods.
var methods = map[string]method{
	"Configure":                   {nil, newOf[api.ConfigureResponse]},
	"Synchronize":                 {nil, newOf[api.SynchronizeResponse]},
	"Shutdown":                    {nil, newOf[api.Empty]},
	"RunPodSandbox":               {nil, newOf[api.RunPodSandboxResponse]},
	"UpdatePodSandbox":            {nil, newOf[api.UpdatePodSandboxResponse]},
	"PostUpdatePodSandbox":        {nil, newOf[api.PostUpdatePodSandboxResponse]},
	"StopPodSandbox":              {nil, newOf[api.StopPodSandboxResponse]},
	"RemovePodSandbox":            {nil, newOf[api.RemovePodSandboxResponse]},
	"CreateContainer":             {newOf[api.CreateContainerRequest], newOf[api.CreateContainerResponse]},
	"PostCreateContainer":         {newOf[api.PostCreateContainerRequest], newOf[api.PostCreateContainerResponse]},
	"StartContainer":              {newOf[api.StartContainerRequest], newOf[api.StartContainerResponse]},
	"PostStartContainer":          {newOf[api.PostStartContainerRequest], newOf[api.PostStartContainerResponse]},
	"UpdateContainer":             {newOf[api.UpdateContainerRequest], newOf[api.UpdateContainerResponse]},
	"PostUpdateContainer":         {newOf[api.PostUpdateContainerRequest], newOf[api.PostUpdateContainerResponse]},
	"StopContainer":               {newOf[api.StopContainerRequest], newOf[api.StopContainerResponse]},
	"RemoveContainer":             {newOf[api.RemoveContainerRequest], newOf[api.RemoveContainerResponse]},
	"StateChange":                 {newOf[api.StateChangeEvent], newOf[api.Empty]},
	"ValidateContainerAdjustment": {newOf[api.ValidateContainerAdjustmentRequest], newOf[api.ValidateContainerAdjustmentResponse]},
}

// ErrRefused wraps every refusal by the Checker.
var ErrRefused = errors.New("refused by policy")

// Conn is a plugin connection whose registration was accepted.
type Conn struct {
	plugin net.Conn
	chk    Checker
	log    *slog.Logger
	// ctx is Run's context without its cancellation, for reports made
	// while and after the connection ends.
	ctx context.Context

	// pending holds the plugin's registration, framed for the runtime.
	pending []byte
	// Streams being reassembled, plugin to runtime.
	toRuntimeRPC    wire.Stream // the plugin's requests (RuntimeService)
	toRuntimeAnswer wire.Stream // the plugin's answers (PluginService)
	// Streams being reassembled, runtime to plugin.
	fromRuntimeRPC    wire.Stream // the runtime's requests (PluginService)
	fromRuntimeAnswer wire.Stream // the runtime's answers (RuntimeService)

	mu sync.Mutex // guards outstanding and writes to plugin
	// outstanding maps the stream IDs of the runtime's requests to the
	// plugin that await an answer.
	outstanding map[uint32]*request
}

// request is one outstanding request of the runtime.
type request struct {
	method string
	// payload is a copy of the request's payload for methods that name a
	// container, decoded only if the request is lost.
	payload []byte
	read    time.Time
	// timeout is the time the runtime gave the plugin to answer, 0 if
	// none; timer fires when it is up.
	timeout time.Duration
	timer   *time.Timer
	// expired is set when the runtime's deadline has passed: the runtime
	// no longer waits for an answer.
	expired bool
}

// Accept reads from plugin until its RegisterPlugin request is complete,
// within timeout, and asks chk whether it may register. On success the
// returned Conn is ready for Run; on failure plugin is left to the caller
// to close.
func Accept(ctx context.Context, plugin net.Conn, chk Checker, timeout time.Duration, log *slog.Logger) (*Conn, *api.RegisterPluginRequest, error) {
	c := &Conn{plugin: plugin, chk: chk, log: log, outstanding: map[uint32]*request{}}
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
			// Nothing was asked of the plugin yet: an answer answers
			// nothing, and the runtime would drop it.
			c.toRuntimeAnswer.Feed(f.Payload)
			if err := c.dropAll(&c.toRuntimeAnswer); err != nil {
				return nil, nil, err
			}
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
		c.pending = wire.AppendMessage(nil, wire.RuntimeService, m)
		return c, req, nil
	}
}

// dropAll discards the complete messages in s.
func (c *Conn) dropAll(s *wire.Stream) error {
	for {
		m, ok, err := s.Next()
		if err != nil || !ok {
			return err
		}
		c.log.Debug("dropped a plugin's message that answers no request", "stream", m.StreamID, "type", m.Type)
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
// breaks the protocol, then closes both, and reports the runtime's
// requests that were still unanswered as lost. It returns nil on a clean
// close.
func (c *Conn) Run(ctx context.Context, runtime net.Conn) error {
	c.ctx = context.WithoutCancel(ctx)
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
	c.abandon(err)
	if isClosed(err) {
		return nil
	}
	return err
}

// abandon reports the requests left unanswered when the connection ended
// with cause.
func (c *Conn) abandon(cause error) {
	var left []*request
	c.mu.Lock()
	for _, r := range c.outstanding {
		if r.timer != nil {
			r.timer.Stop()
		}
		if !r.expired {
			left = append(left, r)
		}
	}
	c.outstanding = map[uint32]*request{}
	c.mu.Unlock()
	for _, r := range left {
		reason := fmt.Sprintf("the connection ended %v after the request, before the plugin answered", time.Since(r.read).Round(time.Millisecond))
		if r.timeout > 0 {
			reason += fmt.Sprintf(" (the runtime's timeout was %v)", r.timeout)
		}
		if cause != nil {
			reason += ": " + cause.Error()
		}
		c.lost(r, reason)
	}
}

// expire marks the request on stream id as given up by the runtime.
func (c *Conn) expire(id uint32) {
	c.mu.Lock()
	r := c.outstanding[id]
	if r == nil || r.expired {
		c.mu.Unlock()
		return
	}
	r.expired = true
	c.mu.Unlock()
	c.lost(r, fmt.Sprintf("no answer within the runtime's timeout of %v: the runtime gave up on the request (its failure policy decides whether the request fails or proceeds without the plugin, and whether the plugin is dropped)", r.timeout))
}

// lost reports r to the Checker and the log.
func (c *Conn) lost(r *request, reason string) {
	l := LostRequest{Method: r.method, Reason: reason}
	if m := methods[r.method]; m.request != nil && r.payload != nil {
		req := m.request()
		if proto.Unmarshal(r.payload, req) == nil {
			if n, ok := req.(interface{ GetContainer() *api.Container }); ok {
				l.ContainerID = n.GetContainer().GetId()
			}
		}
	}
	c.log.Debug("runtime request lost", "request", l.Method, "container", l.ContainerID, "reason", l.Reason)
	c.chk.Lost(c.ctx, l)
}

// isClosed reports whether err is one side hanging up.
func isClosed(err error) bool {
	return err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// toRuntime relays the plugin's messages to the runtime.
func (c *Conn) toRuntime(ctx context.Context, runtime net.Conn) error {
	if _, err := runtime.Write(c.pending); err != nil {
		return fmt.Errorf("forward registration: %w", err)
	}
	c.pending = nil
	var out []byte
	for {
		// Complete messages first: the registration's frames may have
		// carried more.
		var err error
		if out, err = c.pluginRequests(ctx, out[:0]); err != nil {
			return err
		}
		if out, err = c.pluginAnswers(ctx, out); err != nil {
			return err
		}
		if len(out) > 0 {
			if _, err := runtime.Write(out); err != nil {
				return fmt.Errorf("write to runtime: %w", err)
			}
		}
		f, err := wire.ReadFrame(c.plugin)
		if err != nil {
			return fmt.Errorf("read from plugin: %w", err)
		}
		switch f.Conn {
		case wire.RuntimeService:
			c.toRuntimeRPC.Feed(f.Payload)
		case wire.PluginService:
			c.toRuntimeAnswer.Feed(f.Payload)
		default:
			return fmt.Errorf("%w: frame for unknown mux connection %d", wire.ErrMalformed, f.Conn)
		}
	}
}

// pluginRequests appends the plugin's complete requests that may go to the
// runtime to out.
func (c *Conn) pluginRequests(ctx context.Context, out []byte) ([]byte, error) {
	for {
		m, ok, err := c.toRuntimeRPC.Next()
		if err != nil || !ok {
			return out, err
		}
		fwd, err := c.pluginRequest(ctx, m)
		if err != nil {
			return out, err
		}
		if fwd {
			out = wire.AppendMessage(out, wire.RuntimeService, m)
		}
	}
}

// pluginAnswers appends the plugin's complete answers, checked, to out.
func (c *Conn) pluginAnswers(ctx context.Context, out []byte) ([]byte, error) {
	for {
		m, ok, err := c.toRuntimeAnswer.Next()
		if err != nil || !ok {
			return out, err
		}
		m, fwd, err := c.pluginAnswer(ctx, m)
		if err != nil {
			return out, err
		}
		if fwd {
			out = wire.AppendMessage(out, wire.PluginService, m)
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
	msg, err := errorAnswer(stream, st)
	if err != nil {
		return err
	}
	out := wire.AppendMessage(nil, wire.RuntimeService, msg)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.plugin.Write(out); err != nil {
		return fmt.Errorf("write refusal to plugin: %w", err)
	}
	return nil
}

// errorAnswer is a ttrpc response on stream that fails the call with st.
func errorAnswer(stream uint32, st *status.Status) (wire.Message, error) {
	body, err := proto.Marshal(&ttrpc.Response{Status: st.Proto()})
	if err != nil {
		return wire.Message{}, fmt.Errorf("marshal error answer: %w", err)
	}
	return wire.Message{StreamID: stream, Type: wire.TypeResponse, Body: body}, nil
}

// pluginAnswer handles the plugin's answer to a runtime request: it reads
// the answer as the runtime's ttrpc client will, reports a failed or
// malformed answer as lost, checks the container updates in its payload
// whatever its status says, and replaces a refused or malformed answer with
// an error. It reports whether to forward the answer: a message that
// answers no outstanding request is dropped, as the runtime would drop it.
func (c *Conn) pluginAnswer(ctx context.Context, m wire.Message) (wire.Message, bool, error) {
	if m.Type != wire.TypeResponse {
		c.log.Debug("dropped a plugin's message that answers no request", "stream", m.StreamID, "type", m.Type)
		return m, false, nil
	}
	c.mu.Lock()
	r := c.outstanding[m.StreamID]
	delete(c.outstanding, m.StreamID)
	waiting := r != nil && !r.expired
	if r != nil && r.timer != nil {
		r.timer.Stop()
	}
	c.mu.Unlock()
	if !waiting {
		c.log.Debug("dropped a plugin's answer to no outstanding request", "stream", m.StreamID)
		return m, false, nil
	}
	rsp, err := wire.ParseResponse(m.Body)
	var answer proto.Message
	if err == nil && methods[r.method].answer != nil {
		answer = methods[r.method].answer()
		if uerr := proto.Unmarshal(rsp.GetPayload(), answer); uerr != nil {
			err = fmt.Errorf("%w: %s answer: %v", wire.ErrMalformed, r.method, uerr)
		}
	}
	if err != nil {
		c.lost(r, "the plugin's answer is malformed: "+err.Error())
		m, err := errorAnswer(m.StreamID, status.New(codes.Internal, "trustgate: malformed answer from the plugin"))
		return m, true, err
	}
	if wire.Failed(rsp) && r.method != "ValidateContainerAdjustment" {
		// A validator's error is its verdict, not a lost adjustment.
		c.lost(r, fmt.Sprintf("the plugin answered with an error: %s: %s", codes.Code(rsp.GetStatus().GetCode()), rsp.GetStatus().GetMessage()))
	}
	u, ok := answer.(interface{ GetUpdate() []*api.ContainerUpdate })
	if !ok || len(u.GetUpdate()) == 0 {
		return m, true, nil
	}
	if err := c.chk.Updates(ctx, r.method, u.GetUpdate()); err != nil {
		c.log.Info("refused container updates in a plugin's answer", "request", r.method, "reason", err)
		m, err := errorAnswer(m.StreamID, status.New(codes.PermissionDenied, "trustgate: "+err.Error()))
		return m, true, err
	}
	return m, true, nil
}

// fromRuntime relays the runtime's messages to the plugin, noting the
// runtime's requests as outstanding.
func (c *Conn) fromRuntime(runtime net.Conn) error {
	var out []byte
	for {
		f, err := wire.ReadFrame(runtime)
		if err != nil {
			return fmt.Errorf("read from runtime: %w", err)
		}
		out = out[:0]
		switch f.Conn {
		case wire.PluginService:
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
					if err := c.track(m); err != nil {
						return err
					}
				}
				out = wire.AppendMessage(out, wire.PluginService, m)
			}
		case wire.RuntimeService:
			c.fromRuntimeAnswer.Feed(f.Payload)
			for {
				m, ok, err := c.fromRuntimeAnswer.Next()
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				out = wire.AppendMessage(out, wire.RuntimeService, m)
			}
		default:
			return fmt.Errorf("%w: runtime frame for unknown mux connection %d", wire.ErrMalformed, f.Conn)
		}
		if len(out) == 0 {
			continue
		}
		c.mu.Lock()
		_, err = c.plugin.Write(out)
		c.mu.Unlock()
		if err != nil {
			return fmt.Errorf("write to plugin: %w", err)
		}
	}
}

// track notes the runtime's request m as outstanding, with a timer for
// the runtime's deadline.
func (c *Conn) track(m wire.Message) error {
	req, err := wire.ParseRequest(m.Body)
	if err != nil {
		return err
	}
	r := &request{method: req.Method, read: time.Now(), timeout: time.Duration(req.TimeoutNano)}
	if req.Service != pluginService {
		r.method = req.Service + "/" + req.Method
	}
	if methods[r.method].request != nil {
		r.payload = slices.Clone(req.Payload)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.outstanding[m.StreamID]; old != nil && old.timer != nil {
		old.timer.Stop()
	}
	c.outstanding[m.StreamID] = r
	if r.timeout > 0 {
		// The runtime set its deadline before it sent the request, so
		// when this fires the runtime has given up.
		id := m.StreamID
		r.timer = time.AfterFunc(r.timeout, func() { c.expire(id) })
	}
	return nil
}
