package broker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/postgres"
	"github.com/trustgate/trustgate/store/sqlite"
)

// PostgresConfig is the [store] keys of driver "postgres". The connection
// string (DSN) comes from exactly one of DSN, DSNFile and DSNEnv, never from
// the command line, where every user of the machine could read it.
type PostgresConfig struct {
	// DSN is a libpq connection string: keywords ("host=db dbname=tg
	// user=tg") or a URL ("postgres://tg@db/tg").
	DSN string `toml:"dsn"`
	// DSNFile is a file holding the DSN (e.g. a mounted Kubernetes Secret).
	DSNFile string `toml:"dsn_file"`
	// DSNEnv names an environment variable holding the DSN, such as
	// "TRUSTGATE_POSTGRES_DSN".
	DSNEnv string `toml:"dsn_env"`
	// SSLMode is "disable", "require", "verify-ca" or "verify-full"; it
	// overrides the DSN's sslmode. Empty: the DSN's, else "verify-full".
	SSLMode string `toml:"sslmode"`
	// SSLRootCert is a PEM file of the CAs that verify the database
	// server's certificate; empty: the DSN's sslrootcert, else the system's.
	SSLRootCert string `toml:"ssl_root_cert"`
	// MaxConns and MinConns bound each server's connection pool; 0 means
	// 16 and 2.
	MaxConns int `toml:"max_conns"`
	MinConns int `toml:"min_conns"`
	// StatementTimeout bounds every SQL statement; "0s" means 10s.
	StatementTimeout Duration `toml:"statement_timeout"`
}

// set names the keys that are set, for messages.
func (c PostgresConfig) set() []string {
	var out []string
	for _, kv := range []struct {
		key string
		set bool
	}{
		{"dsn", c.DSN != ""}, {"dsn_file", c.DSNFile != ""}, {"dsn_env", c.DSNEnv != ""},
		{"sslmode", c.SSLMode != ""}, {"ssl_root_cert", c.SSLRootCert != ""},
		{"max_conns", c.MaxConns != 0}, {"min_conns", c.MinConns != 0}, {"statement_timeout", c.StatementTimeout.Duration != 0},
	} {
		if kv.set {
			out = append(out, "store."+kv.key)
		}
	}
	return out
}

// refuse reports PostgreSQL keys set with another driver.
func (c PostgresConfig) refuse(p *config.Problems) {
	if keys := c.set(); len(keys) > 0 {
		p.Addf("%s: only for store.driver = \"postgres\"; remove them, or set the driver", strings.Join(keys, ", "))
	}
}

func (c PostgresConfig) validate(p *config.Problems) {
	sources := 0
	for _, s := range []string{c.DSN, c.DSNFile, c.DSNEnv} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		p.Addf("store: set exactly one of dsn, dsn_file and dsn_env (the PostgreSQL connection string, such as dsn_env = \"TRUSTGATE_POSTGRES_DSN\"); %d are set", sources)
	}
	if c.SSLMode != "" && !slices.Contains(postgres.SSLModes, c.SSLMode) {
		p.Addf("store.sslmode = %q: want one of %s (\"allow\" and \"prefer\" fall back to plaintext)", c.SSLMode, strings.Join(postgres.SSLModes, ", "))
	}
	if c.MaxConns < 0 || c.MinConns < 0 || (c.MaxConns > 0 && c.MinConns > c.MaxConns) || c.MaxConns > 1<<15 {
		p.Addf("store.max_conns = %d, store.min_conns = %d: want 0 <= min_conns <= max_conns <= 32768 (0 means the default: 16 and 2)", c.MaxConns, c.MinConns)
	}
	if d := c.StatementTimeout.Duration; d < 0 || (d > 0 && d.Milliseconds() < 1) {
		p.Addf("store.statement_timeout = %q: want a duration of at least \"1ms\", or \"0s\" for the default 10s", c.StatementTimeout)
	}
}

// dsn reads the connection string from where the configuration says.
func (c PostgresConfig) dsn() (string, error) {
	switch {
	case c.DSNFile != "":
		b, err := os.ReadFile(c.DSNFile)
		if err != nil {
			return "", fmt.Errorf("store.dsn_file: %w", err)
		}
		dsn := strings.TrimSpace(string(b))
		if dsn == "" {
			return "", fmt.Errorf("store.dsn_file %s is empty: write the PostgreSQL connection string into it", c.DSNFile)
		}
		return dsn, nil
	case c.DSNEnv != "":
		dsn := strings.TrimSpace(os.Getenv(c.DSNEnv))
		if dsn == "" {
			return "", fmt.Errorf("store.dsn_env = %q: the variable is unset or empty; set it in the server's environment to the PostgreSQL connection string", c.DSNEnv)
		}
		return dsn, nil
	default:
		return c.DSN, nil
	}
}

// OpenStore opens the store that a validated configuration selects, and
// migrates it to the newest schema.
func OpenStore(ctx context.Context, c StoreConfig) (store.Store, error) {
	return OpenStoreLog(ctx, c, nil)
}

// OpenStoreLog is OpenStore with a logger for the store's background
// connections (PostgreSQL's change listener and leases reconnecting).
func OpenStoreLog(ctx context.Context, c StoreConfig, log *slog.Logger) (store.Store, error) {
	switch c.Driver {
	case "sqlite":
		return sqlite.Open(ctx, c.Path, sqlite.Options{Synchronous: c.Synchronous})
	case "postgres":
		dsn, err := c.dsn()
		if err != nil {
			return nil, err
		}
		return postgres.Open(ctx, postgres.Options{
			DSN: dsn, SSLMode: c.SSLMode, RootCAFile: c.SSLRootCert,
			MaxConns: int32(c.MaxConns), MinConns: int32(c.MinConns), StatementTimeout: c.StatementTimeout.Duration,
			Log: log,
		})
	default:
		return nil, fmt.Errorf("store.driver = %q: want \"sqlite\" or \"postgres\"", c.Driver)
	}
}

// Propagation is how long every replica on PostgreSQL takes, at most, to
// learn of a key another replica stored: change notifications arrive in
// milliseconds, and a lost one is made up by the listener's reconnection
// within a second. A first signing key waits this long before it signs.
const Propagation = 2 * time.Second

// propagation is the token authority's propagation delay for the driver:
// a single SQLite server has no other replica to wait for.
func (c StoreConfig) propagation() time.Duration {
	if c.Driver == "postgres" {
		return Propagation
	}
	return 0
}

// Describe names the store for logs, without secrets.
func (c StoreConfig) Describe() string {
	switch {
	case c.Driver != "postgres":
		return c.Driver + " " + c.Path
	case c.DSNFile != "":
		return "postgres (connection string from file " + c.DSNFile + ")"
	case c.DSNEnv != "":
		return "postgres (connection string from $" + c.DSNEnv + ")"
	default:
		return "postgres (connection string in the config file)"
	}
}
