package pluginauth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/trustgate/trustgate/config"
)

func TestConfigFromTOML(t *testing.T) {
	a, b := mustKey(t), mustKey(t)
	doc := `
require_authentication = false
handshake_timeout = "750ms"

[[roles]]
role = "logger"
keys = ["` + a.Public().String() + `", "` + b.Public().String() + `"]
tags = { team = "obs" }
names = ["logger", "log-*"]
indices = ["1?"]
capabilities = ["read-only"]

[[roles]]
role = "default"
names = ["legacy-*"]
indices = ["9?"]
`
	cfg := DefaultServerConfig()
	if err := config.Decode([]byte(doc), &cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.RequireAuthentication || time.Duration(cfg.HandshakeTimeout) != 750*time.Millisecond || cfg.MaxPendingHandshakes != DefaultMaxPendingHandshakes {
		t.Errorf("decoded %+v", cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := handshakePair(t, s, b, "log-x", "12")
	if r.srvErr != nil || r.out.Role != "logger" || r.out.Tags["team"] != "obs" {
		t.Errorf("handshake under TOML config: %v, %+v", r.srvErr, r.out)
	}
	if r := handshakePair(t, s, nil, "legacy-a", "90"); r.srvErr != nil || r.id.Role != DefaultRole {
		t.Errorf("keyless plugin: %v", r.srvErr)
	}
}

func TestConfigUnknownKeyIsAnError(t *testing.T) {
	cfg := DefaultServerConfig()
	err := config.Decode([]byte("require_authentification = true\n"), &cfg)
	if err == nil || !strings.Contains(err.Error(), "require_authentification") {
		t.Errorf("misspelt key: %v", err)
	}
}

// Validate reports every problem at once, each saying how to fix it.
func TestConfigValidateReportsEveryProblem(t *testing.T) {
	a := mustKey(t).Public().String()
	cfg := ServerConfig{
		RequireAuthentication: false, // but no default role
		HandshakeTimeout:      Duration(-time.Second),
		Roles: []RoleConfig{
			{Role: "one", Keys: []string{a, "bad-key"}, Names: []string{"["}, Indices: []string{"10"}},
			{Role: "two", Keys: []string{a}, Names: []string{"x"}},
			{Role: "one", Keys: []string{mustKey(t).Public().String()}, Names: []string{"y"}, Indices: []string{"*"}},
			{Role: "", Names: []string{"z"}, Indices: []string{"*"}, Capabilities: []string{""}},
		},
	}
	err := cfg.Validate()
	var p config.Problems
	if !errors.As(err, &p) {
		t.Fatalf("Validate = %v, want config.Problems", err)
	}
	for _, want := range []string{
		"handshake_timeout is negative",
		`key "bad-key"`,
		"is also in role \"one\"; a key may be in only one role",
		`names pattern "["`,
		`roles[1] ("two"): indices is empty`,
		`role name is also used by roles[0]`,
		`roles[3]: role name is empty`,
		`roles[3]: no keys`,
		"empty capability",
		`no role is named "default"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("problems do not mention %q:\n%v", want, err)
		}
	}
	if len(p) != 10 {
		t.Errorf("got %d problems, want 10:\n%v", len(p), err)
	}
	if _, err := NewServer(cfg); err == nil {
		t.Error("NewServer accepted an invalid config")
	}
}

func TestConfigDuplicateKeyInSameRole(t *testing.T) {
	a := mustKey(t).Public().String()
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{{Role: "r", Keys: []string{a, a}, Names: []string{"*"}, Indices: []string{"*"}}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Errorf("duplicate key in one role: %v", err)
	}
}

func TestNewServerKeyFile(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.Roles = []RoleConfig{roleCfg("a", []string{"*"}, []string{"*"}, mustKey(t))}
	cfg.KeyFile = t.TempDir() + "/missing.key"
	if _, err := NewServer(cfg); err == nil {
		t.Error("NewServer with a missing key_file succeeded")
	}
	k := mustKey(t)
	cfg.KeyFile = t.TempDir() + "/server.key"
	if err := k.WriteFile(cfg.KeyFile); err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !s.PublicKey().Equal(k.Public()) {
		t.Error("server key is not the one in key_file")
	}
}

// An indices pattern that no two-digit NRI index can match is refused at
// start-up, with the fix; one that can match passes.
func TestConfigIndicesThatCanNeverMatch(t *testing.T) {
	a := mustKey(t).Public().String()
	for _, tc := range []struct {
		pat string
		bad bool
	}{{"1", true}, {"100", true}, {"1??", true}, {"a?", true}, {"1?", false}, {"0[1-9]", false}, {"*", false}, {"10", false}} {
		cfg := DefaultServerConfig()
		cfg.Roles = []RoleConfig{{Role: "r", Keys: []string{a}, Names: []string{"*"}, Indices: []string{tc.pat}}}
		err := cfg.Validate()
		got := err != nil && strings.Contains(err.Error(), "can never match") && strings.Contains(err.Error(), "two digits")
		if got != tc.bad {
			t.Errorf("indices [%q]: %v", tc.pat, err)
		}
	}
}
