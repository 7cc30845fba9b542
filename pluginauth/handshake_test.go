package pluginauth

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestHandshakeGrantsRole(t *testing.T) {
	k := mustKey(t)
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{roleCfg("logger", []string{"logger", "log-*"}, []string{"1?"}, k)}
	s := newTestServer(t, cfg)

	r := handshakePair(t, s, k, "log-audit", "15")
	if r.srvErr != nil || r.cliErr != nil {
		t.Fatalf("handshake failed: server %v, plugin %v", r.srvErr, r.cliErr)
	}
	want := Outcome{Role: "logger", Tags: map[string]string{"team": "logger"}, Capabilities: []string{"cap-logger"}}
	if !reflect.DeepEqual(*r.out, want) {
		t.Errorf("plugin outcome = %+v, want %+v", *r.out, want)
	}
	if got := r.id.Outcome(); !reflect.DeepEqual(got, want) {
		t.Errorf("identity outcome = %+v, want %+v", got, want)
	}
	if !r.id.PublicKey.Equal(k.Public()) || !r.id.Authenticated() {
		t.Errorf("identity key = %s, want %s", r.id.PublicKey, k.Public())
	}
	if r.id.Name != "log-audit" || r.id.Index != "15" {
		t.Errorf("identity claims %s-%s, want 15-log-audit", r.id.Index, r.id.Name)
	}
	if !strings.HasPrefix(r.id.Fingerprint(), "SHA256:") {
		t.Errorf("fingerprint %q", r.id.Fingerprint())
	}
	for _, c := range []struct {
		name, index string
		ok          bool
	}{
		{"log-audit", "15", true},
		{"logger", "15", false}, // allowed by the role, but not what it claimed
		{"log-audit", "16", false},
		{"admin", "15", false},
	} {
		if got := r.id.MayRegister(c.name, c.index); got != c.ok {
			t.Errorf("MayRegister(%q, %q) = %v, want %v", c.name, c.index, got, c.ok)
		}
	}
}

func TestUnknownKeyRefused(t *testing.T) {
	known, stranger := mustKey(t), mustKey(t)
	cfg := DefaultServerConfig()
	cfg.RequireAuthentication = false
	cfg.Roles = []RoleConfig{
		roleCfg("a", []string{"*"}, []string{"*"}, known),
		{Role: DefaultRole, Names: []string{"*"}, Indices: []string{"*"}},
	}
	s := newTestServer(t, cfg)
	r := handshakePair(t, s, stranger, "p", "10")
	if !errors.Is(r.srvErr, ErrUnknownKey) {
		t.Errorf("server error = %v, want unknown key", r.srvErr)
	}
	var pe *Error
	if !errors.As(r.cliErr, &pe) || !pe.Remote || pe.Code != CodeUnknownKey {
		t.Errorf("plugin error = %v, want a remote unknown-key rejection (never a downgrade to the default role)", r.cliErr)
	}
	if r.out != nil {
		t.Errorf("unknown key got outcome %+v", r.out)
	}
}

// An attacker who knows a configured public key but not its private key
// cannot open the challenge, so it cannot produce the proof.
func TestWrongPrivateKeyRefused(t *testing.T) {
	victim, attacker := mustKey(t), mustKey(t)
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"*"}, []string{"*"}, victim)}
	s := newTestServer(t, cfg)

	for _, strategy := range []string{"random proof", "proof under attacker key"} {
		t.Run(strategy, func(t *testing.T) {
			sc, cc := socketPair(t)
			errc := make(chan error, 1)
			go func() { _, err := s.Handshake(context.Background(), sc); errc <- err }()
			h := hello{version: Version, algorithm: AlgorithmECDH, publicKey: victim.Public().Bytes(), name: "p", index: "10"}
			helloBody := h.encode()
			mustWriteFrame(t, cc, helloBody)
			body, err := readFrame(cc)
			if err != nil {
				t.Fatal(err)
			}
			msg, err := decodeChallenge(body)
			if err != nil {
				t.Fatal(err)
			}
			var resp response
			if strategy == "random proof" {
				_, _ = rand.Read(resp.sealed[:])
			} else {
				dh, err := attacker.ecdh(msg.ephemeral[:])
				if err != nil {
					t.Fatal(err)
				}
				th := transcriptAfterChallenge(helloBody, msg.ephemeral[:], nil)
				keys, err := deriveKeys(dh, nil, th)
				if err != nil {
					t.Fatal(err)
				}
				var chal [32]byte // cannot be opened; the attacker guesses zeros
				p := proofOf(chal[:])
				th3 := chain(th, body)
				keys.pluginToServer.Seal(resp.sealed[:0], nonce(nonceProof), p[:], th3[:])
			}
			mustWriteFrame(t, cc, resp.encode())
			if err := <-errc; !errors.Is(err, ErrProofFailed) {
				t.Errorf("server error = %v, want proof failed", err)
			}
			rej := readReject(t, cc)
			if rej.Code != CodeProofFailed {
				t.Errorf("plugin saw %v, want proof failed", rej)
			}
		})
	}
}

func TestNameNotOwnedRefused(t *testing.T) {
	k := mustKey(t)
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{roleCfg("logger", []string{"logger"}, []string{"10", "2?"}, k)}
	s := newTestServer(t, cfg)
	for _, c := range []struct{ name, index string }{
		{"admin", "10"},   // name it does not own
		{"logger", "30"},  // index it does not own
		{"logger2", "20"}, // glob must match the whole name
	} {
		r := handshakePair(t, s, k, c.name, c.index)
		if !errors.Is(r.srvErr, ErrNameNotAllowed) || !errors.Is(r.cliErr, ErrNameNotAllowed) {
			t.Errorf("%s-%s: server %v, plugin %v; want name not allowed on both", c.index, c.name, r.srvErr, r.cliErr)
		}
	}
	if r := handshakePair(t, s, k, "logger", "21"); r.srvErr != nil || r.cliErr != nil {
		t.Errorf("owned claim refused: %v / %v", r.srvErr, r.cliErr)
	}
}

func TestKeylessHello(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{{Role: DefaultRole, Names: []string{"legacy"}, Indices: []string{"*"}, Capabilities: []string{"read-only"}}}

	required := newTestServer(t, cfg)
	r := handshakePair(t, required, nil, "legacy", "10")
	if !errors.Is(r.srvErr, ErrAuthenticationRequired) || !errors.Is(r.cliErr, ErrAuthenticationRequired) {
		t.Errorf("require_authentication=true: server %v, plugin %v", r.srvErr, r.cliErr)
	}

	cfg.RequireAuthentication = false
	open := newTestServer(t, cfg)
	r = handshakePair(t, open, nil, "legacy", "10")
	if r.srvErr != nil || r.cliErr != nil {
		t.Fatalf("keyless plugin refused: %v / %v", r.srvErr, r.cliErr)
	}
	if r.id.Authenticated() || r.id.Role != DefaultRole || r.out.Role != DefaultRole || r.out.Capabilities[0] != "read-only" {
		t.Errorf("keyless identity %+v, outcome %+v", r.id, r.out)
	}
	if r := handshakePair(t, open, nil, "other", "10"); !errors.Is(r.srvErr, ErrNameNotAllowed) {
		t.Errorf("keyless plugin claimed a name the default role does not allow: %v", r.srvErr)
	}
}

func TestMutual(t *testing.T) {
	plugin, serverKey, impostor := mustKey(t), mustKey(t), mustKey(t)
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"*"}, []string{"*"}, plugin)}
	logs := &logBuffer{}

	genuine := newTestServer(t, cfg, WithStaticKey(serverKey))
	if r := handshakePair(t, genuine, plugin, "p", "10", WithServerKey(serverKey.Public())); r.srvErr != nil || r.cliErr != nil {
		t.Fatalf("mutual handshake with the pinned server failed: %v / %v", r.srvErr, r.cliErr)
	}

	wrong := newTestServer(t, cfg, WithStaticKey(impostor), WithLogger(logs.logger()))
	r := handshakePair(t, wrong, plugin, "p", "10", WithServerKey(serverKey.Public()))
	if !errors.Is(r.cliErr, ErrServerProofFailed) {
		t.Errorf("plugin error = %v, want server proof failed", r.cliErr)
	}
	if r.srvErr == nil || r.out != nil {
		t.Errorf("server with the wrong key completed: %v", r.srvErr)
	}
	if !strings.Contains(logs.String(), "server failed to prove its key") {
		t.Errorf("server log does not say why:\n%s", logs)
	}

	keyless := newTestServer(t, cfg)
	r = handshakePair(t, keyless, plugin, "p", "10", WithServerKey(serverKey.Public()))
	if !errors.Is(r.cliErr, ErrMutualUnavailable) || !errors.Is(r.srvErr, ErrMutualUnavailable) {
		t.Errorf("server without static key: %v / %v", r.srvErr, r.cliErr)
	}
}

// recorder keeps a copy of everything written to a connection.
type recorder struct {
	net.Conn
	buf bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.buf.Write(p)
	return r.Conn.Write(p)
}

func TestReplayRefused(t *testing.T) {
	k := mustKey(t)
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"*"}, []string{"*"}, k)}
	s := newTestServer(t, cfg)

	// Record a genuine handshake from the plugin's side.
	sc, cc := socketPair(t)
	rec := &recorder{Conn: cc}
	errc := make(chan error, 1)
	go func() { _, err := s.Handshake(context.Background(), sc); errc <- err }()
	if _, err := ClientHandshake(context.Background(), rec, k, "p", "10"); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	// Replay the plugin's bytes verbatim to a fresh connection.
	sc2, cc2 := socketPair(t)
	go func() { _, err := s.Handshake(context.Background(), sc2); errc <- err }()
	if _, err := cc2.Write(rec.buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrProofFailed) {
		t.Fatalf("replayed handshake: server error = %v, want proof failed", err)
	}
}

// An active attacker that rewrites the claimed index in transit breaks the
// transcript, so the handshake fails even though the key is genuine.
func TestTamperedHelloFails(t *testing.T) {
	k := mustKey(t)
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"*"}, []string{"*"}, k)}
	s := newTestServer(t, cfg)
	sc, mitmServerSide := socketPair(t)
	mitmPluginSide, cc := socketPair(t)
	go func() {
		body, err := readFrame(mitmPluginSide)
		if err != nil {
			return
		}
		body[len(body)-1] = '9' // index "10" -> "19"
		_ = writeFrame(mitmServerSide, body)
		go func() { _, _ = io.Copy(mitmServerSide, mitmPluginSide) }()
		_, _ = io.Copy(mitmPluginSide, mitmServerSide)
	}()
	errc := make(chan error, 1)
	go func() { _, err := s.Handshake(context.Background(), sc); errc <- err; sc.Close() }()
	_, cliErr := ClientHandshake(context.Background(), cc, k, "p", "10", WithHandshakeTimeout(2*time.Second))
	cc.Close()
	if cliErr == nil {
		t.Fatal("plugin accepted a handshake whose hello was altered")
	}
	if err := <-errc; err == nil {
		t.Fatal("server accepted a handshake whose hello was altered")
	}
}

func TestVersionAndAlgorithmRefused(t *testing.T) {
	k := mustKey(t)
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"*"}, []string{"*"}, k)}
	s := newTestServer(t, cfg)
	for _, c := range []struct {
		name string
		h    hello
		want *Error
	}{
		{"version 0", hello{version: 0, algorithm: AlgorithmECDH, publicKey: k.Public().Bytes()}, ErrUnsupportedVersion},
		{"version 2", hello{version: 2, algorithm: AlgorithmECDH, publicKey: k.Public().Bytes()}, ErrUnsupportedVersion},
		{"unknown algorithm", hello{version: Version, algorithm: "ecdh+aes+sha1", publicKey: k.Public().Bytes()}, ErrUnknownAlgorithm},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.h.name, c.h.index = "p", "10"
			sc, cc := socketPair(t)
			errc := make(chan error, 1)
			go func() { _, err := s.Handshake(context.Background(), sc); errc <- err }()
			mustWriteFrame(t, cc, c.h.encode())
			if err := <-errc; !errors.Is(err, c.want) {
				t.Errorf("server error = %v, want %v", err, c.want)
			}
			if rej := readReject(t, cc); rej.Code != c.want.Code || rej.Reason == "" {
				t.Errorf("plugin got %v, want a %v rejection with a reason", rej, c.want.Code)
			}
		})
	}
}

func TestBadFramesRefused(t *testing.T) {
	k := mustKey(t)
	cfg := DefaultServerConfig()
	cfg.HandshakeTimeout = Duration(2 * time.Second)
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"*"}, []string{"*"}, k)}
	s := newTestServer(t, cfg)
	valid := (&hello{version: Version, algorithm: AlgorithmECDH, publicKey: k.Public().Bytes(), name: "p", index: "10"}).encode()
	for _, c := range []struct {
		name  string
		bytes []byte
		want  string
	}{
		{"oversized frame", []byte{0xff, 0xff, 1, 2, 3}, "exceeds the maximum"},
		{"just over the maximum", []byte{byte((MaxFrameSize + 1) >> 8), byte((MaxFrameSize + 1) & 0xff)}, "exceeds the maximum"},
		{"empty frame", []byte{0, 0}, "empty frame"},
		{"truncated body", append([]byte{0, byte(len(valid))}, valid[:len(valid)-5]...), "truncated frame"},
		{"truncated header", []byte{0}, "truncated frame header"},
		{"hello cut short inside", append([]byte{0, byte(len(valid) - 5)}, valid[:len(valid)-5]...), "truncated"},
		{"plain NRI ttrpc", []byte{0, 0, 0, 12, 0, 0, 0, 1, 1, 0}, "empty frame"},
		{"wrong magic", append([]byte{0, byte(len(valid))}, append([]byte{1, 'x'}, valid[2:]...)...), "bad magic"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sc, cc := socketPair(t)
			errc := make(chan error, 1)
			go func() { _, err := s.Handshake(context.Background(), sc); errc <- err }()
			if _, err := cc.Write(c.bytes); err != nil {
				t.Fatal(err)
			}
			_ = cc.(*net.UnixConn).CloseWrite()
			err := <-errc
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("server error = %v, want malformed %q", err, c.want)
			}
			if rej := readReject(t, cc); rej.Code != CodeMalformed {
				t.Errorf("plugin got %v, want malformed", rej)
			}
		})
	}
}

func mustWriteFrame(tb testing.TB, c net.Conn, body []byte) {
	tb.Helper()
	if err := writeFrame(c, body); err != nil {
		tb.Fatal(err)
	}
}

func readReject(tb testing.TB, c net.Conn) *Error {
	tb.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	body, err := readFrame(c)
	if err != nil {
		tb.Fatalf("read reject: %v", err)
	}
	rej, err := decodeReject(body)
	if err != nil {
		tb.Fatalf("decode reject: %v", err)
	}
	return rej
}
