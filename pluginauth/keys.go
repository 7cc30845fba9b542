package pluginauth

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// KeySize is the length in bytes of X25519 private and public keys.
const KeySize = 32

// maxKeyFileSize bounds how much of a key file is read; a key file holds 44
// base64 characters and a newline.
const maxKeyFileSize = 256

// PublicKey is an X25519 public key: the identity of a plugin (or, in mutual
// mode, of the server). Its text form is the standard base64 of its 32 bytes,
// as WireGuard prints it. The zero value is no key.
type PublicKey struct {
	b     [KeySize]byte
	valid bool
}

// ParsePublicKey parses the standard base64 form of a 32-byte X25519 public
// key, as printed by "trustgate keygen" or "wg pubkey". Surrounding white
// space is ignored. A low-order point is refused: every key agreement with
// it gives the same all-zero secret, so it proves nothing.
func ParsePublicKey(s string) (PublicKey, error) {
	raw, err := decodeKey(s)
	if err != nil {
		return PublicKey{}, fmt.Errorf("parse public key: %w", err)
	}
	k, err := publicKeyFromBytes(raw)
	if err != nil {
		return PublicKey{}, err
	}
	if lowOrder(raw) {
		return PublicKey{}, errors.New("public key is a low-order X25519 point (all-zero or another small-order encoding); no plugin can own it, use a key printed by \"trustgate keygen\"")
	}
	return k, nil
}

// lowOrderProbe is a fixed scalar for lowOrder; it is not a secret.
var lowOrderProbe = func() *ecdh.PrivateKey {
	k, err := ecdh.X25519().NewPrivateKey([]byte("trustgate pluginauth probe key!!"))
	if err != nil {
		panic(err)
	}
	return k
}()

// lowOrder reports whether raw is a point of small order, in any of its
// encodings: X25519 clamps scalars to multiples of the cofactor, so the
// shared secret with such a point is all zero for every key, which
// crypto/ecdh reports as an error.
func lowOrder(raw []byte) bool {
	pub, err := ecdh.X25519().NewPublicKey(raw)
	if err != nil {
		return true
	}
	_, err = lowOrderProbe.ECDH(pub)
	return err != nil
}

// publicKeyFromBytes checks that raw is a usable X25519 public key.
func publicKeyFromBytes(raw []byte) (PublicKey, error) {
	if len(raw) != KeySize {
		return PublicKey{}, fmt.Errorf("public key has %d bytes, want %d", len(raw), KeySize)
	}
	if _, err := ecdh.X25519().NewPublicKey(raw); err != nil {
		return PublicKey{}, fmt.Errorf("public key: %w", err)
	}
	var k PublicKey
	copy(k.b[:], raw)
	k.valid = true
	return k, nil
}

// IsZero reports whether k holds no key.
func (k PublicKey) IsZero() bool { return !k.valid }

// Bytes returns a copy of the key's 32 bytes, or nil for the zero key.
func (k PublicKey) Bytes() []byte {
	if !k.valid {
		return nil
	}
	return append([]byte(nil), k.b[:]...)
}

// String returns the standard base64 form of the key (WireGuard style), or
// "" for the zero key.
func (k PublicKey) String() string {
	if !k.valid {
		return ""
	}
	return base64.StdEncoding.EncodeToString(k.b[:])
}

// Fingerprint returns "SHA256:" followed by the unpadded base64 of the
// SHA-256 digest of the key, in the style of ssh-keygen -l, or "" for the
// zero key.
func (k PublicKey) Fingerprint() string {
	if !k.valid {
		return ""
	}
	sum := sha256.Sum256(k.b[:])
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// Equal reports whether k and o are the same key. Public keys are not
// secret, so the comparison need not be constant-time.
func (k PublicKey) Equal(o PublicKey) bool { return k == o }

// MarshalText implements encoding.TextMarshaler with the base64 form.
func (k PublicKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with the base64 form.
func (k *PublicKey) UnmarshalText(text []byte) error {
	p, err := ParsePublicKey(string(text))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// PrivateKey is a static X25519 private key. Its secret never appears in
// String, GoString, fmt verbs or slog output: they all print the public key
// only. Only WriteFile and MarshalPrivate reveal it.
type PrivateKey struct {
	k *ecdh.PrivateKey
}

// GenerateKey returns a new random private key.
func GenerateKey() (*PrivateKey, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate X25519 key: %w", err)
	}
	return &PrivateKey{k: k}, nil
}

// ParsePrivateKey parses the standard base64 form of a 32-byte X25519
// private key, as written by WriteFile or "wg genkey".
func ParsePrivateKey(s string) (*PrivateKey, error) {
	raw, err := decodeKey(s)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	defer clear(raw)
	return privateKeyFromBytes(raw)
}

func privateKeyFromBytes(raw []byte) (*PrivateKey, error) {
	if len(raw) != KeySize {
		return nil, fmt.Errorf("private key has %d bytes, want %d", len(raw), KeySize)
	}
	k, err := ecdh.X25519().NewPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	return &PrivateKey{k: k}, nil
}

// LoadPrivateKeyFile reads a private key file written by WriteFile (or by
// "wg genkey"). It refuses a file that group or others may read, since
// anyone who reads it can pose as the key's owner.
func LoadPrivateKeyFile(path string) (*PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open private key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat private key %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("private key %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("private key %s has mode %04o, so group or others can read it; run: chmod 600 %s", path, perm, path)
	}
	buf, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read private key %s: %w", path, err)
	}
	defer clear(buf)
	if len(buf) > maxKeyFileSize {
		return nil, fmt.Errorf("private key %s is larger than %d bytes; it is not a key file", path, maxKeyFileSize)
	}
	k, err := ParsePrivateKey(string(buf))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// WriteFile writes the key's base64 form and a newline to a new file at path
// with mode 0600. It refuses to overwrite an existing file.
func (k *PrivateKey) WriteFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create private key file (an existing key is never overwritten): %w", err)
	}
	text := k.MarshalPrivate()
	defer clear(text)
	if _, err := f.Write(text); err != nil {
		f.Close()
		return fmt.Errorf("write private key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync private key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close private key %s: %w", path, err)
	}
	return nil
}

// MarshalPrivate returns the secret key's base64 form followed by a newline,
// the content of a key file. Callers should clear the slice after use.
func (k *PrivateKey) MarshalPrivate() []byte {
	raw := k.k.Bytes()
	defer clear(raw)
	out := make([]byte, base64.StdEncoding.EncodedLen(len(raw))+1)
	base64.StdEncoding.Encode(out, raw)
	out[len(out)-1] = '\n'
	return out
}

// Public returns the public key that belongs to k.
func (k *PrivateKey) Public() PublicKey {
	var p PublicKey
	copy(p.b[:], k.k.PublicKey().Bytes())
	p.valid = true
	return p
}

// String describes the key by its public half; the secret is never printed.
func (k *PrivateKey) String() string {
	if k == nil || k.k == nil {
		return "PrivateKey(none)"
	}
	return "PrivateKey(public=" + k.Public().String() + ")"
}

// GoString is like String, so that %#v does not reveal the secret.
func (k *PrivateKey) GoString() string { return k.String() }

// Format implements fmt.Formatter so that every verb (%v, %+v, %x, %s ...)
// prints String and never the secret bytes.
func (k *PrivateKey) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, k.String()) }

// LogValue implements slog.LogValuer: loggers see the public key only.
func (k *PrivateKey) LogValue() slog.Value { return slog.StringValue(k.String()) }

// ecdh returns X25519(k, peer).
func (k *PrivateKey) ecdh(peer []byte) ([]byte, error) {
	return x25519(k.k, peer)
}

func x25519(priv *ecdh.PrivateKey, peer []byte) ([]byte, error) {
	pub, err := ecdh.X25519().NewPublicKey(peer)
	if err != nil {
		return nil, fmt.Errorf("peer public key: %w", err)
	}
	s, err := priv.ECDH(pub)
	if err != nil {
		return nil, fmt.Errorf("X25519 with peer key (low-order point?): %w", err)
	}
	return s, nil
}

func decodeKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("empty key")
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not standard base64 (expected 44 characters like the output of \"trustgate keygen\"): %w", err)
	}
	if len(raw) != KeySize {
		clear(raw)
		return nil, fmt.Errorf("key has %d bytes, want %d", len(raw), KeySize)
	}
	return raw, nil
}
