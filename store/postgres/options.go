package postgres

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults of Options.
const (
	DefaultSSLMode          = "verify-full"
	DefaultMaxConns         = 16
	DefaultMinConns         = 2
	DefaultStatementTimeout = 10 * time.Second
)

// SSLModes are the accepted sslmode values. "allow" and "prefer" are not
// among them: they fall back to an unencrypted connection without a word.
var SSLModes = []string{"disable", "require", "verify-ca", "verify-full"}

// Options say how to reach and use the database.
type Options struct {
	// DSN is a libpq connection string, as keywords (host=db dbname=tg
	// user=tg) or a URL (postgres://tg@db/tg). It may hold a password.
	DSN string
	// SSLMode overrides the DSN's sslmode. When neither sets one, it is
	// DefaultSSLMode, not libpq's "prefer". TLS does not apply to a unix
	// socket (host=/path), as in libpq.
	SSLMode string
	// RootCAFile is a PEM file of the CAs that verify the server's
	// certificate (libpq's sslrootcert); it overrides the DSN's. Empty
	// means the DSN's, else the system's roots.
	RootCAFile string
	// MaxConns and MinConns bound the connection pool; zero means
	// DefaultMaxConns and DefaultMinConns.
	MaxConns, MinConns int32
	// StatementTimeout is PostgreSQL's statement_timeout on every
	// connection; zero means DefaultStatementTimeout.
	StatementTimeout time.Duration
	// Log receives the change notifier's and the leases' reconnections;
	// nil discards them.
	Log *slog.Logger
}

// poolConfig parses the DSN with the options applied.
func (o Options) poolConfig() (*pgxpool.Config, error) {
	if o.DSN == "" {
		return nil, errors.New("postgres: empty DSN")
	}
	mode := o.SSLMode
	if mode != "" && !validSSLMode(mode) {
		return nil, fmt.Errorf("postgres: sslmode %q: want one of %s", mode, strings.Join(SSLModes, ", "))
	}
	dsn, err := withParams(o.DSN, mode, o.RootCAFile)
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx redacts the password in its ParseConfigError.
		return nil, fmt.Errorf("postgres: %w", err)
	}
	// libpq's "allow" and "prefer" are a TLS and a plaintext attempt at
	// the same address; refuse them, whichever way they were set.
	seen := map[string]bool{addr(cfg.ConnConfig.Host, cfg.ConnConfig.Port): true}
	for _, fb := range cfg.ConnConfig.Fallbacks {
		key := addr(fb.Host, fb.Port)
		if seen[key] {
			return nil, fmt.Errorf("postgres: %s is tried with and without TLS (sslmode allow or prefer): set sslmode to one of %s", key, strings.Join(SSLModes, ", "))
		}
		seen[key] = true
	}
	maxConns, minConns := o.MaxConns, o.MinConns
	if maxConns == 0 {
		maxConns = DefaultMaxConns
	}
	if minConns == 0 {
		minConns = min(DefaultMinConns, maxConns)
	}
	if maxConns < 1 || minConns < 0 || minConns > maxConns {
		return nil, fmt.Errorf("postgres: pool of %d to %d connections: want 0 <= min <= max and max >= 1", minConns, maxConns)
	}
	cfg.MaxConns, cfg.MinConns = maxConns, minConns
	timeout := o.StatementTimeout
	if timeout == 0 {
		timeout = DefaultStatementTimeout
	}
	if timeout < time.Millisecond {
		return nil, fmt.Errorf("postgres: statement timeout %s: want at least 1ms", timeout)
	}
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(timeout.Milliseconds(), 10)
	// JIT compilation costs tens of milliseconds and pays off only for
	// long analytic queries; every statement here is a short lookup or
	// write, whose estimated cost can still cross jit_above_cost when the
	// table statistics are stale (after a bulk import, before autovacuum
	// analyzes it): measured 100 ms per entry lookup at 100k entries.
	cfg.ConnConfig.RuntimeParams["jit"] = "off"
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "trustgate"
	}
	return cfg, nil
}

func addr(host string, port uint16) string { return host + ":" + strconv.Itoa(int(port)) }

func validSSLMode(m string) bool { return slices.Contains(SSLModes, m) }

// withParams sets sslmode (when mode is not empty; else it defaults it to
// DefaultSSLMode unless the DSN sets it) and sslrootcert (when rootCA is
// not empty) in a DSN of either form, leaving the parsing to pgx.
func withParams(dsn, mode, rootCA string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", errors.New("postgres: the DSN is not a valid URL") // the error would quote the password
		}
		q := u.Query()
		if mode != "" {
			q.Set("sslmode", mode)
		} else if q.Get("sslmode") == "" {
			q.Set("sslmode", DefaultSSLMode)
		}
		if rootCA != "" {
			q.Set("sslrootcert", rootCA)
		}
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// Keyword/value form: a later keyword overrides an earlier one, so the
	// default goes first and the overrides last.
	out := "sslmode=" + DefaultSSLMode + " " + dsn
	if mode != "" {
		out += " sslmode=" + quote(mode)
	}
	if rootCA != "" {
		out += " sslrootcert=" + quote(rootCA)
	}
	return out, nil
}

// quote quotes a libpq keyword value.
func quote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
