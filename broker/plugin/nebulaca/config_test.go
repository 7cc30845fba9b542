package nebulaca

import (
	"strings"
	"testing"
	"time"

	"github.com/trustgate/trustgate/config"
)

func TestDefaultConfigValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestConfigTOML decodes a full configuration with the project's strict
// decoder, and refuses a misspelt key with its line.
func TestConfigTOML(t *testing.T) {
	c := DefaultConfig()
	doc := `
ca_name = "overlay CA"
ca_networks = ["10.42.0.0/16", "fd42::/64"]
ca_unsafe_networks = ["192.168.0.0/16"]
ca_groups = ["web", "db"]
ca_validity = "8760h"
ca_version = 2
curve = "P256"
rotate_before = "2160h"
prepublish = "48h"
default_version = 1
default_duration = "24h"
max_duration = "720h"
allowed_groups = ["web"]
`
	if err := config.Decode([]byte(doc), &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.CAName != "overlay CA" || c.Curve != "P256" || c.Prepublish.Duration != 48*time.Hour || c.DefaultVersion != 1 ||
		len(c.CANetworks) != 2 || c.AllowedGroups[0] != "web" || c.MaxDuration.Duration != 720*time.Hour {
		t.Fatalf("decoded %+v", c)
	}
	err := config.Decode([]byte("ca_nmae = \"x\"\n"), &c)
	if err == nil || !strings.Contains(err.Error(), `line 1: unknown key "ca_nmae"`) {
		t.Fatalf("misspelt key: %v", err)
	}
	err = config.Decode([]byte("max_duration = \"forever\"\n"), &c)
	if err == nil || !strings.Contains(err.Error(), "max_duration") {
		t.Fatalf("bad duration: %v", err)
	}
}

// TestConfigProblems: Validate reports every problem at once.
func TestConfigProblems(t *testing.T) {
	c := Config{
		CAName:          " ",
		CANetworks:      []string{"10.0.0.0/8", "nope", "fd00::/8"},
		CAGroups:        []string{"a", "b,c"},
		AllowedGroups:   []string{"z"},
		CAVersion:       1,
		Curve:           "ed448",
		CAValidity:      Duration{Duration: time.Hour},
		RotateBefore:    Duration{Duration: 2 * time.Hour},
		Prepublish:      Duration{Duration: -time.Second},
		DefaultVersion:  3,
		DefaultDuration: Duration{Duration: 2 * time.Hour},
		MaxDuration:     Duration{Duration: time.Hour},
		ImportCACert:    "ca.crt",
	}
	err := c.Validate()
	ps, ok := err.(config.Problems)
	if !ok {
		t.Fatalf("%T %v", err, err)
	}
	for _, want := range []string{"ca_name is empty", `"nope" is not a network`, `"fd00::/8" is IPv6`, `group "b,c"`,
		`"z" is not in ca_groups`, `curve = "ed448"`, "rotate_before", "prepublish", "default_version = 3",
		"default_duration", "import_ca_crt and import_ca_key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("problems lack %q:\n%v", want, err)
		}
	}
	if len(ps) != 11 {
		t.Errorf("%d problems, want 11:\n%v", len(ps), err)
	}
}

// TestNewRefuses: New checks the configuration and its dependencies before
// touching the store.
func TestNewRefuses(t *testing.T) {
	st, _ := newStore(t)
	bad := DefaultConfig()
	bad.Curve = "448"
	if _, err := New(t.Context(), bad, st, newSealer(t, 1), nil, nil); err == nil || !strings.Contains(err.Error(), "curve") {
		t.Fatalf("bad config: %v", err)
	}
	if _, err := New(t.Context(), DefaultConfig(), nil, newSealer(t, 1), nil, nil); err == nil {
		t.Fatal("nil store accepted")
	}
	if _, err := New(t.Context(), DefaultConfig(), st, nil, nil, nil); err == nil {
		t.Fatal("nil sealer accepted")
	}
	if keys, _ := st.Keys().List(t.Context(), Kind); len(keys) != 0 {
		t.Fatal("a refused New stored a CA")
	}
}
