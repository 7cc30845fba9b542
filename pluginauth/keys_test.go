package pluginauth

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// RFC 7748 section 6.1: Alice's key pair and the shared secret with Bob.
const (
	rfcAlicePrivate = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
	rfcAlicePublic  = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
	rfcBobPublic    = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
	rfcShared       = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
)

func b64hex(t *testing.T, h string) string {
	t.Helper()
	b, err := hex.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func TestRFC7748Vector(t *testing.T) {
	k, err := ParsePrivateKey(b64hex(t, rfcAlicePrivate))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := k.Public().String(), b64hex(t, rfcAlicePublic); got != want {
		t.Errorf("public key %s, RFC 7748 says %s", got, want)
	}
	bob, _ := hex.DecodeString(rfcBobPublic)
	s, err := k.ecdh(bob)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(s) != rfcShared {
		t.Errorf("shared secret %x, RFC 7748 says %s", s, rfcShared)
	}
}

// wg (wireguard-tools) is an independent implementation of the same key
// format; skipped where it is not installed.
func TestKeysMatchWireGuardTools(t *testing.T) {
	wg, err := exec.LookPath("wg")
	if err != nil {
		t.Skip("wg not installed (apt-get install wireguard-tools)")
	}
	out, err := exec.Command(wg, "genkey").Output()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "wg.key")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := LoadPrivateKeyFile(path)
	if err != nil {
		t.Fatalf("load a wg genkey file: %v", err)
	}
	cmd := exec.Command(wg, "pubkey")
	cmd.Stdin = bytes.NewReader(k.MarshalPrivate())
	pub, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := k.Public().String(), strings.TrimSpace(string(pub)); got != want {
		t.Errorf("public key %s, wg pubkey says %s", got, want)
	}
	if _, err := ParsePublicKey(string(pub)); err != nil {
		t.Errorf("parse wg pubkey output: %v", err)
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "plugin.key")
	k := mustKey(t)
	if err := k.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	if err := mustKey(t).WriteFile(path); err == nil {
		t.Error("WriteFile overwrote an existing key")
	}
	loaded, err := LoadPrivateKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Public().Equal(k.Public()) {
		t.Error("loaded key differs from the written one")
	}

	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPrivateKeyFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable key file: err = %v, want a refusal telling how to fix it", err)
	}

	for name, content := range map[string]string{
		"short":   base64.StdEncoding.EncodeToString(make([]byte, 31)),
		"garbage": "not a key at all!",
		"empty":   "",
		"huge":    strings.Repeat("A", 4096),
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadPrivateKeyFile(p); err == nil {
			t.Errorf("%s key file loaded", name)
		}
	}
	if _, err := LoadPrivateKeyFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestParsePublicKey(t *testing.T) {
	k := mustKey(t)
	p, err := ParsePublicKey(" " + k.Public().String() + "\n")
	if err != nil || !p.Equal(k.Public()) {
		t.Fatalf("round trip: %v", err)
	}
	for _, bad := range []string{"", "abc", base64.StdEncoding.EncodeToString(make([]byte, 33)), base64.RawStdEncoding.EncodeToString(make([]byte, 32))} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) succeeded", bad)
		}
	}
	var z PublicKey
	if !z.IsZero() || z.String() != "" || z.Fingerprint() != "" || z.Bytes() != nil {
		t.Error("zero PublicKey is not empty")
	}
	var u PublicKey
	if err := u.UnmarshalText([]byte(k.Public().String())); err != nil || !u.Equal(k.Public()) {
		t.Errorf("UnmarshalText: %v", err)
	}
}

// No way of printing or logging a private key reveals its secret.
func TestPrivateKeyNeverPrinted(t *testing.T) {
	k := mustKey(t)
	secretB64 := strings.TrimSpace(string(k.MarshalPrivate()))
	raw, _ := base64.StdEncoding.DecodeString(secretB64)
	secretHex := hex.EncodeToString(raw)

	var outputs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		outputs = append(outputs, fmt.Sprintf(verb, k))
	}
	type holder struct{ Key *PrivateKey }
	outputs = append(outputs, fmt.Sprintf("%+v", holder{k}), fmt.Sprintf("%#v", holder{k}), fmt.Sprint(k), k.String(), k.GoString())
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("key", "k", k, slog.Any("any", k))
	slog.New(slog.NewTextHandler(&logs, nil)).Info("key", "k", k)
	outputs = append(outputs, logs.String())
	for _, out := range outputs {
		if strings.Contains(out, secretB64) || strings.Contains(strings.ToLower(out), secretHex) || bytes.Contains([]byte(out), raw) {
			t.Errorf("output reveals the secret: %s", out)
		}
		if !strings.Contains(out, k.Public().String()) {
			t.Errorf("output does not name the public key: %s", out)
		}
	}
}

// lowOrderEncodings lists every 32-byte encoding of the X25519 points of
// small order: the u-coordinates 0, 1, p-1 and the two of order 8, their
// non-canonical forms u+p below 2^255, and each of these with the top bit
// set, which X25519 ignores.
func lowOrderEncodings(t *testing.T) map[string][]byte {
	t.Helper()
	p := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	order8a, _ := new(big.Int).SetString("325606250916557431795983626356110631294008115727848805560023387167927233504", 10)
	order8b, _ := new(big.Int).SetString("39382357235489614581723060781553021112529911719440698176882885853963445705823", 10)
	limit := new(big.Int).Lsh(big.NewInt(1), 255)
	out := map[string][]byte{}
	add := func(name string, u *big.Int) {
		if u.Cmp(limit) >= 0 {
			return
		}
		le := func(v *big.Int) []byte {
			b := make([]byte, 32)
			v.FillBytes(b)
			slices.Reverse(b)
			return b
		}
		out[name] = le(u)
		hi := le(u)
		hi[31] |= 0x80
		out[name+" with bit 255 set"] = hi
	}
	for name, u := range map[string]*big.Int{"0": big.NewInt(0), "1": big.NewInt(1), "p-1": new(big.Int).Sub(p, big.NewInt(1)), "order 8 (a)": order8a, "order 8 (b)": order8b} {
		add(name, u)
		add(name+"+p", new(big.Int).Add(u, p))
	}
	return out
}

func TestLowOrderKeysAreRefused(t *testing.T) {
	encs := lowOrderEncodings(t)
	// 0, 1, p-1, two of order 8, and 0+p, 1+p (the only ones below
	// 2^255 = p+19); each also with bit 255 set.
	if len(encs) != 14 {
		t.Fatalf("%d encodings, want 14", len(encs))
	}
	for name, raw := range encs {
		s := base64.StdEncoding.EncodeToString(raw)
		if _, err := ParsePublicKey(s); err == nil || !strings.Contains(err.Error(), "low-order") {
			t.Errorf("%s (%s): %v", name, s, err)
		}
		c := ServerConfig{RequireAuthentication: true, Roles: []RoleConfig{{Role: "r", Keys: []string{s}, Names: []string{"*"}, Indices: []string{"*"}}}}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "low-order") {
			t.Errorf("config with %s: %v", name, err)
		}
	}
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParsePublicKey(k.Public().String()); err != nil {
		t.Fatalf("a generated key: %v", err)
	}
}
