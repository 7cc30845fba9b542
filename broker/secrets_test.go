package broker_test

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/trustgate/trustgate/seal"
)

func checkDatabaseHoldsNoSecret(t *testing.T, h *harness, sealed []byte) {
	t.Helper()
	keyFile, err := os.ReadFile(h.sealKey)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := seal.ParseKeys(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	var db []byte
	for _, suffix := range []string{"", "-wal"} {
		b, _ := os.ReadFile(filepath.Join(h.dir, "trustgate.db"+suffix))
		db = append(db, b...)
	}
	if len(db) == 0 {
		t.Fatal("no database bytes read")
	}
	if bytes.Contains(db, keys[0]) {
		t.Fatal("the seal key is in the database")
	}
	s, _ := seal.New(keys[0])
	der, err := s.Open(sealed, []byte("jwt-signing/"+keyID(t, h)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x509.ParsePKCS8PrivateKey(der); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, der) || bytes.Contains(db, der[len(der)-40:]) {
		t.Fatal("a private signing key is in the database in the clear")
	}
	if !bytes.Contains(db, sealed[:40]) {
		t.Fatal("the sealed key is not where the test looked: the check above proves nothing")
	}
}

func keyID(t *testing.T, h *harness) string {
	ks, err := h.st.Keys().List(t.Context(), "jwt-signing")
	if err != nil || len(ks) == 0 {
		t.Fatal(err)
	}
	return ks[0].ID
}
