// Package wire reads and writes the byte stream between an NRI plugin and
// its runtime: containerd/nri's multiplexed trunk (pkg/net/multiplex), which
// carries two ttrpc connections, and the ttrpc messages inside them.
//
// The gateway uses it to see a plugin's RegisterPlugin and UpdateContainers
// requests, and its answers to UpdateContainer, before they reach the
// runtime. Everything here parses untrusted bytes: sizes are bounded by the
// same limits the upstream libraries enforce, and malformed input is an
// error, never a panic.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/nri/pkg/net/multiplex"
	"google.golang.org/protobuf/encoding/protowire"
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

// AppendFrames appends p to dst as frames on conn id, split so that no frame
// exceeds MaxFrame.
func AppendFrames(dst []byte, id uint32, p []byte) []byte {
	for {
		n := min(len(p), MaxFrame)
		dst = binary.BigEndian.AppendUint32(dst, id)
		dst = binary.BigEndian.AppendUint32(dst, uint32(n))
		dst = append(dst, p[:n]...)
		p = p[n:]
		if len(p) == 0 {
			return dst
		}
	}
}

// Message is one ttrpc message.
type Message struct {
	StreamID uint32
	Type     uint8
	Flags    uint8
	// Body is the message body (a ttrpc Request or Response protobuf).
	Body []byte
}

// Append appends m in ttrpc's wire format to dst.
func (m Message) Append(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(m.Body)))
	dst = binary.BigEndian.AppendUint32(dst, m.StreamID)
	dst = append(dst, m.Type, m.Flags)
	return append(dst, m.Body...)
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
}

// ParseRequest decodes a ttrpc Request body (ttrpc's request.proto:
// service = 1, method = 2, payload = 3; other fields are skipped) without
// copying the payload.
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
		n = protowire.ConsumeFieldValue(num, typ, body)
		if n < 0 {
			return Request{}, fmt.Errorf("%w: ttrpc request field %d: %v", ErrMalformed, num, protowire.ParseError(n))
		}
		body = body[n:]
	}
	return r, nil
}

// ParseResponsePayload returns the payload (field 2) of a ttrpc Response
// body, and whether the response carries a non-OK status (field 1).
func ParseResponsePayload(body []byte) (payload []byte, hasStatus bool, err error) {
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			return nil, false, fmt.Errorf("%w: ttrpc response: %v", ErrMalformed, protowire.ParseError(n))
		}
		body = body[n:]
		if typ == protowire.BytesType && (num == 1 || num == 2) {
			v, n := protowire.ConsumeBytes(body)
			if n < 0 {
				return nil, false, fmt.Errorf("%w: ttrpc response field %d: %v", ErrMalformed, num, protowire.ParseError(n))
			}
			if num == 1 {
				hasStatus = len(v) > 0
			} else {
				payload = v
			}
			body = body[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, body)
		if n < 0 {
			return nil, false, fmt.Errorf("%w: ttrpc response field %d: %v", ErrMalformed, num, protowire.ParseError(n))
		}
		body = body[n:]
	}
	return payload, hasStatus, nil
}
