package wire

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/net/multiplex"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// encode appends m in ttrpc's wire format, unframed, to dst.
func (m Message) encode(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(m.Body)))
	dst = binary.BigEndian.AppendUint32(dst, m.StreamID)
	dst = append(dst, m.Type, m.Flags)
	return append(dst, m.Body...)
}

// rawFrame is one frame with any payload, shaped as no ttrpc writer would.
func rawFrame(id uint32, payload []byte) []byte {
	return append(appendFrameHeader(nil, id, len(payload)), payload...)
}

// peer is the runtime's end of an NRI connection, built as containerd/nri
// builds it: a real multiplex over a socket and a real ttrpc client on the
// plugin's mux connection. The test plays the plugin on the other end.
type peer struct {
	client *ttrpc.Client
	ours   net.Conn
	in     Stream
}

func newPeer(t *testing.T) *peer {
	t.Helper()
	ours, theirs := net.Pipe()
	mux := multiplex.Multiplex(theirs)
	conn, err := mux.Open(multiplex.PluginServiceConn)
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{client: ttrpc.NewClient(conn), ours: ours}
	t.Cleanup(func() {
		p.client.Close()
		mux.Close()
		ours.Close()
	})
	return p
}

// call makes a unary call from the runtime's side; the answer is decoded
// into a ttrpc.Request, whose payload field stands for any answer.
func (p *peer) call() chan callResult {
	done := make(chan callResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var resp ttrpc.Request
		err := p.client.Call(ctx, "svc", "Get", &ttrpc.Request{Service: "x"}, &resp)
		done <- callResult{&resp, err}
	}()
	return done
}

type callResult struct {
	resp *ttrpc.Request
	err  error
}

// request reads the runtime's request on our end and returns its stream ID.
func (p *peer) request(t *testing.T) uint32 {
	t.Helper()
	for {
		m, ok, err := p.in.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if m.Type != TypeRequest {
				t.Fatalf("got message type %d", m.Type)
			}
			return m.StreamID
		}
		f, err := ReadFrame(p.ours)
		if err != nil {
			t.Fatal(err)
		}
		p.in.Feed(f.Payload)
	}
}

// answer sends raw bytes on our end and waits for the runtime's call.
func (p *peer) answer(t *testing.T, done chan callResult, data []byte) callResult {
	t.Helper()
	go func() { _, _ = p.ours.Write(data) }()
	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the runtime's call did not return")
		return callResult{}
	}
}

// responseBody is a ttrpc Response body of exactly size bytes (or empty),
// whose payload decodes as a ttrpc.Request with a padding payload.
func responseBody(t *testing.T, size int) []byte {
	t.Helper()
	if size == 0 {
		return nil
	}
	for pad := size; pad >= 0; pad-- {
		inner, _ := proto.Marshal(&ttrpc.Request{Payload: bytes.Repeat([]byte{'p'}, pad)})
		b, _ := proto.Marshal(&ttrpc.Response{Payload: inner})
		if len(b) == size {
			return b
		}
	}
	t.Fatalf("no response body of %d bytes", size)
	return nil
}

// frameSizes lists the payload sizes of the frames in data.
func frameSizes(t *testing.T, data []byte) []int {
	t.Helper()
	var sizes []int
	r := bytes.NewReader(data)
	for r.Len() > 0 {
		f, err := ReadFrame(r)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(f.Payload))
	}
	return sizes
}

var messageSizes = []int{0, 4086, 4087, 4096, 64 << 10, 1 << 20, MaxMessage}

// TestMessagesReachTheRealPeer writes answers of every size as
// AppendMessage frames them to a real multiplex + ttrpc client, which must
// decode them, and checks the frame shapes against ttrpc's writer.
func TestMessagesReachTheRealPeer(t *testing.T) {
	for _, size := range messageSizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			p := newPeer(t)
			done := p.call()
			body := responseBody(t, size)
			data := AppendMessage(nil, PluginService, Message{StreamID: p.request(t), Type: TypeResponse, Body: body})
			want := []int{min(10+size, PeerBuffer)}
			if 10+size > PeerBuffer {
				want = append(want, 10+size-PeerBuffer)
			}
			if got := frameSizes(t, data); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("frames %v, want %v", got, want)
			}
			r := p.answer(t, done, data)
			if r.err != nil {
				t.Fatalf("the peer failed to read a %d-byte message: %v", size, r.err)
			}
			var sent ttrpc.Response
			_ = proto.Unmarshal(body, &sent)
			var inner ttrpc.Request
			_ = proto.Unmarshal(sent.Payload, &inner)
			if !bytes.Equal(r.resp.Payload, inner.Payload) {
				t.Fatalf("payload of %d bytes arrived as %d bytes", len(inner.Payload), len(r.resp.Payload))
			}
		})
	}
}

// TestOneFrameMessagesFailAbovePeerBuffer shows the peer's limit on the
// real mux and ttrpc reader: a message in one frame is read up to a frame of
// PeerBuffer bytes, and a larger one breaks the connection (ENOMEM in the
// mux), which is why AppendMessage splits.
func TestOneFrameMessagesFailAbovePeerBuffer(t *testing.T) {
	for _, size := range messageSizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			p := newPeer(t)
			done := p.call()
			msg := Message{StreamID: p.request(t), Type: TypeResponse, Body: responseBody(t, size)}
			r := p.answer(t, done, rawFrame(PluginService, msg.encode(nil)))
			if fits := 10+size <= PeerBuffer; fits != (r.err == nil) {
				t.Fatalf("a %d-byte frame: peer error %v", 10+size, r.err)
			}
		})
	}
}

// TestFrameLimitMatchesMux checks that ReadFrame and the real mux agree on
// the largest frame: MaxFrame is delivered, one byte more tears down.
func TestFrameLimitMatchesMux(t *testing.T) {
	for _, n := range []int{MaxFrame, MaxFrame + 1} {
		hdr := appendFrameHeader(nil, PluginService, n)
		_, ourErr := ReadFrame(io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(make([]byte, n))))

		ours, theirs := net.Pipe()
		mux := multiplex.Multiplex(theirs)
		conn, _ := mux.Open(multiplex.PluginServiceConn)
		go func() { _, _ = ours.Write(hdr); _, _ = ours.Write(make([]byte, n)) }()
		got, muxErr := conn.Read(make([]byte, MaxFrame+1))
		mux.Close()
		ours.Close()
		if (ourErr == nil) != (muxErr == nil) || (muxErr == nil && got != n) {
			t.Fatalf("frame of %d bytes: ReadFrame %v, mux %v (%d bytes)", n, ourErr, muxErr, got)
		}
	}
}

func TestOversizedFrameRefusedBeforeAllocation(t *testing.T) {
	_, err := ReadFrame(bytes.NewReader([]byte{0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff}))
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("got %v", err)
	}
}

// TestFailedAgreesWithTTRPCClient sends every shape of ttrpc status to a
// real ttrpc client and checks that ParseResponse and Failed call a
// response a success exactly when the client's call succeeds.
func TestFailedAgreesWithTTRPCClient(t *testing.T) {
	payload, _ := proto.Marshal(&ttrpc.Request{Payload: []byte("result")})
	marshal := func(r *ttrpc.Response) []byte { b, _ := proto.Marshal(r); return b }
	cases := map[string]struct {
		body    []byte
		success bool
	}{
		"absent":                  {marshal(&ttrpc.Response{Payload: payload}), true},
		"empty status":            {append([]byte{0x0a, 0x00}, marshal(&ttrpc.Response{Payload: payload})...), true},
		"OK with a message":       {marshal(&ttrpc.Response{Status: status.New(codes.OK, "ok").Proto(), Payload: payload}), true},
		"error with a payload":    {marshal(&ttrpc.Response{Status: status.New(codes.Internal, "no").Proto(), Payload: payload}), false},
		"error without payload":   {marshal(&ttrpc.Response{Status: status.New(codes.NotFound, "no").Proto()}), false},
		"truncated status":        {[]byte{0x0a, 0x02, 0x08}, false},
		"status message not utf8": {[]byte{0x0a, 0x03, 0x12, 0x01, 0xff}, false},
		"unknown field":           {append(marshal(&ttrpc.Response{Payload: payload}), 0x18, 0x01), true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			p := newPeer(t)
			done := p.call()
			r := p.answer(t, done, AppendMessage(nil, PluginService, Message{StreamID: p.request(t), Type: TypeResponse, Body: c.body}))
			if (r.err == nil) != c.success {
				t.Fatalf("test case wrong: ttrpc's client returned %v", r.err)
			}
			rsp, err := ParseResponse(c.body)
			if ours := err == nil && !Failed(rsp); ours != c.success {
				t.Fatalf("ParseResponse %v, Failed %v; ttrpc's client returned %v", err, err == nil && Failed(rsp), r.err)
			}
			if c.success && !bytes.Equal(rsp.GetPayload(), payload) {
				t.Fatalf("payload %x", rsp.GetPayload())
			}
		})
	}
}

func TestStreamReassemblesAcrossFrames(t *testing.T) {
	body, _ := proto.Marshal(&ttrpc.Request{Service: "svc", Method: "M", Payload: []byte("payload")})
	msg := Message{StreamID: 3, Type: TypeRequest, Body: body}.encode(nil)
	two := append(append([]byte{}, msg...), msg...)
	var s Stream
	var got []Message
	for i := range two { // one byte at a time
		s.Feed(two[i : i+1])
		for {
			m, ok, err := s.Next()
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			m.Body = append([]byte(nil), m.Body...)
			got = append(got, m)
		}
	}
	if len(got) != 2 || s.Buffered() != 0 {
		t.Fatalf("got %d messages, %d bytes left", len(got), s.Buffered())
	}
	r, err := ParseRequest(got[1].Body)
	if err != nil || r.Service != "svc" || r.Method != "M" || string(r.Payload) != "payload" || got[1].StreamID != 3 {
		t.Fatalf("parsed %+v %v", r, err)
	}
}

func TestParseRequestAgreesWithTTRPC(t *testing.T) {
	in := &ttrpc.Request{Service: "nri.pkg.api.v1alpha1.Runtime", Method: "RegisterPlugin", Payload: []byte{1, 2, 3}, TimeoutNano: 99,
		Metadata: []*ttrpc.KeyValue{{Key: "k", Value: "v"}}}
	body, _ := proto.Marshal(in)
	r, err := ParseRequest(body)
	if err != nil || r.Service != in.Service || r.Method != in.Method || !bytes.Equal(r.Payload, in.Payload) || r.TimeoutNano != 99 {
		t.Fatalf("%+v %v", r, err)
	}
}

// FuzzStream feeds arbitrary bytes through frame reading, reassembly and
// request and response parsing: errors are fine, panics are not.
func FuzzStream(f *testing.F) {
	body, _ := proto.Marshal(&ttrpc.Request{Service: "s", Method: "m", Payload: []byte("p")})
	f.Add(AppendMessage(nil, RuntimeService, Message{StreamID: 1, Type: TypeRequest, Body: body}))
	f.Add([]byte{0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var s Stream
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				return
			}
			s.Feed(fr.Payload)
			for {
				m, ok, err := s.Next()
				if err != nil || !ok {
					break
				}
				_, _ = ParseRequest(m.Body)
				if rsp, err := ParseResponse(m.Body); err == nil {
					_ = Failed(rsp)
				}
			}
		}
	})
}

// FuzzFraming cuts a stream of messages of fuzzed sizes into frames of
// fuzzed sizes, as a plugin may, reassembles them as the relay does, and
// writes them back with AppendMessage through the real multiplex to a
// reader that reads as ttrpc's channel does (a bufio.Reader of PeerBuffer
// bytes, the header then the body with io.ReadFull). Every message must
// arrive intact, in order, and each in the frame shapes of ttrpc's writer.
func FuzzFraming(f *testing.F) {
	f.Add([]byte{0, 0, 0x0f, 0xf6, 0x0f, 0xf7, 0x10, 0x00}, []byte{0x10, 0x00, 0, 1})
	f.Add([]byte{0xff, 0xff, 0x20, 0x0d}, []byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 5}, []byte{})
	f.Fuzz(func(t *testing.T, sizes, cuts []byte) {
		// Messages: two bytes of size each, at most eight.
		var msgs []Message
		var stream []byte
		for i := 0; i+1 < len(sizes) && len(msgs) < 8; i += 2 {
			n := int(binary.BigEndian.Uint16(sizes[i:]))
			body := make([]byte, n)
			for j := range body {
				body[j] = byte(i + j*7)
			}
			m := Message{StreamID: uint32(2*len(msgs) + 1), Type: byte(i%3 + 1), Flags: sizes[i], Body: body}
			msgs = append(msgs, m)
			stream = m.encode(stream)
		}
		// The plugin's frames: sizes from cuts, the rest in one frame.
		var frames []byte
		for i := 0; len(stream) > 0; i += 2 {
			n := len(stream)
			if i+1 < len(cuts) {
				n = min(n, 1+int(binary.BigEndian.Uint16(cuts[i:])))
			}
			frames = append(frames, rawFrame(RuntimeService, stream[:n])...)
			stream = stream[n:]
		}
		// Reassembly as the relay does it, re-framed for the runtime.
		var s Stream
		var out []byte
		var got int
		r := bytes.NewReader(frames)
		for r.Len() > 0 {
			fr, err := ReadFrame(r)
			if err != nil {
				t.Fatal(err)
			}
			s.Feed(fr.Payload)
			for {
				m, ok, err := s.Next()
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					break
				}
				want := msgs[got]
				if m.StreamID != want.StreamID || m.Type != want.Type || m.Flags != want.Flags || !bytes.Equal(m.Body, want.Body) {
					t.Fatalf("message %d reassembled wrong", got)
				}
				got++
				shaped := AppendMessage(nil, RuntimeService, m)
				sizes := frameSizes(t, shaped)
				if sizes[0] > PeerBuffer || len(sizes) > 2 || len(sizes) == 2 && sizes[0] != PeerBuffer {
					t.Fatalf("frames %v for a %d-byte body", sizes, len(m.Body))
				}
				out = append(out, shaped...)
			}
		}
		if got != len(msgs) || s.Buffered() != 0 {
			t.Fatalf("reassembled %d of %d messages, %d bytes left", got, len(msgs), s.Buffered())
		}
		// The runtime's side: real mux, ttrpc's way of reading.
		ours, theirs := net.Pipe()
		defer ours.Close()
		mux := multiplex.Multiplex(theirs)
		defer mux.Close()
		conn, _ := mux.Open(multiplex.RuntimeServiceConn)
		go func() { _, _ = ours.Write(out) }()
		br := bufio.NewReader(conn)
		for i, want := range msgs {
			var hdr [msgHeaderLen]byte
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				t.Fatalf("message %d header: %v", i, err)
			}
			body := make([]byte, binary.BigEndian.Uint32(hdr[:4]))
			if _, err := io.ReadFull(br, body); err != nil {
				t.Fatalf("message %d body: %v", i, err)
			}
			if binary.BigEndian.Uint32(hdr[4:8]) != want.StreamID || hdr[8] != want.Type || hdr[9] != want.Flags || !bytes.Equal(body, want.Body) {
				t.Fatalf("message %d arrived wrong", i)
			}
		}
	})
}

// FuzzParseRequest checks the hand-written decoder against ttrpc's own
// generated one: whenever protobuf accepts the bytes, both must agree.
func FuzzParseRequest(f *testing.F) {
	body, _ := proto.Marshal(&ttrpc.Request{Service: "s", Method: "m", Payload: []byte("p"), TimeoutNano: 5})
	f.Add(body)
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := ParseRequest(data)
		var want ttrpc.Request
		if perr := proto.Unmarshal(data, &want); perr != nil {
			return
		}
		if err != nil {
			t.Fatalf("protobuf accepts %x but ParseRequest fails: %v", data, err)
		}
		if got.Service != want.Service || got.Method != want.Method || !bytes.Equal(got.Payload, want.Payload) || got.TimeoutNano != want.TimeoutNano {
			t.Fatalf("disagree: %+v vs %v", got, &want)
		}
	})
}
