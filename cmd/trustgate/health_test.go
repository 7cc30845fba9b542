package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

// TestNRIGatewayProbes: a gateway whose runtime is not there is alive but
// not ready, and `trustgate healthcheck` says so by its exit code.
func TestNRIGatewayProbes(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "gw.toml")
	cfg := fmt.Sprintf("upstream_socket = %q\nsocket = %q\nstate_dir = %q\n", filepath.Join(dir, "none.sock"), filepath.Join(dir, "gw.sock"), filepath.Join(dir, "state"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := command("nri-gateway", "--config", cfgPath, "--metrics-addr", "127.0.0.1:0", "--log-format", "json")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "metrics listening" {
				addr <- strings.TrimSuffix(rec.Addr, "/metrics")
			}
		}
	}()
	var base string
	select {
	case base = <-addr:
	case <-time.After(10 * time.Second):
		t.Fatal("no metrics address logged")
	}
	var out, errb bytes.Buffer
	if code := run([]string{"healthcheck", "--url", base, "--live"}, &out, &errb); code != 0 {
		t.Fatalf("liveness: exit %d %s", code, errb.String())
	}
	if code := run([]string{"healthcheck", "--url", base}, io.Discard, &errb); code != 1 || !strings.Contains(errb.String(), "not connected to the runtime") {
		t.Fatalf("readiness without a runtime: exit %d %s", code, errb.String())
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "trustgate_nri_decisions_total{") {
		t.Fatalf("gateway decisions not registered at start-up")
	}
}

func TestVersionStringFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/trustgate/trustgate", Version: "v0.4.0"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-12-01T10:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	if got, want := versionString("", bi), "trustgate v0.4.0 (revision 0123abcd+dirty, 2026-12-01T10:00:00Z, go1.26.8)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := versionString("v9", nil); got != "trustgate v9 (revision unknown, unknown)" {
		t.Errorf("no build info: %q", got)
	}
	bi.Main.Version, bi.Settings = "(devel)", nil
	if got := versionString("", bi); got != "trustgate dev (revision unknown, go1.26.8)" {
		t.Errorf("devel: %q", got)
	}
}
