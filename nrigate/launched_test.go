package nrigate

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/pluginauth"
)

// gatewayHelperEnv, when set to a configuration file, turns the test
// binary into `trustgate nri-gateway --config FILE`, for a runtime to
// launch from its plugin_path.
const gatewayHelperEnv = "TRUSTGATE_TEST_GATEWAY_CONFIG"

// gatewayHelper runs a gateway from the configuration file path, logging
// JSON to stderr, until the runtime's connection ends.
func gatewayHelper(path string) int {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cfg := DefaultConfig()
	if err := config.LoadFile(path, &cfg); err != nil {
		log.Error("config", "err", err)
		return 2
	}
	g, err := New(cfg, log, nil)
	if err != nil {
		log.Error("new", "err", err)
		return 2
	}
	if err := g.Run(context.Background()); err != nil {
		log.Error("gateway stopped", "err", err)
		return 1
	}
	return 0
}

// TestGatewayLaunchedByTheRuntime is the closed configuration: the runtime
// accepts no plugin connections (containerd's disable_connections) and
// launches the gateway from its plugin_path, as containerd does, with the
// NRI socket pre-connected. Plugins reach the runtime only through the
// gateway; there is no runtime socket to bypass it.
func TestGatewayLaunchedByTheRuntime(t *testing.T) {
	dir, err := os.MkdirTemp("", "tgl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	key, err := pluginauth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	gwSocket, runtimeSocket := filepath.Join(dir, "gw.sock"), filepath.Join(dir, "nri.sock")
	cfgPath, logPath := filepath.Join(dir, "gw.toml"), filepath.Join(dir, "gw.log")
	cfg := fmt.Sprintf(`upstream_socket = %q
socket = %q
state_dir = %q

[[roles]]
role = "injector"
keys = [%q]
names = ["injector"]
indices = ["20"]
[roles.policy]
env = ["INJECTED_*"]
`, runtimeSocket, gwSocket, filepath.Join(dir, "state"), key.Public().String())
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	plugins := filepath.Join(dir, "plugins")
	if err := os.Mkdir(plugins, 0o755); err != nil {
		t.Fatal(err)
	}
	// containerd runs the file with only NRI_* in the environment and no
	// arguments: a wrapper gives the configuration, as in the docs.
	wrapper := fmt.Sprintf("#!/bin/sh\nexec env %s=%s %s -test.run='^$' 2>>%s\n", gatewayHelperEnv, cfgPath, os.Args[0], logPath)
	if err := os.WriteFile(filepath.Join(plugins, "10-trustgate-gateway"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	none := filepath.Join(dir, "none")
	noSync := func(ctx context.Context, cb adaptation.SyncCB) error { _, err := cb(ctx, nil, nil); return err }
	noUpdate := func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		return nil, nil
	}
	rt, err := adaptation.New("containerd", "2.4.2", noSync, noUpdate,
		adaptation.WithPluginPath(plugins), adaptation.WithPluginConfigPath(none), adaptation.WithSocketPath(runtimeSocket),
		adaptation.WithDisabledExternalConnections())
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(); err != nil {
		log, _ := os.ReadFile(logPath)
		t.Fatalf("runtime start (launching the gateway): %v\n%s", err, log)
	}
	t.Cleanup(rt.Stop)

	eventually(t, "the launched gateway accepting plugins", func() error {
		log, _ := os.ReadFile(logPath)
		if !strings.Contains(string(log), `"msg":"accepting plugins"`) {
			return fmt.Errorf("log:\n%s", log)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pluginauth.Dial(ctx, gwSocket, key, "injector", "20")
	if err != nil {
		t.Fatal(err)
	}
	p := &testPlugin{adjust: func(a *api.ContainerAdjustment) { a.AddEnv("INJECTED_ID", "launched") }}
	s, err := stub.New(p, stub.WithPluginName("injector"), stub.WithPluginIdx("20"), stub.WithConnection(conn))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	eventually(t, "an adjustment through the launched gateway", func() error {
		rsp, err := rt.CreateContainer(ctx, &api.CreateContainerRequest{
			Pod:       &api.PodSandbox{Id: "pod0", Name: "web", Namespace: "prod"},
			Container: &api.Container{Id: nextID(), PodSandboxId: "pod0", Name: "app"},
		})
		if err != nil || envOf(rsp)["INJECTED_ID"] != "launched" {
			return fmt.Errorf("%v %v", envOf(rsp), err)
		}
		return nil
	})
	// Nothing listens where a bypassing plugin would dial.
	if c, err := net.Dial("unix", runtimeSocket); err == nil {
		c.Close()
		t.Fatal("the runtime accepts external connections")
	}
}
