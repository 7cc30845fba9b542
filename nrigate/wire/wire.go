// Package wire reads and writes the byte stream between an NRI plugin and
// its runtime: containerd/nri's multiplexed trunk (pkg/net/multiplex), which
// carries two ttrpc connections, and the ttrpc messages inside them.
//
// The gateway's relay uses it to reassemble every message a plugin sends,
// see its requests and answers before they reach the runtime, and write
// them on in the frame shapes of ttrpc's own writer, which the peer's
// multiplexer can read. Everything here parses untrusted bytes: sizes are bounded by the
// same limits the upstream libraries enforce, and malformed input is an
// error, never a panic.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/nri/pkg/net/multiplex"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Mux connection IDs, as containerd/nri defines them.
const (
	// PluginService carries the runtime's requests to the plugin.
	PluginService = uint32(multiplex.PluginServiceConn)
	// RuntimeService carries the plugin's requests to the runtime.
	RuntimeService = uint32(multiplex.RuntimeServiceConn)
)

const (
	frameHeaderLen = 8
	msgHeaderLen   = 10
	// MaxMessage is ttrpc's limit on a message body.
	MaxMessage = 4 << 20
	// MaxFrame is multiplex's limit on a frame payload.
	MaxFrame = msgHeaderLen + MaxMessage
	// PeerBuffer is the size of the bufio buffers through which ttrpc's
	// channel writes and reads a mux connection. The mux delivers one frame
	// per Read and fails a Read into a smaller buffer with ENOMEM, so a
	// frame that the peer reads into this buffer must not exceed it.
	PeerBuffer = 4096
)

// ttrpc message types.
const (
	TypeRequest  = 1
	TypeResponse = 2
	TypeData     = 3
)

// ErrMalformed marks a stream that breaks the framing rules.
var ErrMalformed = errors.New("malformed NRI stream")

// Frame is one multiplex frame.
type Frame struct {
	Conn    uint32
	Payload []byte
}

// ReadFrame reads one frame from r. Oversized frames are refused before any
// payload is allocated.
func ReadFrame(r io.Reader) (Frame, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	id := binary.BigEndian.Uint32(hdr[0:4])
	n := binary.BigEndian.Uint32(hdr[4:8])
	if n > MaxFrame {
		return Frame{}, fmt.Errorf("%w: frame of %d bytes on conn %d exceeds %d", ErrMalformed, n, id, MaxFrame)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return Frame{}, fmt.Errorf("read frame payload: %w", err)
	}
	return Frame{Conn: id, Payload: buf}, nil
}

// Message is one ttrpc message.
type Message struct {
	StreamID uint32
	Type     uint8
	Flags    uint8
	// Body is the message body (a ttrpc Request or Response protobuf).
	Body []byte
}

// AppendMessage appends m to dst as frames on mux connection id, in exactly
// the shapes that ttrpc's channel writes through multiplex: its
// bufio.Writer of PeerBuffer bytes is flushed once per message, so the
// first frame holds the header and the body up to PeerBuffer bytes in all,
// and the rest of the body, if any, follows as one frame. The peer reads the
// first frame into its bufio buffer and the rest directly into the message
// buffer, so every message written this way is readable, and no frame holds
// parts of two messages. m.Body must not exceed MaxMessage, as ttrpc's
// sender enforces.
func AppendMessage(dst []byte, id uint32, m Message) []byte {
	first := min(msgHeaderLen+len(m.Body), PeerBuffer)
	dst = appendFrameHeader(dst, id, first)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(m.Body)))
	dst = binary.BigEndian.AppendUint32(dst, m.StreamID)
	dst = append(dst, m.Type, m.Flags)
	head, rest := m.Body[:first-msgHeaderLen], m.Body[first-msgHeaderLen:]
	dst = append(dst, head...)
	if len(rest) == 0 {
		return dst
	}
	dst = appendFrameHeader(dst, id, len(rest))
	return append(dst, rest...)
}

func appendFrameHeader(dst []byte, id uint32, n int) []byte {
	dst = binary.BigEndian.AppendUint32(dst, id)
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

// Stream reassembles the ttrpc messages of one mux connection from the frame
// payloads that carry it; a message may span frames, and a frame may hold
// several messages.
type Stream struct {
	buf []byte
}

// Feed adds a frame payload to the stream.
func (s *Stream) Feed(p []byte) { s.buf = append(s.buf, p...) }

// Buffered reports how many bytes wait for a complete message.
func (s *Stream) Buffered() int { return len(s.buf) }

// Next returns the next complete message, or ok == false when more bytes
// are needed. The message body aliases the stream's buffer until the next
// call to Feed.
func (s *Stream) Next() (m Message, ok bool, err error) {
	if len(s.buf) < msgHeaderLen {
		return Message{}, false, nil
	}
	n := binary.BigEndian.Uint32(s.buf[0:4])
	if n > MaxMessage {
		return Message{}, false, fmt.Errorf("%w: ttrpc message of %d bytes exceeds %d", ErrMalformed, n, MaxMessage)
	}
	if len(s.buf) < msgHeaderLen+int(n) {
		return Message{}, false, nil
	}
	m = Message{
		StreamID: binary.BigEndian.Uint32(s.buf[4:8]),
		Type:     s.buf[8],
		Flags:    s.buf[9],
		Body:     s.buf[msgHeaderLen : msgHeaderLen+int(n)],
	}
	s.buf = s.buf[msgHeaderLen+int(n):]
	if len(s.buf) == 0 {
		s.buf = nil // let the backing array go once drained
	}
	return m, true, nil
}

// Request is the routing part of a ttrpc request.
type Request struct {
	Service string
	Method  string
	// Payload is the method's request message.
	Payload []byte
	// TimeoutNano is the time left to the caller's deadline when it sent
	// the request, or 0 without one.
	TimeoutNano int64
}

// ParseRequest decodes a ttrpc Request body (ttrpc's request.proto:
// service = 1, method = 2, payload = 3, timeout_nano = 4; other fields are
// skipped) without copying the payload.
func ParseRequest(body []byte) (Request, error) {
	var r Request
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			return Request{}, fmt.Errorf("%w: ttrpc request: %v", ErrMalformed, protowire.ParseError(n))
		}
		body = body[n:]
		if typ == protowire.BytesType && num >= 1 && num <= 3 {
			v, n := protowire.ConsumeBytes(body)
			if n < 0 {
				return Request{}, fmt.Errorf("%w: ttrpc request field %d: %v", ErrMalformed, num, protowire.ParseError(n))
			}
			switch num {
			case 1:
				r.Service = string(v)
			case 2:
				r.Method = string(v)
			case 3:
				r.Payload = v
			}
			body = body[n:]
			continue
		}
		if typ == protowire.VarintType && num == 4 {
			v, n := protowire.ConsumeVarint(body)
			if n < 0 {
				return Request{}, fmt.Errorf("%w: ttrpc request field %d: %v", ErrMalformed, num, protowire.ParseError(n))
			}
			r.TimeoutNano = int64(v)
			body = body[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, body)
		if n < 0 {
			return Request{}, fmt.Errorf("%w: ttrpc request field %d: %v", ErrMalformed, num, protowire.ParseError(n))
		}
		body = body[n:]
	}
	return r, nil
}

// ParseResponse decodes a ttrpc Response body exactly as ttrpc's client
// does (proto.Unmarshal into its own Response type): what fails here fails
// the runtime's call too.
func ParseResponse(body []byte) (*ttrpc.Response, error) {
	r := &ttrpc.Response{}
	if err := proto.Unmarshal(body, r); err != nil {
		return nil, fmt.Errorf("%w: ttrpc response: %v", ErrMalformed, err)
	}
	return r, nil
}

// Failed reports whether ttrpc's client fails a call on r's status: only a
// status with a code other than OK does. A status with code OK and a
// message is a success, and its payload is the call's result.
func Failed(r *ttrpc.Response) bool {
	return r.GetStatus() != nil && r.GetStatus().GetCode() != int32(codes.OK)
}
