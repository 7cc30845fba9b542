package postgres

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "db ca"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestTLSOptions(t *testing.T) {
	ca := writeCA(t)
	for _, dsn := range []string{"host=db.example port=5432 user=tg dbname=tg", "postgres://tg@db.example:5432/tg"} {
		// No sslmode anywhere: verify-full against the system roots, not
		// libpq's "prefer".
		cfg, err := Options{DSN: dsn}.poolConfig()
		if err != nil {
			t.Fatal(err)
		}
		tc := cfg.ConnConfig.TLSConfig
		if tc == nil || tc.InsecureSkipVerify || tc.ServerName != "db.example" || len(cfg.ConnConfig.Fallbacks) != 0 {
			t.Fatalf("%s: default TLS %+v, fallbacks %d", dsn, tc, len(cfg.ConnConfig.Fallbacks))
		}
		// A root CA file replaces the system roots.
		cfg, err = Options{DSN: dsn, RootCAFile: ca}.poolConfig()
		if err != nil {
			t.Fatal(err)
		}
		if tc := cfg.ConnConfig.TLSConfig; tc == nil || tc.RootCAs == nil || !tc.RootCAs.Equal(mustPool(t, ca)) {
			t.Fatalf("%s: root CA not used", dsn)
		}
		// The option overrides the DSN.
		cfg, err = Options{DSN: dsn + sep(dsn) + "sslmode=verify-full", SSLMode: "disable"}.poolConfig()
		if err != nil || cfg.ConnConfig.TLSConfig != nil {
			t.Fatalf("%s: sslmode disable: %v %+v", dsn, err, cfg)
		}
		// The DSN's own sslmode counts when the option is empty.
		cfg, err = Options{DSN: dsn + sep(dsn) + "sslmode=disable"}.poolConfig()
		if err != nil || cfg.ConnConfig.TLSConfig != nil {
			t.Fatalf("%s: DSN's sslmode disable: %v", dsn, err)
		}
		// Modes that fall back to plaintext are refused, wherever set.
		for _, o := range []Options{{DSN: dsn + sep(dsn) + "sslmode=prefer"}, {DSN: dsn + sep(dsn) + "sslmode=allow"}, {DSN: dsn, SSLMode: "prefer"}} {
			if _, err := o.poolConfig(); err == nil {
				t.Errorf("%+v accepted", o)
			}
		}
		if _, err := (Options{DSN: dsn, RootCAFile: filepath.Join(t.TempDir(), "missing.pem")}).poolConfig(); err == nil {
			t.Errorf("%s: a missing root CA file accepted", dsn)
		}
	}
	// TLS does not apply to a unix socket, as in libpq.
	cfg, err := Options{DSN: "host=/run/postgresql dbname=tg", SSLMode: "verify-full"}.poolConfig()
	if err != nil || cfg.ConnConfig.TLSConfig != nil {
		t.Fatalf("unix socket: %v", err)
	}
}

func sep(dsn string) string {
	if strings.Contains(dsn, "://") {
		if strings.Contains(dsn, "?") {
			return "&"
		}
		return "?"
	}
	return " "
}

func mustPool(t *testing.T, path string) *x509.CertPool {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b)
	return p
}

func TestPoolAndTimeoutOptions(t *testing.T) {
	cfg, err := Options{DSN: "host=db dbname=tg"}.poolConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxConns != DefaultMaxConns || cfg.MinConns != DefaultMinConns || cfg.ConnConfig.RuntimeParams["statement_timeout"] != "10000" {
		t.Fatalf("defaults: max %d min %d timeout %q", cfg.MaxConns, cfg.MinConns, cfg.ConnConfig.RuntimeParams["statement_timeout"])
	}
	cfg, err = Options{DSN: "host=db dbname=tg", MaxConns: 40, MinConns: 4, StatementTimeout: 1500 * time.Millisecond}.poolConfig()
	if err != nil || cfg.MaxConns != 40 || cfg.MinConns != 4 || cfg.ConnConfig.RuntimeParams["statement_timeout"] != "1500" {
		t.Fatalf("set: %v %+v", err, cfg)
	}
	if cfg, err := (Options{DSN: "host=db", MaxConns: 1}).poolConfig(); err != nil || cfg.MinConns != 1 {
		t.Fatalf("max 1: the default min must shrink to it: %v", err)
	}
	for _, o := range []Options{
		{},
		{DSN: "host=db", MaxConns: 2, MinConns: 3},
		{DSN: "host=db", MaxConns: -1},
		{DSN: "host=db", StatementTimeout: time.Microsecond},
		{DSN: "host=db", SSLMode: "verify_full"},
	} {
		if _, err := o.poolConfig(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// TestErrorsHideThePassword checks that a malformed DSN's error does not
// repeat the password.
func TestErrorsHideThePassword(t *testing.T) {
	for _, dsn := range []string{"postgres://tg:s3cr3t@db:notaport/tg", "host=db password=s3cr3t port=notaport", "postgres://tg:s3cr3t@db%zz/tg"} {
		_, err := Options{DSN: dsn}.poolConfig()
		if err == nil {
			t.Fatalf("%q accepted", dsn)
		}
		if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}
