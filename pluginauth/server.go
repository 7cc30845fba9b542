package pluginauth

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"time"
)

// Server runs the runtime side of the handshake under one policy. It is safe
// for concurrent use.
type Server struct {
	policy        *policy
	static        *PrivateKey
	timeout       time.Duration
	firstFrame    time.Duration
	maxPending    int
	maxPendingUID int
	allowUIDs     []uint32
	allowGIDs     []uint32
	log           *slog.Logger
	rand          io.Reader
	onRefused     func(context.Context, Refusal)
	peerCred      func(net.Conn) (PeerCred, error)
}

// Refusal describes one refused connection, for audit records.
type Refusal struct {
	// Remote is the peer's address; Peer its credentials when known.
	Remote string
	Peer   *PeerCred
	// Plugin is the "<index>-<name>" the plugin claimed, if it got that far.
	Plugin string
	// Key is the plugin's key fingerprint, if it sent one; Role the role
	// that key maps to, if any.
	Key, Role string
	// Code is the protocol error code, or "" for a refusal before the
	// handshake (credentials, limits).
	Code Code
	// Reason says why, in words.
	Reason string
}

// WithRefusalHook calls f for every refused connection (handshake failures
// and refusals by peer credentials or limits), instead of logging them:
// the caller makes them audit records.
func WithRefusalHook(f func(context.Context, Refusal)) ServerOption {
	return func(s *Server) { s.onRefused = f }
}

// ServerOption configures a Server.
type ServerOption func(*Server)

// WithLogger sets the logger for handshake outcomes. The default discards.
func WithLogger(l *slog.Logger) ServerOption {
	return func(s *Server) { s.log = l }
}

// WithStaticKey sets the server's static key for mutual authentication,
// instead of the config's key_file.
func WithStaticKey(k *PrivateKey) ServerOption {
	return func(s *Server) { s.static = k }
}

// NewServer validates cfg and returns a server enforcing it. When
// cfg.KeyFile is set, the static key is loaded from it.
func NewServer(cfg ServerConfig, opts ...ServerOption) (*Server, error) {
	p, err := newPolicy(&cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		policy:        p,
		timeout:       time.Duration(cfg.HandshakeTimeout),
		firstFrame:    time.Duration(cfg.FirstFrameTimeout),
		maxPending:    cfg.MaxPendingHandshakes,
		maxPendingUID: cfg.MaxPendingHandshakesPerUID,
		allowUIDs:     slices.Clone(cfg.AllowedPeerUIDs),
		allowGIDs:     slices.Clone(cfg.AllowedPeerGIDs),
		log:           slog.New(slog.DiscardHandler),
		rand:          rand.Reader,
		peerCred:      peerCredOf,
	}
	if s.timeout == 0 {
		s.timeout = DefaultHandshakeTimeout
	}
	if s.firstFrame == 0 {
		s.firstFrame = DefaultFirstFrameTimeout
	}
	s.firstFrame = min(s.firstFrame, s.timeout)
	if s.maxPending == 0 {
		s.maxPending = DefaultMaxPendingHandshakes
	}
	if s.maxPendingUID == 0 {
		s.maxPendingUID = DefaultMaxPendingHandshakesPerUID
	}
	if cfg.KeyFile != "" {
		k, err := LoadPrivateKeyFile(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("pluginauth server key: %w", err)
		}
		s.static = k
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// PublicKey returns the server's static public key (zero without one); it
// is what plugins pin for mutual authentication.
func (s *Server) PublicKey() PublicKey {
	if s.static == nil {
		return PublicKey{}
	}
	return s.static.Public()
}

// Handshake runs the server side of the handshake on c, bounded by the
// configured timeout and by ctx; the plugin's first frame must come within
// the (shorter) first-frame timeout. On success the deadline is cleared and
// c carries the next protocol; on failure the caller should close c. Every
// failure is logged with its reason, or handed to the refusal hook.
func (s *Server) Handshake(ctx context.Context, c net.Conn) (*Identity, error) {
	start := time.Now()
	if err := c.SetDeadline(start.Add(s.firstFrame)); err != nil {
		return nil, fmt.Errorf("pluginauth: set handshake deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	st := &serverState{s: s, c: c, deadline: start.Add(s.timeout), ctx: ctx}
	id, err := st.run()
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("handshake canceled: %w", context.Cause(ctx))
	}
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) && !pe.Remote {
			// Tell the plugin why, best effort, within the same deadline.
			_ = writeFrame(c, encodeReject(pe.Code, pe.Reason))
		}
		s.refuse(ctx, st.refusal(err), st.attrs(slog.String("remote", remoteAddr(c)), slog.String("reason", err.Error())))
		return nil, fmt.Errorf("pluginauth: %w", err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("pluginauth: clear handshake deadline: %w", err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "pluginauth: plugin authenticated", slog.Any("identity", id))
	return id, nil
}

// refuse hands r to the refusal hook, or logs it.
func (s *Server) refuse(ctx context.Context, r Refusal, attrs []slog.Attr) {
	if s.onRefused != nil {
		s.onRefused(ctx, r)
		return
	}
	s.log.LogAttrs(ctx, slog.LevelWarn, "pluginauth: handshake refused", attrs...)
}

// serverState is one server-side handshake in progress.
type serverState struct {
	s        *Server
	c        net.Conn
	ctx      context.Context
	deadline time.Time // of the whole handshake
	hello    *hello
	role     string
}

// refusal describes this handshake's failure err.
func (st *serverState) refusal(err error) Refusal {
	r := Refusal{Remote: remoteAddr(st.c), Role: st.role, Reason: err.Error()}
	if pc, err := st.s.peerCred(st.c); err == nil {
		r.Peer = &pc
	}
	var pe *Error
	if errors.As(err, &pe) {
		r.Code = pe.Code
	}
	if h := st.hello; h != nil {
		r.Plugin = h.index + "-" + h.name
		if k, err := publicKeyFromBytes(h.publicKey); err == nil {
			r.Key = k.Fingerprint()
		}
	}
	return r
}

func (st *serverState) attrs(extra ...slog.Attr) []slog.Attr {
	a := extra
	if h := st.hello; h != nil {
		a = append(a, slog.String("plugin", h.index+"-"+h.name), slog.String("algorithm", h.algorithm))
		if k, err := publicKeyFromBytes(h.publicKey); err == nil {
			a = append(a, slog.String("key", k.String()))
		}
	}
	return a
}

func (st *serverState) run() (*Identity, error) {
	s := st.s
	helloBody, err := readFrame(st.c)
	if err != nil {
		return nil, fmt.Errorf("read hello (within the first-frame timeout of %s): %w", s.firstFrame, err)
	}
	// The rest of the handshake has the whole timeout, unless the context
	// has already cut it short.
	if err := st.c.SetDeadline(st.deadline); err != nil {
		return nil, fmt.Errorf("set handshake deadline: %w", err)
	}
	if st.ctx.Err() != nil {
		_ = st.c.SetDeadline(time.Unix(1, 0))
	}
	h, err := decodeHello(helloBody)
	if err != nil {
		return nil, err
	}
	st.hello = h
	if h.mutual() && s.static == nil {
		return nil, errorf(CodeMutualUnavailable, "the plugin pinned a server key, but this server has no static key (set key_file)")
	}
	if h.algorithm == AlgorithmNone {
		return st.acceptKeyless()
	}

	pub, err := publicKeyFromBytes(h.publicKey)
	if err != nil {
		return nil, errorf(CodeMalformed, "hello: %v", err)
	}
	role, ok := s.policy.byKey[pub]
	if !ok {
		return nil, errorf(CodeUnknownKey, "key %s is in no role", pub)
	}
	st.role = role.Role

	// Fresh ephemeral key and challenge for this connection only.
	var secret [KeySize + ChallengeSize]byte
	defer clear(secret[:])
	if _, err := io.ReadFull(s.rand, secret[:]); err != nil {
		return nil, errorf(CodeInternal, "read randomness: %v", err)
	}
	eph, err := ecdh.X25519().NewPrivateKey(secret[:KeySize])
	if err != nil {
		return nil, errorf(CodeInternal, "ephemeral key: %v", err)
	}
	chal := secret[KeySize:]
	dh, err := x25519(eph, h.publicKey)
	if err != nil {
		return nil, errorf(CodeMalformed, "hello: %v", err)
	}
	defer clear(dh)
	var dhMutual, serverStatic []byte
	if h.mutual() {
		if dhMutual, err = s.static.ecdh(h.publicKey); err != nil {
			return nil, errorf(CodeMalformed, "hello: %v", err)
		}
		defer clear(dhMutual)
		serverStatic = s.static.Public().Bytes()
	}

	msg := challenge{}
	copy(msg.ephemeral[:], eph.PublicKey().Bytes())
	th := transcriptAfterChallenge(helloBody, msg.ephemeral[:], serverStatic)
	keys, err := deriveKeys(dh, dhMutual, th)
	if err != nil {
		return nil, errorf(CodeInternal, "%v", err)
	}
	keys.serverToPlugin.Seal(msg.sealed[:0], nonce(nonceChallenge), chal, th[:])
	chalBody := msg.encode()
	if err := writeFrame(st.c, chalBody); err != nil {
		return nil, fmt.Errorf("send challenge: %w", err)
	}
	th = chain(th, chalBody)

	respBody, err := readFrame(st.c)
	if err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	if len(respBody) > 0 && respBody[0] == msgReject {
		if rej, err := decodeReject(respBody); err == nil {
			return nil, fmt.Errorf("plugin gave up: %w", rej)
		}
	}
	resp, err := decodeResponse(respBody)
	if err != nil {
		return nil, err
	}
	var got [32]byte
	if _, err := keys.pluginToServer.Open(got[:0], nonce(nonceProof), resp.sealed[:], th[:]); err != nil {
		return nil, errorf(CodeProofFailed, "the response does not open under this handshake's key (wrong private key, or a replayed or altered handshake)")
	}
	want := proofOf(chal)
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		return nil, errorf(CodeProofFailed, "the response does not match the challenge")
	}
	th = chain(th, respBody)

	if !role.MayClaim(h.name, h.index) {
		return nil, errorf(CodeNameNotAllowed, "role %q may not claim plugin %s-%s", role.Role, h.index, h.name)
	}
	id := newIdentity(pub, role, h.name, h.index)
	out, err := encodeOutcome(&Outcome{Role: id.Role, Tags: id.Tags, Capabilities: id.Capabilities})
	if err != nil {
		return nil, errorf(CodeInternal, "%v", err)
	}
	accept := keys.serverToPlugin.Seal([]byte{msgAccept}, nonce(nonceOutcome), out, th[:])
	if err := writeFrame(st.c, accept); err != nil {
		return nil, fmt.Errorf("send outcome: %w", err)
	}
	return id, nil
}

// acceptKeyless handles an explicit "none" hello.
func (st *serverState) acceptKeyless() (*Identity, error) {
	p := st.s.policy
	if p.require || p.defaultRole == nil {
		return nil, errorf(CodeAuthenticationRequired, "this server requires a plugin key (algorithm %q)", AlgorithmECDH)
	}
	h := st.hello
	if !p.defaultRole.MayClaim(h.name, h.index) {
		return nil, errorf(CodeNameNotAllowed, "role %q may not claim plugin %s-%s", DefaultRole, h.index, h.name)
	}
	id := newIdentity(PublicKey{}, p.defaultRole, h.name, h.index)
	out, err := encodeOutcome(&Outcome{Role: id.Role, Tags: id.Tags, Capabilities: id.Capabilities})
	if err != nil {
		return nil, errorf(CodeInternal, "%v", err)
	}
	if err := writeFrame(st.c, append([]byte{msgAccept}, out...)); err != nil {
		return nil, fmt.Errorf("send outcome: %w", err)
	}
	return id, nil
}

func remoteAddr(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil && a.String() != "" {
		return a.String()
	}
	return "unknown"
}
