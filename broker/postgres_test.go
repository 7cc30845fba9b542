package broker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/postgres/pgtest"
)

func decodeStore(t *testing.T, toml string) (Config, error) {
	t.Helper()
	c := DefaultConfig()
	if err := config.Decode([]byte(toml), &c); err != nil {
		t.Fatal(err)
	}
	return c, c.Validate()
}

func TestPostgresStoreConfig(t *testing.T) {
	c, err := decodeStore(t, `[store]
driver = "postgres"
dsn_env = "TRUSTGATE_POSTGRES_DSN"
sslmode = "verify-ca"
ssl_root_cert = "/etc/trustgate/db-ca.pem"
max_conns = 32
min_conns = 4
statement_timeout = "3s"
`)
	if err != nil {
		t.Fatal(err)
	}
	pc := c.Store.PostgresConfig
	if pc.DSNEnv != "TRUSTGATE_POSTGRES_DSN" || pc.SSLMode != "verify-ca" || pc.SSLRootCert != "/etc/trustgate/db-ca.pem" ||
		pc.MaxConns != 32 || pc.MinConns != 4 || pc.StatementTimeout.Seconds() != 3 {
		t.Fatalf("decoded %+v", pc)
	}
	if d := c.Store.Describe(); !strings.Contains(d, "$TRUSTGATE_POSTGRES_DSN") {
		t.Fatalf("describe: %q", d)
	}
	for _, tc := range []struct{ toml, want string }{
		{"[store]\ndriver = \"postgres\"\n", "set exactly one of dsn, dsn_file and dsn_env"},
		{"[store]\ndriver = \"postgres\"\ndsn = \"host=db\"\ndsn_env = \"X\"\n", "2 are set"},
		{"[store]\ndriver = \"postgres\"\ndsn = \"host=db\"\nsslmode = \"prefer\"\n", `store.sslmode = "prefer"`},
		{"[store]\ndriver = \"postgres\"\ndsn = \"host=db\"\nmax_conns = 2\nmin_conns = 3\n", "min_conns <= max_conns"},
		{"[store]\ndriver = \"postgres\"\ndsn = \"host=db\"\nstatement_timeout = \"-1s\"\n", "store.statement_timeout"},
		{"[store]\ndriver = \"sqlite\"\ndsn = \"host=db\"\n", `store.dsn: only for store.driver = "postgres"`},
		{"[store]\ndriver = \"mysql\"\n", `want "sqlite" (embedded) or "postgres"`},
	} {
		if _, err := decodeStore(t, tc.toml); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: want a problem with %q, got %v", tc.toml, tc.want, err)
		}
	}
	c = DefaultConfig()
	if err := config.Decode([]byte("[store]\ndsn_envv = \"X\"\n"), &c); err == nil {
		t.Fatal("a misspelt store key was accepted")
	}
}

func TestOpenStoreDSNSources(t *testing.T) {
	ctx := context.Background()
	missing := PostgresConfig{DSNEnv: "TRUSTGATE_TEST_UNSET_DSN_VARIABLE"}
	if _, err := OpenStore(ctx, StoreConfig{Driver: "postgres", PostgresConfig: missing}); err == nil || !strings.Contains(err.Error(), "unset or empty") {
		t.Fatalf("unset variable: %v", err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(ctx, StoreConfig{Driver: "postgres", PostgresConfig: PostgresConfig{DSNFile: empty}}); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("empty file: %v", err)
	}

	dsn := pgtest.Schema(t)
	file := filepath.Join(t.TempDir(), "dsn")
	if err := os.WriteFile(file, []byte(dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TRUSTGATE_TEST_DSN", dsn)
	var stores []store.Store
	for _, pc := range []PostgresConfig{{DSN: dsn}, {DSNFile: file}, {DSNEnv: "TRUSTGATE_TEST_DSN"}} {
		st, err := OpenStore(ctx, StoreConfig{Driver: "postgres", PostgresConfig: pc})
		if err != nil {
			t.Fatalf("%+v: %v", pc, err)
		}
		defer st.Close()
		stores = append(stores, st)
	}
	// All three reach the same database: what one writes the others read.
	if err := stores[0].Resources().Put(ctx, store.Resource{Path: "p", Sealed: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	for _, st := range stores[1:] {
		if r, err := st.Resources().Get(ctx, "p"); err != nil || string(r.Sealed) != "x" {
			t.Fatalf("not the same database: %+v %v", r, err)
		}
	}
	if _, err := stores[2].Resources().Get(ctx, "q"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
}
