package relay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/net/multiplex"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	"github.com/trustgate/trustgate/nrigate/wire"
)

// relayed is one message the relay wrote towards the runtime.
type relayed struct {
	conn uint32
	msg  wire.Message
}

// FuzzRelayToRuntime sends arbitrary frames from a plugin through a relay
// that has runtime requests outstanding, and checks what reaches the
// runtime: byte for byte the frames of ttrpc's writer, one message after
// the other, which the real multiplex and a reader that reads as ttrpc's
// channel does (bufio.Reader of 4096 bytes) decode in full.
func FuzzRelayToRuntime(f *testing.F) {
	big, _ := proto.Marshal(&api.CreateContainerResponse{Adjust: &api.ContainerAdjustment{
		Env: []*api.KeyValue{{Key: "BIG", Value: strings.Repeat("v", 9000)}}}})
	answer, _ := proto.Marshal(&ttrpc.Response{Payload: big})
	stream := encode(wire.Message{StreamID: 1, Type: wire.TypeResponse, Body: answer})
	var cut []byte
	for len(stream) > 0 { // frames of 1000 bytes, as no ttrpc writer cuts them
		n := min(len(stream), 1000)
		cut = append(cut, rawFrame(wire.PluginService, stream[:n])...)
		stream = stream[n:]
	}
	f.Add(cut)
	upd, _ := proto.Marshal(&api.UpdateContainersRequest{Update: []*api.ContainerUpdate{{ContainerId: "c1"}}})
	req, _ := proto.Marshal(&ttrpc.Request{Service: runtimeService, Method: "UpdateContainers", Payload: upd})
	f.Add(wire.AppendMessage(nil, wire.RuntimeService, wire.Message{StreamID: 3, Type: wire.TypeRequest, Body: req}))
	f.Add(rawFrame(wire.PluginService, []byte{0, 0, 0, 3, 0, 0, 0, 3, 2, 0, 0x0a, 0x01, 0x08}))
	f.Fuzz(func(t *testing.T, data []byte) {
		plugin, pluginEnd := net.Pipe()
		runtime, runtimeEnd := net.Pipe()
		c := &Conn{plugin: plugin, chk: &rules{}, log: slog.New(slog.DiscardHandler), outstanding: map[uint32]*request{}}
		for i, m := range []string{"CreateContainer", "UpdateContainer", "StopContainer", "Synchronize"} {
			c.outstanding[uint32(2*i+1)] = &request{method: m}
		}
		go func() { _, _ = pluginEnd.Write(data); pluginEnd.Close() }()
		captured := make(chan []byte)
		go func() { b, _ := io.ReadAll(runtimeEnd); captured <- b }()
		_ = c.Run(context.Background(), runtime)
		out := <-captured

		// Byte for byte ttrpc's frames, one message after the other.
		var msgs []relayed
		streams := map[uint32]*wire.Stream{wire.PluginService: {}, wire.RuntimeService: {}}
		var again []byte
		r := bytes.NewReader(out)
		for r.Len() > 0 {
			fr, err := wire.ReadFrame(r)
			if err != nil {
				t.Fatalf("relay wrote a bad frame: %v", err)
			}
			s := streams[fr.Conn]
			if s == nil {
				t.Fatalf("relay wrote to mux connection %d", fr.Conn)
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
				m.Body = bytes.Clone(m.Body)
				msgs = append(msgs, relayed{fr.Conn, m})
				again = wire.AppendMessage(again, fr.Conn, m)
			}
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("the relay's %d bytes are not ttrpc's frames of its %d messages", len(out), len(msgs))
		}
		// The real mux and ttrpc's way of reading decode all of it.
		trunk, theirs := net.Pipe()
		defer trunk.Close()
		mux := multiplex.Multiplex(theirs)
		defer mux.Close()
		readers := map[uint32]*bufio.Reader{}
		for id := range streams {
			conn, _ := mux.Open(multiplex.ConnID(id))
			readers[id] = bufio.NewReader(conn)
		}
		go func() { _, _ = trunk.Write(out) }()
		for i, want := range msgs {
			br := readers[want.conn]
			var hdr [10]byte
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				t.Fatalf("message %d header: %v", i, err)
			}
			body := make([]byte, binary.BigEndian.Uint32(hdr[:4]))
			if _, err := io.ReadFull(br, body); err != nil {
				t.Fatalf("message %d body: %v", i, err)
			}
			if binary.BigEndian.Uint32(hdr[4:8]) != want.msg.StreamID || !bytes.Equal(body, want.msg.Body) {
				t.Fatalf("message %d arrived wrong", i)
			}
		}
	})
}
