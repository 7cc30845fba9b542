package postgres

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/trustgate/trustgate/store/postgres/pgtest"
)

// TestTLSToTheServer connects to the test server's TLS port (on 127.0.0.1,
// which refuses plaintext; scripts/pg-test-cluster.sh sets it up) through
// the options' sslmode and root CA, and checks what PostgreSQL reports
// about each connection.
func TestTLSToTheServer(t *testing.T) {
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, pgtest.Server(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var ssl, certFile, port, user, dbname string
	if err := admin.QueryRow(ctx, `SELECT current_setting('ssl'), current_setting('ssl_cert_file'), current_setting('port'), current_user, current_database()`).
		Scan(&ssl, &certFile, &port, &user, &dbname); err != nil {
		t.Fatal(err)
	}
	if ssl != "on" {
		t.Fatalf("the test server has ssl = %s: it needs TLS with a certificate for 127.0.0.1, as scripts/pg-test-cluster.sh sets up", ssl)
	}
	tcp := fmt.Sprintf("host=127.0.0.1 port=%s user=%s dbname=%s", port, user, dbname)
	connect := func(o Options) (bool, error) {
		cfg, err := o.poolConfig()
		if err != nil {
			return false, err
		}
		conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
		if err != nil {
			return false, err
		}
		defer conn.Close(ctx)
		var encrypted bool
		err = conn.QueryRow(ctx, `SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&encrypted)
		return encrypted, err
	}
	for _, o := range []Options{
		{DSN: tcp, SSLMode: "verify-full", RootCAFile: certFile},
		{DSN: tcp, RootCAFile: certFile}, // the default is verify-full
		{DSN: tcp + " sslmode=verify-ca sslrootcert=" + certFile},
		{DSN: tcp, SSLMode: "require"},
	} {
		if encrypted, err := connect(o); err != nil || !encrypted {
			t.Errorf("%+v: encrypted %v, %v", o, encrypted, err)
		}
	}
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{DSN: tcp, SSLMode: "verify-full", RootCAFile: writeCA(t)}, "certificate"}, // another CA
		{Options{DSN: tcp}, "certificate"},                                                 // the system's roots
		{Options{DSN: tcp + " sslmode=verify-full sslrootcert=" + certFile, SSLMode: "disable"}, "no encryption"},
	} {
		if _, err := connect(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: want an error about %q, got %v", tc.o, tc.want, err)
		}
	}
}
