// Package seal encrypts secrets at rest under a key that lives in a file,
// never in the database.
//
// A sealed value is
//
//	"tgs1" | key id (8 bytes) | nonce (24 bytes) | XChaCha20-Poly1305 ciphertext
//
// The key id is the first 8 bytes of SHA-256 over the key, so a Sealer that
// holds several keys opens values sealed under any of them while sealing new
// values under the first: rotating the key is "put the new key first in the
// file, re-seal, then drop the old line". The caller's associated data (for
// example the record's kind and id) is authenticated too, so a sealed value
// cannot be moved to another record.
package seal

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"
)

// KeySize is the size of a sealing key in bytes.
const KeySize = chacha20poly1305.KeySize

const (
	magic    = "tgs1"
	idSize   = 8
	header   = len(magic) + idSize + chacha20poly1305.NonceSizeX
	overhead = header + chacha20poly1305.Overhead
	// fileTag starts every key line in a key file.
	fileTag = "trustgate-seal-key-v1"
)

// ErrOpen means a sealed value could not be opened: it was not sealed by any
// key this Sealer holds, or it was altered.
var ErrOpen = errors.New("seal: cannot open sealed value")

type key struct {
	id   [idSize]byte
	aead interface {
		Seal(dst, nonce, plaintext, additionalData []byte) []byte
		Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error)
	}
}

// Sealer seals with its first key and opens with any of its keys. It is safe
// for concurrent use.
type Sealer struct {
	keys []key
}

// New returns a Sealer over keys, each KeySize bytes; the first one seals.
func New(keys ...[]byte) (*Sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("seal: no key")
	}
	s := &Sealer{}
	for i, k := range keys {
		if len(k) != KeySize {
			return nil, fmt.Errorf("seal: key %d is %d bytes, want %d", i, len(k), KeySize)
		}
		a, err := chacha20poly1305.NewX(k)
		if err != nil {
			return nil, fmt.Errorf("seal: key %d: %w", i, err)
		}
		s.keys = append(s.keys, key{id: KeyID(k), aead: a})
	}
	return s, nil
}

// KeyID is the identifier sealed values carry for key k.
func KeyID(k []byte) [8]byte {
	sum := sha256.Sum256(k)
	var id [idSize]byte
	copy(id[:], sum[:idSize])
	return id
}

// Seal encrypts plaintext, authenticating aad with it.
func (s *Sealer) Seal(plaintext, aad []byte) ([]byte, error) {
	k := s.keys[0]
	out := make([]byte, header, overhead+len(plaintext))
	copy(out, magic)
	copy(out[len(magic):], k.id[:])
	nonce := out[len(magic)+idSize : header]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	return k.aead.Seal(out, nonce, plaintext, aad), nil
}

// Open decrypts a value that Seal returned for the same aad. Any other input
// returns an error wrapping ErrOpen.
func (s *Sealer) Open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < overhead || string(sealed[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: not a sealed value (%d bytes)", ErrOpen, len(sealed))
	}
	id := sealed[len(magic) : len(magic)+idSize]
	nonce := sealed[len(magic)+idSize : header]
	for _, k := range s.keys {
		if subtle.ConstantTimeCompare(k.id[:], id) != 1 {
			continue
		}
		pt, err := k.aead.Open(nil, nonce, sealed[header:], aad)
		if err != nil {
			return nil, fmt.Errorf("%w: authentication failed", ErrOpen)
		}
		return pt, nil
	}
	return nil, fmt.Errorf("%w: sealed under key %x, which this server does not hold", ErrOpen, id)
}

// GenerateKeyFile writes a new random key to path with mode 0600. It fails if
// path exists, so it never overwrites a key that protects data.
func GenerateKeyFile(path string) error {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return fmt.Errorf("seal: generate key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("seal: create key file: %w", err)
	}
	_, err = fmt.Fprintf(f, "# trustgate sealing key: keep it out of the database and its backups.\n%s %s\n", fileTag, base64.StdEncoding.EncodeToString(k))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("seal: write key file: %w", err)
	}
	return nil
}

// LoadKeyFile reads a key file and returns a Sealer over its keys, the first
// one sealing. The file must not be readable or writable by group or others.
func LoadKeyFile(path string) (*Sealer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("seal: key file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("seal: key file %s has mode %v: want 0600 (chmod 600 %s)", path, st.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("seal: key file: %w", err)
	}
	keys, err := ParseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("seal: key file %s: %w", path, err)
	}
	return New(keys...)
}

// ParseKeys parses key file contents: lines "trustgate-seal-key-v1 <base64
// key>", with blank lines and lines starting with # ignored.
func ParseKeys(data []byte) ([][]byte, error) {
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 || f[0] != fileTag {
			return nil, fmt.Errorf("line %d: want %q followed by a base64 key", n, fileTag)
		}
		k, err := base64.StdEncoding.DecodeString(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: key is not base64: %w", n, err)
		}
		if len(k) != KeySize {
			return nil, fmt.Errorf("line %d: key is %d bytes, want %d", n, len(k), KeySize)
		}
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("no key in file")
	}
	return keys, nil
}
