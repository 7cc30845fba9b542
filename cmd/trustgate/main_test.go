package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/internal/syncbuf"
	"github.com/trustgate/trustgate/pluginauth"
)

// TestMain lets the test binary run as the trustgate command itself, so that
// tests can start it as a real process and signal it.
func TestMain(m *testing.M) {
	if os.Getenv("TRUSTGATE_RUN_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func command(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "TRUSTGATE_RUN_MAIN=1")
	return cmd
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"version"}, &out, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !strings.HasPrefix(out.String(), "trustgate ") {
		t.Fatalf("version output %q", out.String())
	}
}

func TestPrintDefaultConfigRoundTrips(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"server", "--print-default-config"}, &out, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var c broker.Config
	if err := config.Decode(out.Bytes(), &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "# ") {
		t.Fatal("default config has no comments")
	}
}

func TestServerConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("listen = \"127.0.0.1:0\"\nlisten_adress = \"x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	if code := run([]string{"server", "--config", bad}, io.Discard, &errb); code == 0 || !strings.Contains(errb.String(), `"listen_adress"`) || !strings.Contains(errb.String(), "line 2") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"server"}, io.Discard, &errb); code == 0 || !strings.Contains(errb.String(), "--dev") {
		t.Fatalf("no config: exit %d, stderr %q", code, errb.String())
	}
}

func TestKeygen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "plugin.key")
	var out bytes.Buffer
	if code := run([]string{"keygen", path}, &out, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	pub, err := pluginauth.ParsePublicKey(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("printed public key %q: %v", out.String(), err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi, err)
	}
	k, err := pluginauth.LoadPrivateKeyFile(path)
	if err != nil || !k.Public().Equal(pub) {
		t.Fatalf("key file does not hold the printed key: %v", err)
	}
	var errb bytes.Buffer
	if code := run([]string{"keygen", path}, io.Discard, &errb); code == 0 {
		t.Fatal("keygen overwrote an existing key")
	}
	if again, _ := pluginauth.LoadPrivateKeyFile(path); !again.Public().Equal(pub) {
		t.Fatal("existing key changed")
	}
}

// TestServerDevServesAndStopsOnSIGTERM runs `trustgate server --dev` as a
// real process, checks that the address it prints answers, then sends
// SIGTERM and expects a clean exit well within the shutdown grace.
func TestServerDevServesAndStopsOnSIGTERM(t *testing.T) {
	cmd := command("server", "--dev", "--listen", "127.0.0.1:0", "--dev-agent-listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--log-format", "json")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	var api string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "API:" {
			api = f[1]
			break
		}
	}
	if api == "" {
		t.Fatalf("no API address printed; stderr: %s", stderr.String())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	resp, err := http.Get(api + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"ok"`) {
		t.Fatalf("healthz: %d %s", resp.StatusCode, body)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v; stderr: %s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop within 10s of SIGTERM")
	}
	if !strings.Contains(stderr.String(), `"msg":"stopped"`) {
		t.Fatalf("no JSON 'stopped' log record: %s", stderr.String())
	}
}

func TestNRIGatewayConfigErrorsAndSIGTERM(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("socket = \"/run/x.sock\"\nrequire_authentification = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	if code := run([]string{"nri-gateway", "--config", bad}, io.Discard, &errb); code == 0 || !strings.Contains(errb.String(), "require_authentification") || !strings.Contains(errb.String(), "line 2") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	var out bytes.Buffer
	if code := run([]string{"nri-gateway", "--print-default-config"}, &out, io.Discard); code != 0 || !strings.Contains(out.String(), "upstream_socket") {
		t.Fatalf("default config: exit %d", code)
	}
	// A gateway whose runtime is not there keeps retrying; SIGTERM stops it.
	good := filepath.Join(dir, "gw.toml")
	cfg := fmt.Sprintf("upstream_socket = %q\nsocket = %q\nstate_dir = %q\n", filepath.Join(dir, "none.sock"), filepath.Join(dir, "gw.sock"), filepath.Join(dir, "state"))
	if err := os.WriteFile(good, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := command("nri-gateway", "--config", good, "--log-format", "json")
	stderr := &syncbuf.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// SIGTERM once it is running: its first retry is logged.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(stderr.String(), "cannot connect to the runtime"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("no retry record: %s", stderr.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v; stderr: %s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("nri-gateway did not stop within 10s of SIGTERM")
	}
	if !strings.Contains(stderr.String(), "cannot connect to the runtime") {
		t.Fatalf("no retry record: %s", stderr.String())
	}
}
