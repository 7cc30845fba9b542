package pluginauth

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Protocol constants. They are part of the wire format described in
// docs/pluginauth-protocol.md.
const (
	// Version is the protocol version this package speaks.
	Version = 1
	// AlgorithmECDH is the keyed algorithm: X25519 key agreement, HKDF-SHA256
	// key derivation, ChaCha20-Poly1305 sealing. The name is the one used by
	// containerd/nri PR #183 so that plugins carry over.
	AlgorithmECDH = "ecdh+chacha+sha256"
	// AlgorithmNone is the explicit hello of a plugin without a key. It is
	// accepted only when the server does not require authentication.
	AlgorithmNone = "none"
	// MaxFrameSize is the largest frame body either side accepts.
	MaxFrameSize = 4096
	// ChallengeSize is the length of the server's random challenge and of the
	// plugin's random nonce.
	ChallengeSize = 32
)

const (
	magic         = "tgpa"
	flagMutual    = 0x01
	knownFlags    = flagMutual
	maxNameLen    = 255
	maxReasonLen  = 1024
	tagSize       = 16 // Poly1305 tag
	sealedSecret  = 32 + tagSize
	frameHdrSize  = 2
	challengeBody = 1 + KeySize + sealedSecret
	responseBody  = 1 + sealedSecret
)

// Message types: the first byte of every frame body.
const (
	msgHello     byte = 1
	msgChallenge byte = 2
	msgResponse  byte = 3
	msgAccept    byte = 4
	msgReject    byte = 5
)

// writeFrame writes body behind its 2-byte big-endian length in one Write.
func writeFrame(w io.Writer, body []byte) error {
	if len(body) == 0 || len(body) > MaxFrameSize {
		return fmt.Errorf("frame of %d bytes is outside 1..%d", len(body), MaxFrameSize)
	}
	buf := make([]byte, frameHdrSize+len(body))
	binary.BigEndian.PutUint16(buf, uint16(len(body)))
	copy(buf[frameHdrSize:], body)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}

// readFrame reads exactly one frame, never more bytes than it holds, so the
// connection can carry another protocol right after the handshake.
func readFrame(r io.Reader) ([]byte, error) {
	var hdr [frameHdrSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, &Error{Code: CodeMalformed, Reason: "truncated frame header"}
		}
		return nil, fmt.Errorf("read frame header: %w", err)
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n == 0 {
		return nil, errorf(CodeMalformed, "empty frame (is the peer speaking plain NRI without a pluginauth handshake?)")
	}
	if n > MaxFrameSize {
		return nil, errorf(CodeMalformed, "frame of %d bytes exceeds the maximum of %d", n, MaxFrameSize)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, errorf(CodeMalformed, "truncated frame: header announced %d bytes", n)
		}
		return nil, fmt.Errorf("read frame body: %w", err)
	}
	return body, nil
}

// decoder walks a message body; the first failure sticks.
type decoder struct {
	b   []byte
	err error
	msg string
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = errorf(CodeMalformed, d.msg+": "+format, args...)
	}
}

func (d *decoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.fail("truncated %s: need %d bytes, have %d", what, n, len(d.b))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8(what string) byte {
	v := d.take(1, what)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *decoder) str8(what string) string {
	n := d.u8(what + " length")
	return string(d.take(int(n), what))
}

func (d *decoder) str16(what string) string {
	v := d.take(2, what+" length")
	if v == nil {
		return ""
	}
	return string(d.take(int(binary.BigEndian.Uint16(v)), what))
}

func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

func (d *decoder) expectType(t byte) {
	if got := d.u8("message type"); d.err == nil && got != t {
		d.fail("message type %d, want %d", got, t)
	}
}

// encoder appends fields.
type encoder struct{ b []byte }

func (e *encoder) u8(v byte)     { e.b = append(e.b, v) }
func (e *encoder) raw(v []byte)  { e.b = append(e.b, v...) }
func (e *encoder) str8(s string) { e.b = append(append(e.b, byte(len(s))), s...) }
func (e *encoder) str16(s string) {
	e.b = append(binary.BigEndian.AppendUint16(e.b, uint16(len(s))), s...)
}
func (e *encoder) bytes8(v []byte) { e.b = append(append(e.b, byte(len(v))), v...) }

// hello is the plugin's first message.
type hello struct {
	version      byte
	flags        byte
	algorithm    string
	publicKey    []byte
	clientRandom [ChallengeSize]byte
	name         string
	index        string
}

func (h *hello) mutual() bool { return h.flags&flagMutual != 0 }

func (h *hello) encode() []byte {
	e := encoder{b: make([]byte, 0, 96+len(h.name))}
	e.u8(msgHello)
	e.raw([]byte(magic))
	e.u8(h.version)
	e.u8(h.flags)
	e.str8(h.algorithm)
	e.bytes8(h.publicKey)
	e.raw(h.clientRandom[:])
	e.str8(h.name)
	e.str8(h.index)
	return e.b
}

// decodeHello parses and checks a hello. The version is checked before
// anything after it, since a later version may lay the rest out differently.
func decodeHello(b []byte) (*hello, error) {
	d := decoder{b: b, msg: "hello"}
	d.expectType(msgHello)
	if m := d.take(len(magic), "magic"); d.err == nil && string(m) != magic {
		d.fail("bad magic %q (is the peer speaking plain NRI without a pluginauth handshake?)", m)
	}
	h := &hello{version: d.u8("version")}
	if d.err != nil {
		return nil, d.err
	}
	if h.version != Version {
		return nil, errorf(CodeUnsupportedVersion, "peer speaks version %d; this side speaks only version %d", h.version, Version)
	}
	h.flags = d.u8("flags")
	h.algorithm = d.str8("algorithm")
	h.publicKey = slices.Clone(d.take(int(d.u8("public key length")), "public key"))
	copy(h.clientRandom[:], d.take(ChallengeSize, "nonce"))
	h.name = d.str8("plugin name")
	h.index = d.str8("plugin index")
	if err := d.finish(); err != nil {
		return nil, err
	}
	if h.flags&^knownFlags != 0 {
		return nil, errorf(CodeMalformed, "hello: unknown flags 0x%02x", h.flags&^knownFlags)
	}
	switch h.algorithm {
	case AlgorithmECDH:
		if len(h.publicKey) != KeySize {
			return nil, errorf(CodeMalformed, "hello: %s public key has %d bytes, want %d", h.algorithm, len(h.publicKey), KeySize)
		}
	case AlgorithmNone:
		if len(h.publicKey) != 0 {
			return nil, errorf(CodeMalformed, "hello: algorithm %q carries a %d-byte public key, want none", h.algorithm, len(h.publicKey))
		}
		if h.mutual() {
			return nil, errorf(CodeMalformed, "hello: mutual authentication needs a plugin key; algorithm %q has none", h.algorithm)
		}
	default:
		return nil, errorf(CodeUnknownAlgorithm, "algorithm %q; this side knows %q and %q", printable(h.algorithm), AlgorithmECDH, AlgorithmNone)
	}
	if err := CheckPluginName(h.name); err != nil {
		return nil, &Error{Code: CodeMalformed, Reason: "hello: " + err.Error()}
	}
	if err := CheckPluginIndex(h.index); err != nil {
		return nil, &Error{Code: CodeMalformed, Reason: "hello: " + err.Error()}
	}
	return h, nil
}

// CheckPluginName reports whether name is acceptable as an NRI plugin name
// in a hello: 1 to 255 bytes of printable UTF-8 without '/' or spaces.
func CheckPluginName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("plugin name must have 1 to %d bytes, has %d", maxNameLen, len(name))
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("plugin name %q is not valid UTF-8", name)
	}
	for _, r := range name {
		if r == '/' || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("plugin name %q contains %q; use letters, digits, '-', '_' or '.'", name, r)
		}
	}
	return nil
}

// CheckPluginIndex reports whether index is an NRI plugin index: exactly two
// ASCII digits, such as "05" or "10".
func CheckPluginIndex(index string) error {
	if len(index) != 2 || index[0] < '0' || index[0] > '9' || index[1] < '0' || index[1] > '9' {
		return fmt.Errorf("plugin index %q must be exactly two digits, such as \"10\"", printable(index))
	}
	return nil
}

// challenge is the server's answer to a keyed hello.
type challenge struct {
	ephemeral [KeySize]byte
	sealed    [sealedSecret]byte
}

func (c *challenge) encode() []byte {
	e := encoder{b: make([]byte, 0, challengeBody)}
	e.u8(msgChallenge)
	e.raw(c.ephemeral[:])
	e.raw(c.sealed[:])
	return e.b
}

func decodeChallenge(b []byte) (*challenge, error) {
	d := decoder{b: b, msg: "challenge"}
	d.expectType(msgChallenge)
	c := &challenge{}
	copy(c.ephemeral[:], d.take(KeySize, "ephemeral key"))
	copy(c.sealed[:], d.take(sealedSecret, "sealed challenge"))
	if err := d.finish(); err != nil {
		return nil, err
	}
	return c, nil
}

// response is the plugin's proof of possession.
type response struct {
	sealed [sealedSecret]byte
}

func (r *response) encode() []byte {
	e := encoder{b: make([]byte, 0, responseBody)}
	e.u8(msgResponse)
	e.raw(r.sealed[:])
	return e.b
}

func decodeResponse(b []byte) (*response, error) {
	d := decoder{b: b, msg: "response"}
	d.expectType(msgResponse)
	r := &response{}
	copy(r.sealed[:], d.take(sealedSecret, "sealed proof"))
	if err := d.finish(); err != nil {
		return nil, err
	}
	return r, nil
}

// Outcome is what the server grants an accepted plugin: the role, the role's
// tags, and the opaque capabilities configured for it. A plugin can stop
// cleanly when they are too restricted for it.
type Outcome struct {
	// Role is the name of the role the plugin was given.
	Role string
	// Tags are the role's tags.
	Tags map[string]string
	// Capabilities are the role's capabilities, opaque to pluginauth.
	Capabilities []string
}

// encodeOutcome lays out an outcome with tags in sorted key order, so the
// same outcome always gives the same bytes.
func encodeOutcome(o *Outcome) ([]byte, error) {
	if len(o.Role) > maxNameLen {
		return nil, fmt.Errorf("role name has %d bytes, more than %d", len(o.Role), maxNameLen)
	}
	if len(o.Tags) > 255 || len(o.Capabilities) > 255 {
		return nil, fmt.Errorf("outcome has %d tags and %d capabilities; at most 255 of each", len(o.Tags), len(o.Capabilities))
	}
	e := encoder{}
	e.str8(o.Role)
	keys := make([]string, 0, len(o.Tags))
	for k := range o.Tags {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	e.u8(byte(len(keys)))
	for _, k := range keys {
		v := o.Tags[k]
		if len(k) > maxNameLen || len(v) > MaxFrameSize {
			return nil, fmt.Errorf("tag %q is too long", k)
		}
		e.str8(k)
		e.str16(v)
	}
	e.u8(byte(len(o.Capabilities)))
	for _, c := range o.Capabilities {
		if len(c) > MaxFrameSize {
			return nil, fmt.Errorf("capability of %d bytes is too long", len(c))
		}
		e.str16(c)
	}
	if len(e.b)+1+tagSize > MaxFrameSize {
		return nil, fmt.Errorf("outcome needs %d bytes, more than a frame holds (%d)", len(e.b)+1+tagSize, MaxFrameSize)
	}
	return e.b, nil
}

func decodeOutcome(b []byte) (*Outcome, error) {
	d := decoder{b: b, msg: "outcome"}
	o := &Outcome{Role: d.str8("role")}
	if n := d.u8("tag count"); n > 0 {
		o.Tags = make(map[string]string, n)
		prev := ""
		for i := range n {
			k := d.str8("tag key")
			v := d.str16("tag value")
			if d.err != nil {
				break
			}
			if i > 0 && k <= prev {
				d.fail("tag %q is duplicated or out of order (tags are sorted by key)", printable(k))
			}
			prev = k
			o.Tags[k] = v
		}
	}
	if n := d.u8("capability count"); n > 0 {
		o.Capabilities = make([]string, 0, n)
		for range n {
			o.Capabilities = append(o.Capabilities, d.str16("capability"))
		}
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	return o, nil
}

// encodeReject builds a reject message; the reason is cut to fit.
func encodeReject(c Code, reason string) []byte {
	reason = sanitize(reason)
	if len(reason) > maxReasonLen {
		reason = strings.ToValidUTF8(reason[:maxReasonLen], "")
	}
	e := encoder{b: make([]byte, 0, 2+len(reason))}
	e.u8(msgReject)
	e.u8(byte(c))
	e.raw([]byte(reason))
	return e.b
}

func decodeReject(b []byte) (*Error, error) {
	d := decoder{b: b, msg: "reject"}
	d.expectType(msgReject)
	c := Code(d.u8("code"))
	if d.err != nil {
		return nil, d.err
	}
	reason := string(d.b)
	if len(reason) > maxReasonLen {
		return nil, errorf(CodeMalformed, "reject: reason of %d bytes exceeds %d", len(reason), maxReasonLen)
	}
	if sanitize(reason) != reason {
		return nil, errorf(CodeMalformed, "reject: reason is not printable UTF-8")
	}
	return &Error{Code: c, Reason: reason, Remote: true}, nil
}

// sanitize drops invalid UTF-8 and control characters, so a peer's text can
// be logged and shown safely.
func sanitize(s string) string {
	s = strings.ToValidUTF8(s, "")
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
}

// printable quotes nothing but makes untrusted text safe for messages.
func printable(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return sanitize(s)
}
