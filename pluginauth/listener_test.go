package pluginauth

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func listenUnix(t *testing.T) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "nri.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return ln, path
}

// A peer that stalls (silent, or mid-frame) is dropped at the deadline with
// a logged reason, and meanwhile another plugin completes and is accepted.
func TestStalledPeerDoesNotBlockOthers(t *testing.T) {
	k := mustKey(t)
	logs := &logBuffer{}
	cfg := DefaultServerConfig()
	const timeout = 400 * time.Millisecond
	cfg.HandshakeTimeout = Duration(timeout)
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"good"}, []string{"*"}, k)}
	s := newTestServer(t, cfg, WithLogger(logs.logger()))
	inner, path := listenUnix(t)
	l := s.Listen(inner)
	defer l.Close()

	silent, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	midFrame, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer midFrame.Close()
	if _, err := midFrame.Write([]byte{0, 100, 1, 't'}); err != nil { // announces 100 bytes, sends 2
		t.Fatal(err)
	}
	start := time.Now()

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Errorf("Accept: %v", err)
			close(accepted)
			return
		}
		accepted <- c
	}()
	pc, err := Dial(context.Background(), path, k, "good", "10")
	if err != nil {
		t.Fatalf("Dial while two peers stall: %v", err)
	}
	defer pc.Close()
	if elapsed := time.Since(start); elapsed >= timeout {
		t.Errorf("good plugin took %v, not less than the stall timeout %v: it was blocked", elapsed, timeout)
	}
	c := <-accepted
	if c == nil {
		t.FailNow()
	}
	defer c.Close()
	id, ok := IdentityOf(c)
	if !ok || id.Name != "good" || !id.PublicKey.Equal(k.Public()) {
		t.Fatalf("accepted conn identity = %+v, %v", id, ok)
	}

	// The authenticated conns carry bytes both ways with no leftovers.
	go func() { _, _ = pc.Write([]byte("ping")) }()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("after handshake read %q, %v", buf, err)
	}

	// The stalled peers are dropped once the deadline passes.
	for _, sc := range []net.Conn{silent, midFrame} {
		_ = sc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(sc); err != nil {
			t.Errorf("stalled peer was not dropped: %v", err)
		}
	}
	if d := time.Since(start); d < timeout {
		t.Errorf("stalled peers dropped after %v, before the timeout %v", d, timeout)
	}
	deadline := time.Now().Add(2 * time.Second)
	for strings.Count(logs.String(), "handshake refused") < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := logs.String(); strings.Count(got, "timeout") < 2 {
		t.Errorf("want two logged timeouts, log:\n%s", got)
	}
}

func TestListenerAcceptsOnlyAuthenticated(t *testing.T) {
	k, stranger := mustKey(t), mustKey(t)
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"*"}, []string{"*"}, k)}
	s := newTestServer(t, cfg)
	inner, path := listenUnix(t)
	l := s.Listen(inner)

	if _, err := Dial(context.Background(), path, stranger, "x", "10"); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("stranger Dial = %v, want unknown key", err)
	}
	pc, err := Dial(context.Background(), path, k, "x", "10")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if pc.Outcome().Role != "a" {
		t.Errorf("outcome %+v", pc.Outcome())
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := IdentityOf(c); !id.PublicKey.Equal(k.Public()) {
		t.Errorf("first accepted conn is not the authenticated plugin: %+v", id)
	}
	c.Close()

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
	}
}

func TestDialContextCancel(t *testing.T) {
	k := mustKey(t)
	inner, path := listenUnix(t)
	defer inner.Close()
	go func() { // a server that accepts and never answers
		c, err := inner.Accept()
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Dial(ctx, path, k, "p", "10")
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("Dial against a silent server: %v after %v", err, time.Since(start))
	}
}
