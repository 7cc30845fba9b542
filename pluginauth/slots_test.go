package pluginauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestPendingByUID(t *testing.T) {
	p := newPendingByUID(2)
	for i := range 2 {
		if !p.acquire(1000) {
			t.Fatalf("uid 1000 could not take slot %d of 2", i+1)
		}
	}
	if p.acquire(1000) {
		t.Fatal("uid 1000 took a third slot")
	}
	if !p.acquire(0) {
		t.Fatal("uid 0 was refused because of uid 1000")
	}
	p.release(1000)
	if !p.acquire(1000) {
		t.Fatal("a released slot was not reusable")
	}
	p.release(1000)
	p.release(1000)
	p.release(0)
	if len(p.n) != 0 {
		t.Fatalf("counts left after every release: %v", p.n)
	}
}

// refusals collects what the refusal hook reports.
type refusals struct {
	mu sync.Mutex
	r  []Refusal
}

func (r *refusals) hook(_ context.Context, x Refusal) {
	r.mu.Lock()
	r.r = append(r.r, x)
	r.mu.Unlock()
}

// wait returns the first refusal whose reason contains s.
func (r *refusals) wait(t *testing.T, s string) Refusal {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for _, x := range r.r {
			if strings.Contains(x.Reason, s) {
				r.mu.Unlock()
				return x
			}
		}
		r.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no refusal with %q", s)
	return Refusal{}
}

// closedByServer reports whether the server closed c (rather than the
// read timing out after wait).
func closedByServer(c net.Conn, wait time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	_, err := io.ReadAll(c)
	return err == nil || !errors.Is(err, os.ErrDeadlineExceeded)
}

// dialAs connects to path from a thread running as uid: Linux records the
// connecting thread's credentials (SO_PEERCRED). The thread stays locked
// and is discarded when the goroutine ends.
func dialAs(t testing.TB, path string, uid, gid int, n int) []net.Conn {
	t.Helper()
	type res struct {
		c   []net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
			ch <- res{err: e}
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
			ch <- res{err: e}
			return
		}
		var out []net.Conn
		for range n {
			c, err := net.Dial("unix", path)
			if err != nil {
				ch <- res{out, err}
				return
			}
			out = append(out, c)
		}
		ch <- res{c: out}
	}()
	r := <-ch
	for _, c := range r.c {
		t.Cleanup(func() { c.Close() })
	}
	if r.err != nil {
		t.Fatalf("dial as uid %d: %v", uid, r.err)
	}
	return r.c
}

// worldSocket listens on a socket any uid may connect to.
func worldSocket(t testing.TB) (net.Listener, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "pluginauth")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	return ln, path
}

// TestSilentPeersOfOneUIDDoNotBlockAnother: peers of one uid that connect
// and say nothing hold at most max_pending_handshakes_per_uid slots, so a
// plugin of another uid finds a free one although there are more silent
// peers than slots. The handshake timeouts are far longer than the test
// waits: without the per-uid bound, the plugin could not get a slot.
func TestSilentPeersOfOneUIDDoNotBlockAnother(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as another uid")
	}
	k := mustKey(t)
	rf := &refusals{}
	cfg := DefaultServerConfig()
	cfg.HandshakeTimeout = Duration(time.Minute)
	cfg.FirstFrameTimeout = Duration(time.Minute)
	cfg.MaxPendingHandshakes = 4
	cfg.MaxPendingHandshakesPerUID = 2
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"good"}, []string{"*"}, k)}
	s := newTestServer(t, cfg, WithRefusalHook(rf.hook))
	inner, path := worldSocket(t)
	l := s.Listen(inner)
	defer l.Close()

	silent := dialAs(t, path, 65534, 65534, 10)
	// The silent peers are in the listener's backlog before the plugin.
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := Dial(ctx, path, k, "good", "10")
	if err != nil {
		t.Fatalf("plugin of uid 0 with silent peers of uid 65534 around: %v", err)
	}
	pc.Close()
	r := rf.wait(t, "max_pending_handshakes_per_uid")
	if r.Peer == nil || r.Peer.UID != 65534 {
		t.Fatalf("refusal without the peer's uid: %+v", r)
	}
	closed := 0
	for _, c := range silent {
		if closedByServer(c, 200*time.Millisecond) {
			closed++
		}
	}
	if closed != 8 {
		t.Fatalf("%d of 10 silent peers closed at once, want the 8 over the per-uid limit", closed)
	}
}

func TestFirstFrameTimeout(t *testing.T) {
	rf := &refusals{}
	cfg := DefaultServerConfig()
	cfg.HandshakeTimeout = Duration(time.Minute)
	cfg.FirstFrameTimeout = Duration(100 * time.Millisecond)
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"*"}, []string{"*"}, mustKey(t))}
	s := newTestServer(t, cfg, WithRefusalHook(rf.hook))
	inner, path := listenUnix(t)
	l := s.Listen(inner)
	defer l.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !closedByServer(c, 20*time.Second) {
		t.Fatal("a silent peer was not dropped at the first-frame timeout")
	}
	r := rf.wait(t, "first-frame timeout")
	if r.Peer == nil || r.Peer.UID != uint32(os.Geteuid()) {
		t.Fatalf("refusal peer %+v, want uid %d", r.Peer, os.Geteuid())
	}
}

func TestPeerAllowList(t *testing.T) {
	k := mustKey(t)
	me := uint32(os.Geteuid())
	for name, tc := range map[string]struct {
		uids, gids []uint32
		ok         bool
	}{
		"uid listed":     {uids: []uint32{me}, ok: true},
		"gid listed":     {uids: []uint32{me + 1}, gids: []uint32{uint32(os.Getegid())}, ok: true},
		"neither listed": {uids: []uint32{me + 1}, gids: []uint32{uint32(os.Getegid()) + 1}},
		"no lists":       {ok: true},
	} {
		t.Run(name, func(t *testing.T) {
			rf := &refusals{}
			cfg := DefaultServerConfig()
			cfg.AllowedPeerUIDs, cfg.AllowedPeerGIDs = tc.uids, tc.gids
			cfg.Roles = []RoleConfig{roleCfg("a", []string{"*"}, []string{"*"}, k)}
			s := newTestServer(t, cfg, WithRefusalHook(rf.hook))
			inner, path := listenUnix(t)
			l := s.Listen(inner)
			defer l.Close()
			go func() {
				if c, err := l.Accept(); err == nil {
					c.Close()
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			pc, err := Dial(ctx, path, k, "p", "10")
			if (err == nil) != tc.ok {
				t.Fatalf("Dial: %v, want ok=%v", err, tc.ok)
			}
			if err == nil {
				pc.Close()
				return
			}
			rf.wait(t, "neither allowed_peer_uids nor allowed_peer_gids")
		})
	}
}

func TestHandshakeRefusalHook(t *testing.T) {
	k, stranger := mustKey(t), mustKey(t)
	rf := &refusals{}
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"good"}, []string{"*"}, k)}
	s := newTestServer(t, cfg, WithRefusalHook(rf.hook))
	inner, path := listenUnix(t)
	l := s.Listen(inner)
	defer l.Close()
	if _, err := Dial(context.Background(), path, stranger, "x", "10"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("stranger: %v", err)
	}
	r := rf.wait(t, "is in no role")
	if r.Plugin != "10-x" || r.Key != stranger.Public().Fingerprint() || r.Role != "" || r.Code != CodeUnknownKey {
		t.Fatalf("refusal %+v", r)
	}
	if _, err := Dial(context.Background(), path, k, "bad", "10"); !errors.Is(err, ErrNameNotAllowed) {
		t.Fatalf("wrong name: %v", err)
	}
	if r := rf.wait(t, "may not claim"); r.Role != "a" || r.Plugin != "10-bad" {
		t.Fatalf("refusal %+v", r)
	}
}

// BenchmarkDialWithSilentPeers measures a plugin's connection through the
// Listener (handshake and Accept) with 136 silent peers of another uid
// connected first, against none: the review saw 136 such peers delay a
// plugin by 4.8s.
func BenchmarkDialWithSilentPeers(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root to connect as another uid")
	}
	for _, silent := range []int{0, 136} {
		b.Run(fmt.Sprintf("silent=%d", silent), func(b *testing.B) {
			k := mustKey(b)
			cfg := DefaultServerConfig()
			cfg.Roles = []RoleConfig{roleCfg("a", []string{"*"}, []string{"*"}, k)}
			s := newTestServer(b, cfg, WithRefusalHook(func(context.Context, Refusal) {}))
			inner, path := worldSocket(b)
			l := s.Listen(inner)
			defer l.Close()
			if silent > 0 {
				dialAs(b, path, 65534, 65534, silent)
			}
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			ctx := context.Background()
			b.ResetTimer()
			for range b.N {
				pc, err := Dial(ctx, path, k, "p", "10")
				if err != nil {
					b.Fatal(err)
				}
				pc.Close()
			}
		})
	}
}
