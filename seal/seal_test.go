package seal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func TestRoundTripAndTamper(t *testing.T) {
	s, err := New(testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("private key bytes")
	a, err := s.Seal(msg, []byte("kind/id"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.Seal(msg, []byte("kind/id"))
	if bytes.Equal(a, b) {
		t.Fatal("two seals of one value are equal: nonce reused")
	}
	if bytes.Contains(a, msg) {
		t.Fatal("plaintext visible in sealed value")
	}
	got, err := s.Open(a, []byte("kind/id"))
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("open: %q, %v", got, err)
	}
	if _, err := s.Open(a, []byte("kind/other")); !errors.Is(err, ErrOpen) {
		t.Fatalf("other aad: %v", err)
	}
	for i := range a {
		c := bytes.Clone(a)
		c[i] ^= 0x80
		if _, err := s.Open(c, []byte("kind/id")); !errors.Is(err, ErrOpen) {
			t.Fatalf("flipped byte %d: %v", i, err)
		}
	}
	if _, err := s.Open(a[:len(a)-1], []byte("kind/id")); !errors.Is(err, ErrOpen) {
		t.Fatalf("truncated: %v", err)
	}
}

func TestRotation(t *testing.T) {
	old, _ := New(testKey(1))
	sealedOld, _ := old.Seal([]byte("v"), nil)
	rotated, err := New(testKey(2), testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	if v, err := rotated.Open(sealedOld, nil); err != nil || string(v) != "v" {
		t.Fatalf("old value under rotated sealer: %q %v", v, err)
	}
	sealedNew, _ := rotated.Seal([]byte("w"), nil)
	id := KeyID(testKey(2))
	if !bytes.Equal(sealedNew[4:12], id[:]) {
		t.Fatal("new value not sealed under the first key")
	}
	if _, err := old.Open(sealedNew, nil); !errors.Is(err, ErrOpen) || !strings.Contains(err.Error(), "does not hold") {
		t.Fatalf("new value under old sealer: %v", err)
	}
}

func TestNewRejectsBadKeys(t *testing.T) {
	if _, err := New(); err == nil {
		t.Fatal("no keys accepted")
	}
	if _, err := New(make([]byte, 16)); err == nil {
		t.Fatal("short key accepted")
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "seal.key")
	if err := GenerateKeyFile(p); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
	if err := GenerateKeyFile(p); err == nil {
		t.Fatal("overwrote an existing key file")
	}
	s, err := LoadKeyFile(p)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := s.Seal([]byte("x"), nil)
	s2, _ := LoadKeyFile(p)
	if got, err := s2.Open(v, nil); err != nil || string(got) != "x" {
		t.Fatalf("reloaded key: %q %v", got, err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(p); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("world-readable key file: %v", err)
	}
}

func TestParseKeysErrors(t *testing.T) {
	for _, in := range []string{"", "# only a comment\n", "trustgate-seal-key-v1\n", "other AAAA\n", "trustgate-seal-key-v1 !!!\n", "trustgate-seal-key-v1 AAAA\n"} {
		if _, err := ParseKeys([]byte(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func FuzzOpen(f *testing.F) {
	s, _ := New(testKey(7))
	v, _ := s.Seal([]byte("seed"), []byte("aad"))
	f.Add(v, []byte("aad"))
	f.Add([]byte("tgs1"), []byte{})
	// Fuzz workers run this setup again with a fresh random nonce, so the
	// property cannot name v: whatever opens must be what this key sealed,
	// "seed" under "aad", and nothing else.
	f.Fuzz(func(t *testing.T, sealed, aad []byte) {
		pt, err := s.Open(sealed, aad)
		if err == nil && (string(pt) != "seed" || string(aad) != "aad") {
			t.Fatalf("forged value opened: %q under %q", pt, aad)
		}
	})
}

func FuzzParseKeys(f *testing.F) {
	f.Add([]byte("trustgate-seal-key-v1 " + strings.Repeat("A", 43) + "=\n"))
	f.Add([]byte("# c\n\ntrustgate-seal-key-v1 x y\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := ParseKeys(data)
		if err == nil {
			for _, k := range keys {
				if len(k) != KeySize {
					t.Fatalf("key of %d bytes accepted", len(k))
				}
			}
		}
	})
}
