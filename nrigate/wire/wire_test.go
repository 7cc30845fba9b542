package wire

import (
	"bytes"
	"errors"
	"testing"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
)

func TestFramesRoundTripAndSplit(t *testing.T) {
	big := bytes.Repeat([]byte{7}, MaxFrame+10)
	data := AppendFrames(nil, RuntimeService, big)
	r := bytes.NewReader(data)
	f1, err := ReadFrame(r)
	if err != nil || f1.Conn != RuntimeService || len(f1.Payload) != MaxFrame {
		t.Fatalf("first frame: %d %v", len(f1.Payload), err)
	}
	f2, err := ReadFrame(r)
	if err != nil || len(f2.Payload) != 10 {
		t.Fatalf("second frame: %d %v", len(f2.Payload), err)
	}
}

func TestOversizedFrameRefusedBeforeAllocation(t *testing.T) {
	_, err := ReadFrame(bytes.NewReader([]byte{0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff}))
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("got %v", err)
	}
}

func TestStreamReassemblesAcrossFrames(t *testing.T) {
	body, _ := proto.Marshal(&ttrpc.Request{Service: "svc", Method: "M", Payload: []byte("payload")})
	msg := Message{StreamID: 3, Type: TypeRequest, Body: body}.Append(nil)
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
	if err != nil || r.Service != in.Service || r.Method != in.Method || !bytes.Equal(r.Payload, in.Payload) {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestParseResponsePayload(t *testing.T) {
	ok, _ := proto.Marshal(&ttrpc.Response{Payload: []byte("x")})
	p, failed, err := ParseResponsePayload(ok)
	if err != nil || failed || string(p) != "x" {
		t.Fatalf("ok response: %q %v %v", p, failed, err)
	}
}

// FuzzStream feeds arbitrary bytes through frame reading, reassembly and
// request parsing: errors are fine, panics are not.
func FuzzStream(f *testing.F) {
	body, _ := proto.Marshal(&ttrpc.Request{Service: "s", Method: "m", Payload: []byte("p")})
	f.Add(AppendFrames(nil, RuntimeService, Message{StreamID: 1, Type: TypeRequest, Body: body}.Append(nil)))
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
				_, _, _ = ParseResponsePayload(m.Body)
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
		if got.Service != want.Service || got.Method != want.Method || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("disagree: %+v vs %v", got, &want)
		}
	})
}
