package broker

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/go-jose/go-jose/v4"
)

// AdminKeyID is the "kid" of an admin key: its RFC 7638 JWK thumbprint
// (SHA-256, base64url), so that a JWKS can hold several admin keys.
func AdminKeyID(pub crypto.PublicKey) (string, error) {
	t, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("admin key id: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(t), nil
}

// CreateAdminKey generates an ECDSA P-256 admin signing key, writes it to
// privPath (PKCS #8 PEM, mode 0600, never overwritten) and makes cfg trust
// it: its public key is written to cfg.PublicKeyFile (0600, never
// overwritten: one file holds one key), or added to cfg.JWKSFile (created
// 0600 if missing). It returns the key's ID. Nothing is left behind when
// it fails.
func CreateAdminKey(privPath string, cfg AdminConfig) (string, error) {
	if cfg.PublicKeyFile == "" && cfg.JWKSFile == "" {
		return "", errors.New("admin key: the configuration sets neither admin.public_key_file nor admin.jwks_file, so the broker would not trust the key; set one of them")
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("admin key: %w", err)
	}
	kid, err := AdminKeyID(&priv.PublicKey)
	if err != nil {
		return "", err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("admin key: %w", err)
	}
	if err := writeNew(privPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})); err != nil {
		return "", fmt.Errorf("admin key: %w", err)
	}
	if err := trustAdminKey(cfg, &priv.PublicKey, kid); err != nil {
		_ = os.Remove(privPath)
		return "", err
	}
	return kid, nil
}

func trustAdminKey(cfg AdminConfig, pub *ecdsa.PublicKey, kid string) error {
	if cfg.PublicKeyFile != "" {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return fmt.Errorf("admin key: %w", err)
		}
		if err := writeNew(cfg.PublicKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("admin.public_key_file %s already holds a key (one file trusts one key): keep using its private key, remove the file to replace it, or set admin.jwks_file to trust several keys", cfg.PublicKeyFile)
			}
			return fmt.Errorf("admin.public_key_file: %w", err)
		}
		return nil
	}
	var set jose.JSONWebKeySet
	data, err := os.ReadFile(cfg.JWKSFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("admin.jwks_file: %w", err)
	default:
		if err := json.Unmarshal(data, &set); err != nil {
			return fmt.Errorf("admin.jwks_file %s: %w", cfg.JWKSFile, err)
		}
	}
	set.Keys = append(set.Keys, jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"})
	out, err := json.MarshalIndent(set, "", "  ")
	if err != nil {
		return fmt.Errorf("admin.jwks_file: %w", err)
	}
	// Replace the file whole, so that the broker never reads half of it.
	tmp, err := os.CreateTemp(filepath.Dir(cfg.JWKSFile), ".jwks-*")
	if err != nil {
		return fmt.Errorf("admin.jwks_file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(out, '\n')); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("admin.jwks_file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("admin.jwks_file: %w", err)
	}
	if err := os.Rename(tmp.Name(), cfg.JWKSFile); err != nil {
		return fmt.Errorf("admin.jwks_file: %w", err)
	}
	return nil
}

// writeNew writes data to a new file at path, mode 0600; an existing file
// is an fs.ErrExist error.
func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(path)
		return err
	}
	return nil
}

// LoadAdminSigningKey reads an admin signing key written by
// CreateAdminKey (PKCS #8 or SEC 1 PEM, ECDSA P-256).
func LoadAdminSigningKey(path string) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("admin signing key: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("admin signing key %s: no PEM block", path)
	}
	var k any
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("admin signing key %s: PEM block %q, want \"PRIVATE KEY\"", path, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("admin signing key %s: %w", path, err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("admin signing key %s: want an ECDSA P-256 key (trustgate admin key create)", path)
	}
	return ec, nil
}
