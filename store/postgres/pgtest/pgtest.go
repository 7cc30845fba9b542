// Package pgtest gives tests an empty PostgreSQL schema of their own on the
// server that TRUSTGATE_TEST_POSTGRES names (a DSN; .ci/run starts one with
// scripts/pg-test-cluster.sh). A test that calls it is skipped only when
// the variable is unset.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Env names the variable that holds the test server's DSN.
const Env = "TRUSTGATE_TEST_POSTGRES"

// Server returns the test server's DSN, or skips the test when Env is unset.
func Server(tb testing.TB) string {
	tb.Helper()
	dsn := os.Getenv(Env)
	if dsn == "" {
		tb.Skipf("%s is not set: start a server with scripts/pg-test-cluster.sh and export its DSN", Env)
	}
	return dsn
}

// Schema creates an empty schema that is dropped when the test ends, and
// returns a DSN whose connections use it (by search_path).
func Schema(tb testing.TB) string {
	tb.Helper()
	dsn := Server(tb)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatalf("connect to %s: %v", Env, err)
	}
	if _, err := admin.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		_ = admin.Close(ctx)
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if _, err := admin.Exec(ctx, `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
		}
		_ = admin.Close(ctx)
	})
	return withSearchPath(tb, dsn, schema)
}

// withSearchPath adds search_path to a DSN: pgx passes keywords it does not
// know to the server as run-time parameters.
func withSearchPath(tb testing.TB, dsn, schema string) string {
	if strings.Contains(dsn, "://") {
		u, err := url.Parse(dsn)
		if err != nil {
			tb.Fatalf("%s: not a valid URL", Env)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}
