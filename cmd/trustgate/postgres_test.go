package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store/postgres/pgtest"
	"github.com/trustgate/trustgate/tlsclient"
)

// TestServerOnPostgres runs `trustgate server` as a real process with
// [store] driver = "postgres" and the DSN in an environment variable: it
// must migrate the database, answer /readyz from it over TLS, and stop on SIGTERM.
func TestServerOnPostgres(t *testing.T) {
	dsn := pgtest.Schema(t)
	dir := t.TempDir()
	sealKey := filepath.Join(dir, "seal.key")
	if err := seal.GenerateKeyFile(sealKey); err != nil {
		t.Fatal(err)
	}
	admin, err := broker.NewDevAdmin(dir, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "server.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`listen = "127.0.0.1:0"
[store]
driver = "postgres"
dsn_env = "TRUSTGATE_TEST_SERVER_DSN"
max_conns = 4
[keys]
seal_key_file = %q
[admin]
public_key_file = %q
socket_path = ""
[tls]
bundle_file = %q
`, sealKey, admin.PublicKeyFile, filepath.Join(dir, "bundle.pem"))), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := command("server", "--config", cfg, "--metrics-addr", "127.0.0.1:0", "--log-format", "json")
	cmd.Env = append(cmd.Env, "TRUSTGATE_TEST_SERVER_DSN="+dsn)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	var api, logged string
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		logged += sc.Text() + "\n"
		var rec struct{ Msg, Addr, Store string }
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "broker listening" {
			api = rec.Addr
			if !strings.HasPrefix(rec.Store, "postgres") || strings.Contains(logged, dsn) {
				t.Errorf("store logged as %q", rec.Store)
			}
			break
		}
	}
	if api == "" {
		t.Fatalf("the server did not start: %s", logged)
	}
	rest := make(chan string, 1)
	go func() { b, _ := io.ReadAll(stderr); rest <- string(b) }()
	client, err := tlsclient.HTTPClient(tlsclient.Options{TrustBundlePath: filepath.Join(dir, "bundle.pem")})
	if err != nil {
		t.Fatal(err)
	}
	// /readyz answers from the store.
	resp, err := client.Get(api + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"ready"`) {
		t.Fatalf("readyz: %d %s", resp.StatusCode, body)
	}
	// The server migrated the schema the DSN names.
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var version int
	if err := conn.QueryRow(context.Background(), `SELECT version FROM schema_version`).Scan(&version); err != nil || version < 1 {
		t.Fatalf("schema version %d: %v", version, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Read the log to its end (the process exits) before Wait closes it.
	var tail string
	select {
	case tail = <-rest:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop within 10s of SIGTERM")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v; stderr: %s%s", err, logged, tail)
	}
}
