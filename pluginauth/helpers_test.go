package pluginauth

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// withRand makes a client read its randomness from r (test vectors).
func withRand(r io.Reader) DialOption {
	return func(o *dialOptions) { o.rand = r }
}

// socketPair returns the two ends of a real AF_UNIX stream socket pair.
func socketPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("socketpair: %v", err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			tb.Fatalf("FileConn: %v", err)
		}
		return c
	}
	a, b := conn(fds[0]), conn(fds[1])
	tb.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func mustKey(tb testing.TB) *PrivateKey {
	tb.Helper()
	k, err := GenerateKey()
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// logBuffer is a concurrency-safe sink for a test logger.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// roleCfg is a role with the given keys allowed to claim names/indices.
func roleCfg(name string, names, indices []string, keys ...*PrivateKey) RoleConfig {
	r := RoleConfig{Role: name, Names: names, Indices: indices,
		Tags: map[string]string{"team": name}, Capabilities: []string{"cap-" + name}}
	for _, k := range keys {
		r.Keys = append(r.Keys, k.Public().String())
	}
	return r
}

func newTestServer(tb testing.TB, cfg ServerConfig, opts ...ServerOption) *Server {
	tb.Helper()
	s, err := NewServer(cfg, opts...)
	if err != nil {
		tb.Fatalf("NewServer: %v", err)
	}
	return s
}

type result struct {
	id     *Identity
	out    *Outcome
	srvErr error
	cliErr error
}

// handshakePair runs both sides over a socket pair.
func handshakePair(tb testing.TB, s *Server, key *PrivateKey, name, index string, opts ...DialOption) result {
	tb.Helper()
	sc, cc := socketPair(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var r result
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.id, r.srvErr = s.Handshake(ctx, sc)
		if r.srvErr != nil {
			sc.Close()
		}
	}()
	r.out, r.cliErr = ClientHandshake(ctx, cc, key, name, index, opts...)
	<-done
	return r
}
