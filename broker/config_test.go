package broker

import (
	"strings"
	"testing"
	"time"

	"github.com/trustgate/trustgate/config"
)

func TestDefaultConfigIsValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:8080" || c.Store.Driver != "sqlite" || c.ShutdownGrace.Seconds() != 10 {
		t.Fatalf("default config: %+v", c)
	}
}

func TestConfigProblemsAreSpecific(t *testing.T) {
	c := DefaultConfig()
	err := config.Decode([]byte("listen = \"nowhere\"\n[store]\ndriver = \"mysql\"\n"), &c)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil || !strings.Contains(err.Error(), `listen = "nowhere"`) || !strings.Contains(err.Error(), `store.driver = "mysql"`) {
		t.Fatalf("got %v", err)
	}
}

func TestConfigUnknownKey(t *testing.T) {
	c := DefaultConfig()
	err := config.Decode([]byte("[store]\ndriver = \"sqlite\"\nsynchronus = \"FULL\"\n"), &c)
	if err == nil || !strings.Contains(err.Error(), "store.synchronus") || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("got %v", err)
	}
}

func TestBadDuration(t *testing.T) {
	c := DefaultConfig()
	err := config.Decode([]byte("shutdown_grace = \"soon\"\n"), &c)
	if err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("got %v", err)
	}
}

func TestConfigPlugins(t *testing.T) {
	base := DefaultConfig()
	if base.Plugins.MaxBodyBytes != 1<<20 || base.Policy.Default != "deny-all" {
		t.Fatalf("defaults: %+v %+v", base.Plugins, base.Policy)
	}
	for name, e := range map[string]ExternalPluginConfig{
		"reserved":    {Name: "auth", Address: "tcp://127.0.0.1:1"},
		"builtin":     {Name: "resource", Address: "tcp://127.0.0.1:1"},
		"bad name":    {Name: "../x", Address: "tcp://127.0.0.1:1"},
		"unix no key": {Name: "p", Address: "unix:///run/p.sock"},
		"bad key":     {Name: "p", Address: "unix:///run/p.sock", PublicKey: "nope"},
		"bad address": {Name: "p", Address: "http://x"},
		"neg timeout": {Name: "p", Address: "tcp://127.0.0.1:1", Timeout: Duration{Duration: -1}},
		"tcp public":  {Name: "p", Address: "tcp://192.0.2.7:9000"},
		"tcp name":    {Name: "p", Address: "tcp://plugin.example:9000"},
		"tcp any":     {Name: "p", Address: "tcp://0.0.0.0:9000"},
	} {
		c := base
		c.Plugins.External = []ExternalPluginConfig{e}
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "plugins.external[0]") {
			t.Errorf("%s: %v", name, err)
		}
	}
	c := base
	c.Policy.Default = "allow-all"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "policy.default") {
		t.Errorf("policy.default: %v", err)
	}
}

func TestConfigTokenService(t *testing.T) {
	c := DefaultConfig()
	if c.TokenService.Enabled || c.TokenService.Service != "trustgate" || c.TokenService.ExpiresIn.Duration != 5*time.Minute {
		t.Fatalf("defaults: %+v", c.TokenService)
	}
	if got := c.RealmURL(); got != "https://trustgate.example.org/token" {
		t.Fatalf("default realm %q", got)
	}
	c.TokenService.Enabled = true
	c.Admin.PublicKeyFile = "/x"
	if err := c.Validate(); err != nil {
		t.Fatalf("enabled defaults: %v", err)
	}
	c.TokenService.Realm = "ftp://x/token"
	c.TokenService.Service = `a"b`
	c.TokenService.Services = []string{`a"b`, ""}
	c.TokenService.ExpiresIn.Duration = 0
	c.TokenService.X5CServices = []string{"registry.example.org"}
	err := c.Validate()
	for _, want := range []string{"token_service.realm", "token_service.service", "token_service.services: \"\"", "token_service.expires_in", "token_service.x5c_services: \"registry.example.org\""} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want a problem about %s, got %v", want, err)
		}
	}
}

// TestConfigRefusesCleartextToOtherHosts checks that admin keys are fetched
// only over https and that a tcp:// external plugin, which has no TLS and
// no pluginauth handshake, is refused unless it is on loopback; each message
// says how to fix it.
func TestConfigRefusesCleartextToOtherHosts(t *testing.T) {
	c := DefaultConfig()
	c.Admin.PublicKeyFile = ""
	c.Admin.JWKSURL = "http://keys.example.org/jwks.json"
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "admin.jwks_url") || !strings.Contains(err.Error(), "https://") || !strings.Contains(err.Error(), "jwks_file") {
		t.Errorf("http jwks_url: %v", err)
	}
	c.Admin.JWKSURL = "https://keys.example.org/jwks.json"
	if err := c.Validate(); err != nil {
		t.Errorf("https jwks_url: %v", err)
	}

	c = DefaultConfig()
	c.Plugins.External = []ExternalPluginConfig{{Name: "p", Address: "tcp://10.1.2.3:9000"}}
	err = c.Validate()
	if err == nil || !strings.Contains(err.Error(), "loopback") || !strings.Contains(err.Error(), "unix://") {
		t.Errorf("tcp on another host: %v", err)
	}
	for _, a := range []string{"tcp://127.0.0.1:9000", "tcp://[::1]:9000", "tcp://localhost:9000"} {
		c.Plugins.External = []ExternalPluginConfig{{Name: "p", Address: a}}
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", a, err)
		}
	}
}

func TestConfigRateLimit(t *testing.T) {
	c := DefaultConfig()
	if r := c.RateLimit; r.IPv4Prefix != 32 || r.IPv6Prefix != 64 || r.GlobalPerSecond != 200 || r.GlobalBurst != 400 {
		t.Fatalf("defaults: %+v", r)
	}
	if err := config.Decode([]byte("[rate_limit]\nipv6_prefix = 48\nglobal_per_second = 5.0\nglobal_burst = 6\n"), &c); err != nil {
		t.Fatal(err)
	}
	if r := c.RateLimit; r.IPv6Prefix != 48 || r.GlobalPerSecond != 5 || r.GlobalBurst != 6 || r.PerSecond != 10 {
		t.Fatalf("decoded: %+v", r)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := config.Decode([]byte("[rate_limit]\nipv6_prefixlen = 48\n"), &c); err == nil {
		t.Fatal("unknown rate_limit key accepted")
	}
	c.RateLimit.IPv4Prefix, c.RateLimit.IPv6Prefix = 33, 0
	c.RateLimit.GlobalPerSecond, c.RateLimit.GlobalBurst = 1, 0
	err := c.Validate()
	for _, want := range []string{"rate_limit.ipv4_prefix = 33", "rate_limit.ipv6_prefix = 0", "rate_limit.global_burst"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want a problem about %s, got %v", want, err)
		}
	}
}
