package pluginauth

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// PluginConn is a plugin-side connection that passed the handshake. Hand it
// to stub.WithConnection of containerd/nri; reads and writes go straight to
// the underlying connection.
type PluginConn struct {
	net.Conn
	outcome Outcome
}

// Outcome returns what the server granted.
func (c *PluginConn) Outcome() Outcome { return c.outcome }

// DialOption configures Dial and ClientHandshake.
type DialOption func(*dialOptions)

type dialOptions struct {
	serverKey PublicKey
	timeout   time.Duration
	rand      io.Reader
}

// WithServerKey pins the server's static public key and turns on mutual
// authentication: the handshake fails unless the server proves that key.
func WithServerKey(k PublicKey) DialOption {
	return func(o *dialOptions) { o.serverKey = k }
}

// WithHandshakeTimeout bounds the handshake (default 5 s).
func WithHandshakeTimeout(d time.Duration) DialOption {
	return func(o *dialOptions) { o.timeout = d }
}

// Dial connects to the unix socket at socketPath and authenticates as plugin
// index-name with key. A nil key sends the explicit keyless hello (algorithm
// "none"), which servers that require authentication refuse. The returned
// connection is ready for stub.WithConnection.
func Dial(ctx context.Context, socketPath string, key *PrivateKey, name, index string, opts ...DialOption) (*PluginConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("pluginauth: dial %s: %w", socketPath, err)
	}
	out, err := ClientHandshake(ctx, c, key, name, index, opts...)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &PluginConn{Conn: c, outcome: *out}, nil
}

// ClientHandshake runs the plugin side of the handshake on an established
// connection. On success the deadline is cleared and c carries the next
// protocol; on failure the caller should close c. A refusal by the server is
// an *Error with Remote set.
func ClientHandshake(ctx context.Context, c net.Conn, key *PrivateKey, name, index string, opts ...DialOption) (*Outcome, error) {
	o := dialOptions{timeout: DefaultHandshakeTimeout, rand: rand.Reader}
	for _, opt := range opts {
		opt(&o)
	}
	if err := CheckPluginName(name); err != nil {
		return nil, fmt.Errorf("pluginauth: %w", err)
	}
	if err := CheckPluginIndex(index); err != nil {
		return nil, fmt.Errorf("pluginauth: %w", err)
	}
	if key == nil && !o.serverKey.IsZero() {
		return nil, errors.New("pluginauth: mutual authentication (WithServerKey) needs a plugin key")
	}
	if err := c.SetDeadline(time.Now().Add(o.timeout)); err != nil {
		return nil, fmt.Errorf("pluginauth: set handshake deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	out, err := clientRun(c, key, name, index, &o)
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("handshake canceled: %w", context.Cause(ctx))
	}
	if err != nil {
		return nil, fmt.Errorf("pluginauth: %w", err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("pluginauth: clear handshake deadline: %w", err)
	}
	return out, nil
}

func clientRun(c net.Conn, key *PrivateKey, name, index string, o *dialOptions) (*Outcome, error) {
	h := hello{version: Version, algorithm: AlgorithmNone, name: name, index: index}
	if key != nil {
		h.algorithm = AlgorithmECDH
		h.publicKey = key.Public().Bytes()
		if !o.serverKey.IsZero() {
			h.flags |= flagMutual
		}
	}
	if _, err := io.ReadFull(o.rand, h.clientRandom[:]); err != nil {
		return nil, fmt.Errorf("read randomness: %w", err)
	}
	helloBody := h.encode()
	if err := writeFrame(c, helloBody); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}

	body, err := readFrame(c)
	if err != nil {
		return nil, fmt.Errorf("read server answer: %w", err)
	}
	if err := rejected(body); err != nil {
		return nil, err
	}
	if key == nil {
		if body[0] != msgAccept {
			return nil, errorf(CodeMalformed, "message type %d in answer to a keyless hello, want accept", body[0])
		}
		return decodeOutcome(body[1:])
	}

	msg, err := decodeChallenge(body)
	if err != nil {
		return nil, err
	}
	dh, err := key.ecdh(msg.ephemeral[:])
	if err != nil {
		return nil, errorf(CodeMalformed, "challenge: %v", err)
	}
	defer clear(dh)
	var dhMutual, serverStatic []byte
	if !o.serverKey.IsZero() {
		if dhMutual, err = key.ecdh(o.serverKey.b[:]); err != nil {
			return nil, fmt.Errorf("pinned server key: %w", err)
		}
		defer clear(dhMutual)
		serverStatic = o.serverKey.b[:]
	}
	th := transcriptAfterChallenge(helloBody, msg.ephemeral[:], serverStatic)
	keys, err := deriveKeys(dh, dhMutual, th)
	if err != nil {
		return nil, err
	}
	var chal [ChallengeSize]byte
	defer clear(chal[:])
	if _, err := keys.serverToPlugin.Open(chal[:0], nonce(nonceChallenge), msg.sealed[:], th[:]); err != nil {
		if !o.serverKey.IsZero() {
			e := errorf(CodeServerProofFailed, "the challenge does not open: the server does not hold the pinned key %s, or the handshake was altered", o.serverKey)
			_ = writeFrame(c, encodeReject(e.Code, e.Reason))
			return nil, e
		}
		e := errorf(CodeMalformed, "the challenge does not open under this handshake's key (altered handshake?)")
		_ = writeFrame(c, encodeReject(e.Code, e.Reason))
		return nil, e
	}
	th = chain(th, body)

	var resp response
	proof := proofOf(chal[:])
	keys.pluginToServer.Seal(resp.sealed[:0], nonce(nonceProof), proof[:], th[:])
	respBody := resp.encode()
	if err := writeFrame(c, respBody); err != nil {
		return nil, fmt.Errorf("send response: %w", err)
	}
	th = chain(th, respBody)

	body, err = readFrame(c)
	if err != nil {
		return nil, fmt.Errorf("read outcome: %w", err)
	}
	if err := rejected(body); err != nil {
		return nil, err
	}
	if body[0] != msgAccept {
		return nil, errorf(CodeMalformed, "message type %d after the response, want accept", body[0])
	}
	plain, err := keys.serverToPlugin.Open(nil, nonce(nonceOutcome), body[1:], th[:])
	if err != nil {
		return nil, errorf(CodeMalformed, "the outcome does not open under this handshake's key (altered handshake?)")
	}
	return decodeOutcome(plain)
}

// rejected returns the server's refusal when body is a reject message.
func rejected(body []byte) error {
	if body[0] != msgReject {
		return nil
	}
	rej, err := decodeReject(body)
	if err != nil {
		return err
	}
	return rej
}
