package pluginauth

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"reflect"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

var updateVectors = flag.Bool("update", false, "rewrite testdata/vectors.json from this implementation")

const vectorsPath = "testdata/vectors.json"

// vector is one published handshake: fixed keys and randomness, and the
// exact bytes of every message. See docs/pluginauth-protocol.md.
type vector struct {
	Name                   string            `json:"name"`
	PluginPrivate          string            `json:"plugin_private,omitempty"`
	PluginPublic           string            `json:"plugin_public,omitempty"`
	ServerStaticPrivate    string            `json:"server_static_private,omitempty"`
	ServerStaticPublic     string            `json:"server_static_public,omitempty"`
	ServerEphemeralPrivate string            `json:"server_ephemeral_private,omitempty"`
	Challenge              string            `json:"challenge,omitempty"`
	ClientRandom           string            `json:"client_random"`
	PluginName             string            `json:"plugin_name"`
	PluginIndex            string            `json:"plugin_index"`
	Role                   string            `json:"role"`
	Tags                   map[string]string `json:"tags"`
	Capabilities           []string          `json:"capabilities"`
	Hello                  string            `json:"hello"`
	ChallengeMessage       string            `json:"challenge_message,omitempty"`
	Response               string            `json:"response,omitempty"`
	Accept                 string            `json:"accept"`
	TH2                    string            `json:"th2,omitempty"`
	KeyServerToPlugin      string            `json:"key_server_to_plugin,omitempty"`
	KeyPluginToServer      string            `json:"key_plugin_to_server,omitempty"`
}

type vectorFile struct {
	Comment string   `json:"comment"`
	Vectors []vector `json:"vectors"`
}

// fixed returns n bytes start, start+1, ...
func fixed(start byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func vectorInputs() []vector {
	base := func(name string) vector {
		return vector{
			Name: name, PluginName: "logger", PluginIndex: "10",
			ClientRandom: hex.EncodeToString(fixed(0x80, 32)),
			Role:         "observer", Tags: map[string]string{"team": "obs", "tier": "1"},
			Capabilities: []string{"read-only", "no-hooks"},
		}
	}
	keyed := base("keyed")
	keyed.PluginPrivate = hex.EncodeToString(fixed(0x01, 32))
	keyed.ServerEphemeralPrivate = hex.EncodeToString(fixed(0x21, 32))
	keyed.Challenge = hex.EncodeToString(fixed(0x41, 32))
	mutual := keyed
	mutual.Name = "mutual"
	mutual.ServerStaticPrivate = hex.EncodeToString(fixed(0x61, 32))
	none := base("none")
	none.Role, none.Tags, none.Capabilities = DefaultRole, nil, []string{"read-only"}
	return []vector{keyed, mutual, none}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// splitFrames cuts a recorded byte stream into frame bodies.
func splitFrames(t *testing.T, b []byte) []string {
	t.Helper()
	var out []string
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		body, err := readFrame(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, hex.EncodeToString(body))
	}
	return out
}

// runVector runs this package's handshake with the vector's fixed inputs
// and fills in the message bytes.
func runVector(t *testing.T, in vector) vector {
	t.Helper()
	var pluginKey *PrivateKey
	cfg := DefaultServerConfig()
	role := RoleConfig{Role: in.Role, Tags: in.Tags, Capabilities: in.Capabilities, Names: []string{in.PluginName}, Indices: []string{in.PluginIndex}}
	if in.PluginPrivate != "" {
		var err error
		if pluginKey, err = privateKeyFromBytes(unhex(t, in.PluginPrivate)); err != nil {
			t.Fatal(err)
		}
		in.PluginPublic = hex.EncodeToString(pluginKey.Public().Bytes())
		role.Keys = []string{pluginKey.Public().String()}
	} else {
		cfg.RequireAuthentication = false
	}
	cfg.Roles = []RoleConfig{role}
	var opts []ServerOption
	var dialOpts []DialOption
	if in.ServerStaticPrivate != "" {
		sk, err := privateKeyFromBytes(unhex(t, in.ServerStaticPrivate))
		if err != nil {
			t.Fatal(err)
		}
		in.ServerStaticPublic = hex.EncodeToString(sk.Public().Bytes())
		opts = append(opts, WithStaticKey(sk))
		dialOpts = append(dialOpts, WithServerKey(sk.Public()))
	}
	s := newTestServer(t, cfg, opts...)
	s.rand = bytes.NewReader(append(unhex(t, in.ServerEphemeralPrivate), unhex(t, in.Challenge)...))
	dialOpts = append(dialOpts, withRand(bytes.NewReader(unhex(t, in.ClientRandom))))

	sc, cc := socketPair(t)
	srec, crec := &recorder{Conn: sc}, &recorder{Conn: cc}
	errc := make(chan error, 1)
	go func() { _, err := s.Handshake(context.Background(), srec); errc <- err }()
	out, err := ClientHandshake(context.Background(), crec, pluginKey, in.PluginName, in.PluginIndex, dialOpts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if out.Role != in.Role || !reflect.DeepEqual(out.Tags, in.Tags) || !reflect.DeepEqual(out.Capabilities, in.Capabilities) {
		t.Fatalf("outcome %+v does not match the vector's role", out)
	}
	fromPlugin, fromServer := splitFrames(t, crec.buf.Bytes()), splitFrames(t, srec.buf.Bytes())
	in.Hello = fromPlugin[0]
	if pluginKey == nil {
		in.Accept = fromServer[0]
		return in
	}
	in.ChallengeMessage, in.Accept = fromServer[0], fromServer[1]
	in.Response = fromPlugin[1]
	return in
}

func TestVectors(t *testing.T) {
	inputs := vectorInputs()
	if *updateVectors {
		f := vectorFile{Comment: "pluginauth v1 test vectors; see docs/pluginauth-protocol.md. All byte strings are hex; messages are frame bodies (without the 2-byte length).", Vectors: make([]vector, len(inputs))}
		for i, in := range inputs {
			f.Vectors[i] = runVector(t, in)
			addDerived(t, &f.Vectors[i])
		}
		b, err := json.MarshalIndent(f, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsPath, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	var f vectorFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Vectors) != len(inputs) {
		t.Fatalf("%s has %d vectors, want %d", vectorsPath, len(f.Vectors), len(inputs))
	}
	for i, want := range f.Vectors {
		t.Run(want.Name, func(t *testing.T) {
			got := runVector(t, inputs[i])
			addDerived(t, &got)
			if !reflect.DeepEqual(got, want) {
				gj, _ := json.MarshalIndent(got, "", "  ")
				t.Errorf("this implementation gives\n%s\nthe published vector is\n%+v", gj, want)
			}
			independentCheck(t, want)
		})
	}
}

// addDerived records the intermediate values, computed independently.
func addDerived(t *testing.T, v *vector) {
	if v.PluginPrivate == "" {
		return
	}
	th2, s2p, p2s := independentKeys(t, v)
	v.TH2, v.KeyServerToPlugin, v.KeyPluginToServer = hex.EncodeToString(th2), hex.EncodeToString(s2p), hex.EncodeToString(p2s)
}

// independentKeys follows the protocol document with the standard library
// only, sharing no code with the implementation.
func independentKeys(t *testing.T, v *vector) (th2, s2p, p2s []byte) {
	t.Helper()
	x := ecdh.X25519()
	eph, err := x.NewPrivateKey(unhex(t, v.ServerEphemeralPrivate))
	if err != nil {
		t.Fatal(err)
	}
	plug, err := x.NewPublicKey(unhex(t, v.PluginPublic))
	if err != nil {
		t.Fatal(err)
	}
	secret, err := eph.ECDH(plug)
	if err != nil {
		t.Fatal(err)
	}
	hello := unhex(t, v.Hello)
	h := sha256.New()
	h.Write([]byte("trustgate pluginauth v1 ecdh+chacha+sha256"))
	h.Write([]byte{byte(len(hello) >> 8), byte(len(hello))})
	h.Write(hello)
	h.Write(eph.PublicKey().Bytes())
	if v.ServerStaticPrivate != "" {
		ss, err := x.NewPrivateKey(unhex(t, v.ServerStaticPrivate))
		if err != nil {
			t.Fatal(err)
		}
		dh2, err := ss.ECDH(plug)
		if err != nil {
			t.Fatal(err)
		}
		secret = append(secret, dh2...)
		h.Write(ss.PublicKey().Bytes())
	}
	th2 = h.Sum(nil)
	okm, err := hkdf.Key(sha256.New, secret, th2, "trustgate pluginauth v1 keys", 64)
	if err != nil {
		t.Fatal(err)
	}
	return th2, okm[:32], okm[32:]
}

// independentCheck recomputes every message of a published vector from its
// inputs by following the protocol document.
func independentCheck(t *testing.T, v vector) {
	t.Helper()
	hello := []byte{1, 't', 'g', 'p', 'a', 1}
	flags, alg, pub := byte(0), "none", []byte(nil)
	if v.PluginPrivate != "" {
		alg, pub = "ecdh+chacha+sha256", unhex(t, v.PluginPublic)
	}
	if v.ServerStaticPrivate != "" {
		flags = 1
	}
	hello = append(hello, flags, byte(len(alg)))
	hello = append(hello, alg...)
	hello = append(hello, byte(len(pub)))
	hello = append(hello, pub...)
	hello = append(hello, unhex(t, v.ClientRandom)...)
	hello = append(append(hello, byte(len(v.PluginName))), v.PluginName...)
	hello = append(append(hello, byte(len(v.PluginIndex))), v.PluginIndex...)
	if hex.EncodeToString(hello) != v.Hello {
		t.Errorf("hello: spec gives %x, vector has %s", hello, v.Hello)
	}

	// Outcome: role, sorted tags, capabilities.
	outcome := append([]byte{byte(len(v.Role))}, v.Role...)
	outcome = append(outcome, byte(len(v.Tags)))
	for _, k := range sortedKeys(v.Tags) {
		outcome = append(append(outcome, byte(len(k))), k...)
		outcome = append(binary.BigEndian.AppendUint16(outcome, uint16(len(v.Tags[k]))), v.Tags[k]...)
	}
	outcome = append(outcome, byte(len(v.Capabilities)))
	for _, c := range v.Capabilities {
		outcome = append(binary.BigEndian.AppendUint16(outcome, uint16(len(c))), c...)
	}
	if v.PluginPrivate == "" {
		if want := hex.EncodeToString(append([]byte{4}, outcome...)); want != v.Accept {
			t.Errorf("accept: spec gives %s, vector has %s", want, v.Accept)
		}
		return
	}

	th2, s2pKey, p2sKey := independentKeys(t, &v)
	s2p, _ := chacha20poly1305.New(s2pKey)
	p2s, _ := chacha20poly1305.New(p2sKey)
	n0, n1 := make([]byte, 12), make([]byte, 12)
	n1[4] = 1
	eph, _ := ecdh.X25519().NewPrivateKey(unhex(t, v.ServerEphemeralPrivate))
	chal := append([]byte{2}, eph.PublicKey().Bytes()...)
	chal = s2p.Seal(chal, n0, unhex(t, v.Challenge), th2)
	if hex.EncodeToString(chal) != v.ChallengeMessage {
		t.Errorf("challenge: spec gives %x, vector has %s", chal, v.ChallengeMessage)
	}
	th3 := sha256.Sum256(append(th2, chal...))
	proof := sha256.Sum256(unhex(t, v.Challenge))
	resp := p2s.Seal([]byte{3}, n0, proof[:], th3[:])
	if hex.EncodeToString(resp) != v.Response {
		t.Errorf("response: spec gives %x, vector has %s", resp, v.Response)
	}
	th4 := sha256.Sum256(append(th3[:], resp...))
	acc := s2p.Seal([]byte{4}, n1, outcome, th4[:])
	if hex.EncodeToString(acc) != v.Accept {
		t.Errorf("accept: spec gives %x, vector has %s", acc, v.Accept)
	}
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	for i := range ks {
		for j := i + 1; j < len(ks); j++ {
			if ks[j] < ks[i] {
				ks[i], ks[j] = ks[j], ks[i]
			}
		}
	}
	return ks
}
