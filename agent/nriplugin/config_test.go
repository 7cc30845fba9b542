package nriplugin_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/agent/attestor/nri"
	"github.com/trustgate/trustgate/agent/nriplugin"
	"github.com/trustgate/trustgate/pluginauth"
)

// TestNewChecksConfig: New refuses what would make a mount the gateway
// refuses or a registration the role does not allow, and loads the key
// file.
func TestNewChecksConfig(t *testing.T) {
	key, err := pluginauth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "agent.key")
	if err := key.WriteFile(keyFile); err != nil {
		t.Fatal(err)
	}
	a := nri.New(nri.Config{})
	ok := nriplugin.Config{GatewaySocket: "/run/gw.sock", KeyFile: keyFile, Attestor: a, SocketDir: "/run/trustgate/workload-api"}
	if _, err := nriplugin.New(ok); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	for name, tc := range map[string]struct {
		mutate func(*nriplugin.Config)
		want   string
	}{
		"no socket":            {func(c *nriplugin.Config) { c.GatewaySocket = "" }, "required"},
		"no attestor":          {func(c *nriplugin.Config) { c.Attestor = nil }, "required"},
		"no key":               {func(c *nriplugin.Config) { c.KeyFile = "" }, "key"},
		"missing key file":     {func(c *nriplugin.Config) { c.KeyFile += ".missing" }, "agent.key.missing"},
		"relative socket dir":  {func(c *nriplugin.Config) { c.SocketDir = "run/x" }, "clean absolute"},
		"unclean socket dir":   {func(c *nriplugin.Config) { c.SocketDir = "/run/x/../etc" }, "clean absolute"},
		"root destination":     {func(c *nriplugin.Config) { c.Destination = "/" }, "clean absolute"},
		"socket name with dir": {func(c *nriplugin.Config) { c.SocketName = "../x.sock" }, "not a file name"},
		"bad plugin index":     {func(c *nriplugin.Config) { c.PluginIndex = "x" }, "index"},
	} {
		c := ok
		tc.mutate(&c)
		if _, err := nriplugin.New(c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}
