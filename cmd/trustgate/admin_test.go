package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runOK runs the command line in-process and returns its stdout.
func runOK(t testing.TB, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("trustgate %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
	}
	return out.String()
}

// runFail runs the command line in-process, expects it to fail, and
// returns its stderr.
func runFail(t *testing.T, args ...string) string {
	t.Helper()
	var errb bytes.Buffer
	if code := run(args, io.Discard, &errb); code == 0 {
		t.Fatalf("trustgate %s succeeded", strings.Join(args, " "))
	}
	return errb.String()
}

// prodConfig writes a non-dev configuration into dir, as an operator does
// from --print-default-config, and returns its path.
func prodConfig(t *testing.T, dir, extra string) string {
	t.Helper()
	def := runOK(t, "server", "--print-default-config")
	r := strings.NewReplacer(
		`listen = "127.0.0.1:8080"`, `listen = "127.0.0.1:0"`,
		`"/var/lib/trustgate/trustgate.db"`, `"`+filepath.Join(dir, "db", "trustgate.db")+`"`,
		`"/etc/trustgate/seal.key"`, `"`+filepath.Join(dir, "seal.key")+`"`,
		`"/etc/trustgate/admin.pub"`, `"`+filepath.Join(dir, "admin.pub")+`"`,
		`"/run/trustgate/admin.sock"`, `"`+filepath.Join(dir, "admin.sock")+`"`,
		`bundle_file = ""`, `bundle_file = "`+filepath.Join(dir, "bundle.pem")+`"`,
	)
	path := filepath.Join(dir, "server.toml")
	if err := os.WriteFile(path, []byte(r.Replace(def)+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A production server started only with trustgate commands: the admin
// socket works with no token; over TCP a token from `admin token` works
// from TRUSTGATE_ADMIN_TOKEN and from --token-file, a longer-lived one than
// admin.max_token_ttl is refused, and no token is taken from argv.
func TestAdminCredentialsWithTrustgateCommandsOnly(t *testing.T) {
	dir, err := os.MkdirTemp("", "tg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := prodConfig(t, dir, "")
	runOK(t, "server", "--create-seal-key", "--config", cfg)
	key := filepath.Join(dir, "admin.key")
	out := runOK(t, "admin", "key", "create", "--config", cfg, "--key", key)
	if !strings.Contains(out, filepath.Join(dir, "admin.pub")) {
		t.Fatalf("admin key create: %s", out)
	}
	for _, f := range []string{key, filepath.Join(dir, "admin.pub")} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi, err)
		}
	}
	url := startServer(t, "--config", cfg).api
	bundle := filepath.Join(dir, "bundle.pem")
	sock := filepath.Join(dir, "admin.sock")

	// The socket: no token.
	t.Setenv(envAdminToken, "")
	t.Setenv(envAdminSocket, "")
	runOK(t, "jointoken", "create", "--socket", sock)
	t.Setenv(envAdminSocket, sock)
	runOK(t, "entry", "list")

	// Over TCP: a token is needed.
	if msg := runFail(t, "entry", "list", "--server", url, "--trust-bundle", bundle); !strings.Contains(msg, envAdminToken) {
		t.Fatalf("no token: %s", msg)
	}
	tok := strings.TrimSpace(runOK(t, "admin", "token", "--key", key, "--ttl", "10m"))
	t.Setenv(envAdminToken, tok)
	runOK(t, "entry", "list", "--server", url, "--trust-bundle", bundle)
	t.Setenv(envAdminToken, "")
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runOK(t, "jointoken", "create", "--server", url, "--trust-bundle", bundle, "--token-file", tokFile)

	// Longer than admin.max_token_ttl (1h by default): refused.
	long := strings.TrimSpace(runOK(t, "admin", "token", "--key", key, "--ttl", "2h"))
	t.Setenv(envAdminToken, long)
	if msg := runFail(t, "entry", "list", "--server", url, "--trust-bundle", bundle); !strings.Contains(msg, "401") || !strings.Contains(msg, "max_token_ttl") {
		t.Fatalf("2h token: %s", msg)
	}
	// A token on argv is refused, before any request.
	if msg := runFail(t, "entry", "list", "--server", url, "--trust-bundle", bundle, "--admin-token", tok); !strings.Contains(msg, "--token-file") {
		t.Fatalf("--admin-token: %s", msg)
	}
}

// `policy test` evaluates an input document against a policy file
// offline.
func TestPolicyTestOffline(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "p.rego")
	if err := os.WriteFile(pol, []byte("package policy\n\ndefault allow := false\n\nallow if {\n\tinput.method == \"GET\"\n\tinput.claims.tee == \"sample\"\n}\n\nreason := \"sample GET\" if allow\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(dir, "in.json")
	write := func(method string) {
		doc := `{"method":"` + method + `","plugin":"resource","path":["default","key","1"],"query":{},` +
			`"claims":{"sub":"spiffe://example.org/a","spiffe_id":"spiffe://example.org/a","selectors":[],"aliases":[],"tee":"sample","tcb-status":{}}}`
		if err := os.WriteFile(in, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("GET")
	var d struct {
		Allow  bool   `json:"allow"`
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(runOK(t, "policy", "test", "--policy", pol, "--input", in)), &d); err != nil || !d.Allow || d.Reason != "sample GET" {
		t.Fatalf("GET: %+v %v", d, err)
	}
	write("DELETE")
	d.Allow = true
	if err := json.Unmarshal([]byte(runOK(t, "policy", "test", "--policy", pol, "--input", in)), &d); err != nil || d.Allow {
		t.Fatalf("DELETE: %+v %v", d, err)
	}
	// A policy that does not compile names file:line:col.
	if err := os.WriteFile(pol, []byte("package policy\n\nallow if {\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if msg := runFail(t, "policy", "test", "--policy", pol, "--input", in); !strings.Contains(msg, pol+":") || !strings.Contains(msg, ":3:") && !strings.Contains(msg, ":4:") {
		t.Fatalf("broken policy: %s", msg)
	}
}

// noFiles fails when dir holds any database or key file.
func noFiles(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			t.Errorf("a failed start left %s", n)
		}
	}
}

// Each start-up problem is found before anything is created, and says how
// to fix it.
func TestServerFailsFastWithTheFix(t *testing.T) {
	dir := t.TempDir()
	mkdb := func() { _ = os.Mkdir(filepath.Join(dir, "db"), 0o700) }
	db := filepath.Join("db", "trustgate.db")

	// ttl = 300.
	mkdb()
	cfg := prodConfig(t, dir, "")
	data, _ := os.ReadFile(cfg)
	_ = os.WriteFile(cfg, bytes.Replace(data, []byte(`ttl = "5m"`+"\n"+`# How often`), []byte("ttl = 300\n# How often"), 1), 0o600)
	msg := runFail(t, "server", "--config", cfg)
	for _, want := range []string{`"session.ttl"`, "line ", `"300s"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("ttl = 300: %q lacks %q", msg, want)
		}
	}

	// A missing seal key names --create-seal-key; nothing is created.
	cfg = prodConfig(t, dir, "")
	runOK(t, "admin", "key", "create", "--config", cfg, "--key", filepath.Join(dir, "admin.key"))
	msg = runFail(t, "server", "--config", cfg)
	if !strings.Contains(msg, "--create-seal-key") {
		t.Errorf("missing seal key: %s", msg)
	}
	noFiles(t, dir, db, db+"-wal", db+"-shm", "admin.sock")

	// A missing store directory says how to create it.
	runOK(t, "server", "--create-seal-key", "--config", cfg)
	os.Remove(filepath.Join(dir, "db"))
	msg = runFail(t, "server", "--config", cfg)
	if !strings.Contains(msg, "mkdir -p -m 0700 "+filepath.Join(dir, "db")) {
		t.Errorf("missing store directory: %s", msg)
	}
	mkdb()

	// A missing x509pop CA file.
	cfg = prodConfig(t, dir, "")
	data, _ = os.ReadFile(cfg)
	data = bytes.Replace(data, []byte("[attestors.x509pop]\n# SPIRE's x509pop: nodes prove possession of a CA-issued certificate's key\n# (docs/attestor-x509pop.md).\nenabled = false\n"),
		[]byte("[attestors.x509pop]\nenabled = true\nca_bundle_paths = [\""+filepath.Join(dir, "node-ca.pem")+"\"]\n"), 1)
	_ = os.WriteFile(cfg, data, 0o600)
	msg = runFail(t, "server", "--config", cfg)
	if !strings.Contains(msg, "node-ca.pem") || !strings.Contains(msg, "ca_bundle_paths") {
		t.Errorf("missing x509pop CA: %s", msg)
	}
	noFiles(t, dir, db)

	// A plugin table with settings but enabled = false is refused.
	cfg = prodConfig(t, dir, "")
	data, _ = os.ReadFile(cfg)
	data = bytes.Replace(data, []byte("ca_networks = []"), []byte(`ca_networks = ["10.42.0.0/16"]`), 1)
	_ = os.WriteFile(cfg, data, 0o600)
	msg = runFail(t, "server", "--config", cfg)
	if !strings.Contains(msg, "[plugins.nebula_ca] has settings but enabled = false") || !strings.Contains(msg, "set enabled = true") {
		t.Errorf("disabled table with settings: %s", msg)
	}
	noFiles(t, dir, db)

	// A failure after the store is opened (the port is taken) removes the
	// database it created.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg = prodConfig(t, dir, "")
	data, _ = os.ReadFile(cfg)
	_ = os.WriteFile(cfg, bytes.Replace(data, []byte(`listen = "127.0.0.1:0"`), []byte(`listen = "`+busy.Addr().String()+`"`), 1), 0o600)
	msg = runFail(t, "server", "--config", cfg)
	if !strings.Contains(msg, "listen") {
		t.Errorf("port taken: %s", msg)
	}
	noFiles(t, dir, db, db+"-wal", db+"-shm")
}

// --dev removes its temporary directory on exit, unless --dev-keep.
func TestDevRemovesItsDirectory(t *testing.T) {
	for _, keep := range []bool{false, true} {
		args := []string{"server", "--dev", "--listen", "127.0.0.1:0", "--dev-agent-listen", "127.0.0.1:0"}
		if keep {
			args = append(args, "--dev-keep")
		}
		cmd := command(args...)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var store string
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "store:" {
				store = f[1]
				break
			}
		}
		go func() { _, _ = io.Copy(io.Discard, stdout) }()
		if store == "" {
			_ = cmd.Process.Kill()
			t.Fatal("no store printed")
		}
		dir := filepath.Dir(store)
		if _, err := os.Stat(dir); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatal("no exit")
		}
		_, err = os.Stat(dir)
		if keep {
			if err != nil {
				t.Errorf("--dev-keep: %s is gone", dir)
			}
			os.RemoveAll(dir)
		} else if err == nil {
			t.Errorf("--dev: %s remains after exit", dir)
			os.RemoveAll(dir)
		}
	}
}
