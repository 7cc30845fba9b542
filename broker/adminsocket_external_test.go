package broker_test

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/internal/syncbuf"
)

// serveSocket serves h's admin socket in dir until the test ends.
func serveSocket(t *testing.T, h *harness) string {
	t.Helper()
	// A short path: unix socket names are limited to 108 bytes.
	base, err := os.MkdirTemp("", "tg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	path := filepath.Join(base, "run", "admin.sock")
	ln, err := broker.ListenAdminSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.srv.ServeAdminSocket(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return path
}

// The admin socket admits its callers with no token; it is 0600 in a 0700
// directory, and serves nothing but the admin API.
func TestAdminSocketNeedsNoToken(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	path := serveSocket(t, h)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("socket mode %v, want 0600", m)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v, want 0700", di.Mode().Perm())
	}
	ctx := context.Background()
	ac := &broker.AdminClient{Socket: path}
	jt, err := ac.CreateJoinToken(ctx, broker.JoinTokenRequest{TTL: 60})
	if err != nil {
		t.Fatalf("join token over the socket: %v", err)
	}
	if jt.Token == "" {
		t.Fatal("no join token")
	}
	if _, err := ac.ListEntries(ctx, "", ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ac.GetPolicy(ctx); err != nil {
		t.Fatal(err)
	}
	// The same request over TCP with no token is refused.
	tcp := &broker.AdminClient{Server: h.http.URL, HTTP: h.http.Client()}
	if _, err := tcp.ListEntries(ctx, "", ""); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("tcp without token: %v", err)
	}
	// Nothing but the admin API is served on the socket.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	resp, err := hc.Post("http://admin.sock/kbs/v0/auth", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("/kbs/v0/auth on the admin socket: %d, want 404", resp.StatusCode)
	}
}

// A stale socket is replaced; any other file in the way is an error.
func TestAdminSocketPathInTheWay(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.sock")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := broker.ListenAdminSocket(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file at the socket path: %v", err)
	}
	os.Remove(path)
	ln, err := broker.ListenAdminSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	// A socket left by a crash (the listener does not unlink it).
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln, err = broker.ListenAdminSocket(path)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	ln.Close()
}

const filePolicyA = `package policy

default allow := false

reason := "A"
`

const filePolicyB = `package policy

default allow := false

reason := "B"
`

// The policy file is put in force at start; a good change is applied, a
// broken change is logged with file:line:col and the old policy stays;
// the admin API may not set the policy meanwhile.
func TestPolicyFileHotReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.rego")
	if err := os.WriteFile(file, []byte(filePolicyA), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	h := newHarness(t, harnessOpts{policyFile: file, log: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.srv.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	ac := &broker.AdminClient{Server: h.http.URL, Token: h.adminToken(t), HTTP: h.http.Client()}
	waitPolicy := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			text, _, err := ac.GetPolicy(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if text == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("policy in force:\n%s\nwant:\n%s", text, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitPolicy(filePolicyA)

	// A good change.
	writeFile := func(text string) {
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(filePolicyB)
	waitPolicy(filePolicyB)

	// A broken change: logged with its line and column; B stays.
	writeFile("package policy\n\nallow if {\n  input.method ==\n}\n")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), file+":") {
		if time.Now().After(deadline) {
			t.Fatalf("no file:line:col in the log:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), file+":5:1") && !strings.Contains(logs.String(), file+":4:") {
		t.Errorf("log does not name the broken line:\n%s", logs.String())
	}
	waitPolicy(filePolicyB)

	// The file is the source of truth: the API may not set the policy.
	if _, err := ac.SetPolicy(ctx, filePolicyA); err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("SetPolicy with a policy file: %v", err)
	}
}

// A policy file that does not compile stops the start, naming
// file:line:col.
func TestPolicyFileBrokenAtStart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policy.rego")
	if err := os.WriteFile(file, []byte("package policy\n\nallow if {\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := broker.LoadPolicyFile(context.Background(), file)
	if err == nil || !strings.Contains(err.Error(), file+":") {
		t.Fatalf("broken policy file: %v", err)
	}
	_, err = broker.LoadPolicyFile(context.Background(), file+".missing")
	if err == nil || !strings.Contains(err.Error(), file+".missing") {
		t.Fatalf("missing policy file: %v", err)
	}
}
