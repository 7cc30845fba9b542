package pluginauth

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// Every decoder of untrusted bytes has a fuzz target. Decoders must never
// panic, must fail with a *Error, and whatever they accept must re-encode to
// the same bytes (the encoding is canonical).

func sampleHello(alg string, key []byte) []byte {
	h := hello{version: Version, algorithm: alg, publicKey: key, name: "logger", index: "10"}
	return h.encode()
}

func checkDecodeErr(t *testing.T, err error) {
	var pe *Error
	if err != nil && !errors.As(err, &pe) {
		t.Fatalf("decoder error is not a *Error: %v", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 3, 1, 2, 3})
	f.Add([]byte{0, 0})
	f.Add([]byte{0xff, 0xff, 0})
	f.Add([]byte{0})
	f.Add(append([]byte{0x10, 0x00}, make([]byte, MaxFrameSize)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		body, err := readFrame(r)
		if err != nil {
			return
		}
		if len(body) == 0 || len(body) > MaxFrameSize {
			t.Fatalf("frame of %d bytes accepted", len(body))
		}
		if consumed := len(data) - r.Len(); consumed != frameHdrSize+len(body) {
			t.Fatalf("read %d bytes for a %d-byte frame", consumed, len(body))
		}
		var buf bytes.Buffer
		if err := writeFrame(&buf, body); err != nil || !bytes.Equal(buf.Bytes(), data[:frameHdrSize+len(body)]) {
			t.Fatalf("frame does not round-trip: %v", err)
		}
	})
}

func FuzzDecodeHello(f *testing.F) {
	f.Add(sampleHello(AlgorithmECDH, make([]byte, KeySize)))
	f.Add(sampleHello(AlgorithmNone, nil))
	f.Add(sampleHello("rsa", nil))
	f.Add([]byte{msgHello, 't', 'g', 'p', 'a', 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := decodeHello(data)
		checkDecodeErr(t, err)
		if err == nil && !bytes.Equal(h.encode(), data) {
			t.Fatalf("hello does not round-trip")
		}
	})
}

func FuzzDecodeChallenge(f *testing.F) {
	f.Add((&challenge{}).encode())
	f.Add([]byte{msgChallenge})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := decodeChallenge(data)
		checkDecodeErr(t, err)
		if err == nil && !bytes.Equal(c.encode(), data) {
			t.Fatalf("challenge does not round-trip")
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	f.Add((&response{}).encode())
	f.Add([]byte{msgResponse, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeResponse(data)
		checkDecodeErr(t, err)
		if err == nil && !bytes.Equal(r.encode(), data) {
			t.Fatalf("response does not round-trip")
		}
	})
}

func FuzzDecodeOutcome(f *testing.F) {
	seed, _ := encodeOutcome(&Outcome{Role: "r", Tags: map[string]string{"a": "b", "c": ""}, Capabilities: []string{"x", "y"}})
	f.Add(seed)
	f.Add([]byte{0, 0, 0})
	f.Add([]byte{1, 'r', 2, 1, 'a', 0, 0, 1, 'a', 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := decodeOutcome(data)
		checkDecodeErr(t, err)
		if err != nil {
			return
		}
		again, err := encodeOutcome(o)
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("outcome does not round-trip: %v", err)
		}
	})
}

func FuzzDecodeReject(f *testing.F) {
	f.Add(encodeReject(CodeUnknownKey, "key is in no role"))
	f.Add([]byte{msgReject})
	f.Add([]byte{msgReject, 3, 0x1b, '[', '2', 'J'})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := decodeReject(data)
		checkDecodeErr(t, err)
		if err == nil && !bytes.Equal(encodeReject(e.Code, e.Reason), data) {
			t.Fatalf("reject does not round-trip")
		}
	})
}

func FuzzParsePublicKey(f *testing.F) {
	f.Add("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=")
	f.Add("")
	f.Add("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParsePublicKey(s)
		if err != nil {
			return
		}
		if again, err := ParsePublicKey(k.String()); err != nil || !again.Equal(k) {
			t.Fatalf("public key does not round-trip: %v", err)
		}
	})
}

// fuzzConn feeds fixed bytes to a handshake and swallows its writes.
type fuzzConn struct {
	net.Conn
	r io.Reader
}

func (c *fuzzConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error)        { return len(p), nil }
func (c *fuzzConn) SetDeadline(time.Time) error        { return nil }
func (c *fuzzConn) RemoteAddr() net.Addr               { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error    { return nil }
func (c *fuzzConn) SetWriteDeadline(t time.Time) error { return nil }

// FuzzServerHandshake drives the whole server side with arbitrary plugin
// bytes: it must fail cleanly, never panic, never accept.
func FuzzServerHandshake(f *testing.F) {
	k, err := GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	cfg := DefaultServerConfig()
	cfg.RequireAuthentication = false
	cfg.Roles = []RoleConfig{
		roleCfg("a", []string{"*"}, []string{"*"}, k),
		{Role: DefaultRole, Names: []string{"nokey"}, Indices: []string{"*"}},
	}
	s, err := NewServer(cfg, WithStaticKey(k))
	if err != nil {
		f.Fatal(err)
	}
	frame := func(b []byte) []byte { return append([]byte{byte(len(b) >> 8), byte(len(b))}, b...) }
	f.Add(frame(sampleHello(AlgorithmECDH, k.Public().Bytes())))
	f.Add(append(frame(sampleHello(AlgorithmECDH, k.Public().Bytes())), frame((&response{}).encode())...))
	f.Add(frame(sampleHello(AlgorithmNone, nil)))
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := s.Handshake(context.Background(), &fuzzConn{r: bytes.NewReader(data)})
		if err == nil && id.Authenticated() {
			t.Fatal("arbitrary bytes passed the keyed handshake")
		}
	})
}

// FuzzClientHandshake drives the plugin side with arbitrary server bytes.
func FuzzClientHandshake(f *testing.F) {
	k, err := GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	frame := func(b []byte) []byte { return append([]byte{byte(len(b) >> 8), byte(len(b))}, b...) }
	f.Add(frame((&challenge{}).encode()))
	f.Add(frame(encodeReject(CodeUnknownKey, "no")))
	f.Add(frame([]byte{msgAccept, 0, 0, 0}))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, key := range []*PrivateKey{k, nil} {
			_, _ = ClientHandshake(context.Background(), &fuzzConn{r: bytes.NewReader(data)}, key, "p", "10")
		}
	})
}
