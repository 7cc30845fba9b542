package nebulaca

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/trustgate/trustgate/config"
)

// Config configures the nebula-ca plugin. The ca_* settings describe every
// CA the plugin generates: the first one (unless one is imported) and each
// successor at rotation.
type Config struct {
	// CAName is the name in generated CA certificates.
	CAName string `toml:"ca_name"`
	// CANetworks limits the overlay addresses node certificates may hold
	// (CIDR, e.g. "10.42.0.0/16"); empty means any.
	CANetworks []string `toml:"ca_networks"`
	// CAUnsafeNetworks limits the unsafe routes ("subnets") node
	// certificates may hold; empty means any.
	CAUnsafeNetworks []string `toml:"ca_unsafe_networks"`
	// CAGroups limits the groups node certificates may hold; empty means
	// any.
	CAGroups []string `toml:"ca_groups"`
	// CAValidity is how long a generated CA is valid.
	CAValidity Duration `toml:"ca_validity"`
	// CAVersion is the certificate format of generated CAs: 1 or 2. A v2
	// CA signs v1 and v2 node certificates and may hold IPv6 networks.
	CAVersion int `toml:"ca_version"`
	// Curve is the curve of generated CAs and node keys: "25519" or "P256".
	Curve string `toml:"curve"`
	// ImportCACert and ImportCAKey are files holding a CA certificate and
	// its unencrypted private key (as written by nebula-cert ca) to use
	// instead of generating the first CA. They are read only when the
	// store holds no CA yet; after that the store is the source of truth.
	ImportCACert string `toml:"import_ca_crt"`
	ImportCAKey  string `toml:"import_ca_key"`
	// RotateBefore is how long before the newest CA expires its successor
	// is created. Both CAs are in ca_crt from then until the old one
	// expires. "0s" turns overlapping rotation off: a new CA is then made
	// only once the last one has expired.
	RotateBefore Duration `toml:"rotate_before"`
	// Prepublish is how long a successor CA is published in ca_crt before
	// it signs node certificates, so that nodes learn to trust it first.
	Prepublish Duration `toml:"prepublish"`
	// DefaultVersion is the node certificate format when a request does
	// not say: 1, 2, or 0 for the signing CA's format.
	DefaultVersion int `toml:"default_version"`
	// DefaultDuration is a node certificate's lifetime when a request does
	// not say; it is cut to end a second before the signing CA expires.
	DefaultDuration Duration `toml:"default_duration"`
	// MaxDuration bounds the lifetime a request may ask for.
	MaxDuration Duration `toml:"max_duration"`
	// AllowedGroups, when set, further limits the groups a request may ask
	// for, below the CA's own groups.
	AllowedGroups []string `toml:"allowed_groups"`
}

// DefaultConfig returns a configuration that generates a v2 Curve25519 CA
// valid for a year, rotated 90 days before it expires with a day of
// prepublication, and issues node certificates for 30 days by default.
func DefaultConfig() Config {
	return Config{
		CAName:          "trustgate nebula CA",
		CAValidity:      Duration{Duration: 365 * 24 * time.Hour},
		CAVersion:       2,
		Curve:           "25519",
		RotateBefore:    Duration{Duration: 90 * 24 * time.Hour},
		Prepublish:      Duration{Duration: 24 * time.Hour},
		DefaultDuration: Duration{Duration: 30 * 24 * time.Hour},
		MaxDuration:     Duration{Duration: 90 * 24 * time.Hour},
	}
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var p config.Problems
	if strings.TrimSpace(c.CAName) == "" {
		p.Addf("ca_name is empty: name the CA, such as \"trustgate nebula CA\"")
	}
	if c.CAVersion != 1 && c.CAVersion != 2 {
		p.Addf("ca_version = %d: want 1 or 2", c.CAVersion)
	}
	checkNets := func(key string, nets []string) {
		for _, s := range nets {
			n, err := netip.ParsePrefix(s)
			if err != nil {
				p.Addf("%s: %q is not a network in CIDR notation such as \"10.42.0.0/16\"", key, s)
				continue
			}
			if c.CAVersion == 1 && !n.Addr().Is4() {
				p.Addf("%s: %q is IPv6, which a version 1 CA cannot hold (set ca_version = 2)", key, s)
			}
		}
	}
	checkNets("ca_networks", c.CANetworks)
	checkNets("ca_unsafe_networks", c.CAUnsafeNetworks)
	checkGroups := func(key string, groups []string) {
		for _, g := range groups {
			if err := checkGroupName(g); err != nil {
				p.Addf("%s: %v", key, err)
			}
		}
	}
	checkGroups("ca_groups", c.CAGroups)
	checkGroups("allowed_groups", c.AllowedGroups)
	if len(c.CAGroups) > 0 {
		for _, g := range c.AllowedGroups {
			if !slices.Contains(c.CAGroups, g) {
				p.Addf("allowed_groups: %q is not in ca_groups, so no certificate could carry it", g)
			}
		}
	}
	if _, err := parseCurve(c.Curve); err != nil {
		p.Addf("curve = %q: want \"25519\" or \"P256\"", c.Curve)
	}
	if c.CAValidity.Duration <= 0 {
		p.Addf("ca_validity = %q: want a positive duration such as \"8760h\"", c.CAValidity)
	}
	if c.RotateBefore.Duration < 0 || (c.CAValidity.Duration > 0 && c.RotateBefore.Duration >= c.CAValidity.Duration) {
		p.Addf("rotate_before = %q: want \"0s\" (no rotation) or a duration shorter than ca_validity = %q", c.RotateBefore, c.CAValidity)
	}
	if c.Prepublish.Duration < 0 || (c.RotateBefore.Duration > 0 && c.Prepublish.Duration >= c.RotateBefore.Duration) {
		p.Addf("prepublish = %q: want a duration of zero or more, shorter than rotate_before = %q", c.Prepublish, c.RotateBefore)
	}
	if c.DefaultVersion != 0 && c.DefaultVersion != 1 && c.DefaultVersion != 2 {
		p.Addf("default_version = %d: want 1, 2, or 0 (the signing CA's version)", c.DefaultVersion)
	}
	if c.MaxDuration.Duration <= 0 {
		p.Addf("max_duration = %q: want a positive duration such as \"720h\"", c.MaxDuration)
	}
	if c.DefaultDuration.Duration <= 0 || c.DefaultDuration.Duration > c.MaxDuration.Duration {
		p.Addf("default_duration = %q: want a positive duration no longer than max_duration = %q", c.DefaultDuration, c.MaxDuration)
	}
	if (c.ImportCACert == "") != (c.ImportCAKey == "") {
		p.Addf("import_ca_crt and import_ca_key: set both (to import a CA) or neither (to generate one)")
	}
	return p.Err()
}

// checkGroupName reports whether g can be a Nebula group name here: not
// empty, at most 255 bytes, printable, and without commas or spaces, since
// requests list groups separated by commas.
func checkGroupName(g string) error {
	if g == "" || len(g) > maxField {
		return fmt.Errorf("group %q: want 1 to %d bytes", g, maxField)
	}
	for _, r := range g {
		if r == ',' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("group %q: commas, spaces and control characters are not allowed", g)
		}
	}
	return nil
}

// Duration is a duration written in TOML as a string such as "90s".
type Duration = config.Duration
