package nrigate

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustgate/trustgate/pluginauth"
	"github.com/trustgate/trustgate/serve"
)

// TestReadyOnlyWhileConnectedAndServing: /readyz answers 200 only while the
// gateway is connected to the runtime and accepting plugins; /healthz
// answers 200 throughout.
func TestReadyOnlyWhileConnectedAndServing(t *testing.T) {
	dir, err := os.MkdirTemp("", "tg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := DefaultConfig()
	c.UpstreamSocket = filepath.Join(dir, "proxy.sock") // not there yet
	c.Socket = filepath.Join(dir, "gw.sock")
	c.StateDir = filepath.Join(dir, "state")
	c.ReconnectMaxBackoff = pluginauth.Duration(100 * time.Millisecond)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	g, err := New(c, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	serve.HandleHealth(mux, log, g.Ready)
	hs := httptest.NewServer(mux)
	defer hs.Close()
	probe := func(path string) (int, string) {
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	if code, body := probe("/readyz"); code != 503 || !strings.Contains(body, "not connected") {
		t.Fatalf("before the runtime: %d %s", code, body)
	}
	if code, _ := probe("/healthz"); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
	rt := newStandIn(t, dir)
	proxy := newRuntimeProxy(t, c.UpstreamSocket, rt.socket)
	eventually(t, "ready once connected and serving", func() error { return g.Ready(ctx) })
	if code, body := probe("/readyz"); code != 200 {
		t.Fatalf("connected: %d %s", code, body)
	}
	// The runtime dies: its connections drop and nothing answers.
	proxy.restart(filepath.Join(dir, "nothing.sock"))
	eventually(t, "not ready once the runtime is gone", func() error {
		if err := g.Ready(ctx); err == nil || !strings.Contains(err.Error(), "not connected") {
			return fmt.Errorf("ready says %v", err)
		}
		return nil
	})
	if code, _ := probe("/readyz"); code != 503 {
		t.Fatalf("runtime gone: %d", code)
	}
}
