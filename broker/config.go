package broker

import (
	_ "embed"
	"fmt"
	"net"
	"time"

	"github.com/trustgate/trustgate/config"
)

//go:embed default.toml
var defaultTOML string

// DefaultConfigTOML is the commented default configuration that
// `trustgate server --print-default-config` prints.
func DefaultConfigTOML() string { return defaultTOML }

// Config is the server's configuration file.
type Config struct {
	Listen string      `toml:"listen"`
	Store  StoreConfig `toml:"store"`
	// ShutdownGrace bounds the graceful shutdown, e.g. "10s".
	ShutdownGrace Duration `toml:"shutdown_grace"`
}

// StoreConfig selects and configures the persistent store.
type StoreConfig struct {
	// Driver is "sqlite".
	Driver string `toml:"driver"`
	// Path is the SQLite database file.
	Path string `toml:"path"`
	// Synchronous is SQLite's synchronous mode: "NORMAL" or "FULL".
	Synchronous string `toml:"synchronous"`
}

// DefaultConfig returns the configuration that default.toml describes.
func DefaultConfig() Config {
	var c Config
	if err := config.Decode([]byte(defaultTOML), &c); err != nil {
		panic(fmt.Sprintf("broker: embedded default.toml is invalid: %v", err))
	}
	return c
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var p config.Problems
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		p.Addf("listen = %q: want host:port, such as \"127.0.0.1:8080\" (%v)", c.Listen, err)
	}
	switch c.Store.Driver {
	case "sqlite":
		if c.Store.Path == "" {
			p.Addf("store.path is empty: set it to the SQLite database file, such as \"/var/lib/trustgate/trustgate.db\"")
		}
		if s := c.Store.Synchronous; s != "" && s != "NORMAL" && s != "FULL" {
			p.Addf("store.synchronous = %q: want \"NORMAL\" or \"FULL\"", s)
		}
	default:
		p.Addf("store.driver = %q: the only driver is \"sqlite\"", c.Store.Driver)
	}
	if c.ShutdownGrace.Duration <= 0 {
		p.Addf("shutdown_grace = %q: want a positive duration such as \"10s\"", c.ShutdownGrace)
	}
	return p.Err()
}

// Duration is a time.Duration written in TOML as a string like "90s".
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("want a duration such as \"30s\" or \"5m\": %w", err)
	}
	d.Duration = v
	return nil
}

// MarshalText formats the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }
