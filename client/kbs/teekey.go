package kbs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// KeyType names the kind of TEE key GenerateTEEKey makes.
type KeyType string

// TEE key types, and the JWE key management algorithm the broker uses
// for each (as Trustee's KBS does).
const (
	// KeyEC is an EC P-256 key; answers use ECDH-ES+A256KW.
	KeyEC KeyType = "ec"
	// KeyRSA is a 3072-bit RSA key; answers use RSA-OAEP-256.
	KeyRSA KeyType = "rsa"
)

// rsaBits is the size of generated RSA TEE keys; the broker refuses fewer
// than 2048.
const rsaBits = 3072

// TEEKey is the caller's TEE key pair: its public half goes into
// runtime-data.tee-pubkey (and so into the attestation token), and the
// broker encrypts confidential answers to it.
type TEEKey struct {
	priv crypto.Signer
	alg  jose.KeyAlgorithm
	pub  json.RawMessage
}

// GenerateTEEKey makes a fresh TEE key of type t.
func GenerateTEEKey(t KeyType) (*TEEKey, error) {
	var priv crypto.Signer
	var err error
	switch t {
	case KeyEC, "":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyRSA:
		priv, err = rsa.GenerateKey(rand.Reader, rsaBits)
	default:
		return nil, fmt.Errorf("kbs: TEE key type %q: want %q or %q", t, KeyEC, KeyRSA)
	}
	if err != nil {
		return nil, fmt.Errorf("kbs: generate TEE key: %w", err)
	}
	return NewTEEKey(priv)
}

// NewTEEKey wraps an existing private key: an *ecdsa.PrivateKey on P-256
// or an *rsa.PrivateKey of at least 2048 bits.
func NewTEEKey(priv crypto.PrivateKey) (*TEEKey, error) {
	k := &TEEKey{}
	switch p := priv.(type) {
	case *ecdsa.PrivateKey:
		if p.Curve != elliptic.P256() {
			return nil, fmt.Errorf("kbs: TEE key on curve %s: want P-256", p.Curve.Params().Name)
		}
		k.priv, k.alg = p, jose.ECDH_ES_A256KW
	case *rsa.PrivateKey:
		if p.N.BitLen() < 2048 {
			return nil, fmt.Errorf("kbs: RSA TEE key of %d bits: want at least 2048", p.N.BitLen())
		}
		k.priv, k.alg = p, jose.RSA_OAEP_256
	default:
		return nil, fmt.Errorf("kbs: TEE key type %T: want *ecdsa.PrivateKey (P-256) or *rsa.PrivateKey", priv)
	}
	pub, err := jose.JSONWebKey{Key: k.priv.Public(), Algorithm: string(k.alg)}.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("kbs: TEE public key JWK: %w", err)
	}
	k.pub = pub
	return k, nil
}

// PublicJWK is the public key as sent in runtime-data.tee-pubkey, with
// "alg" naming the JWE key management algorithm.
func (k *TEEKey) PublicJWK() json.RawMessage { return append(json.RawMessage(nil), k.pub...) }

// Private returns the private key.
func (k *TEEKey) Private() crypto.Signer { return k.priv }

// maxJWE bounds the JWE Open accepts.
const maxJWE = maxResponse

// Open decrypts a JWE (flattened or general JSON, or compact) that the
// broker encrypted to this key: ECDH-ES+A256KW for an EC key or
// RSA-OAEP-256 for an RSA key, content A256GCM. Any other algorithm is an
// error.
func (k *TEEKey) Open(jwe []byte) ([]byte, error) {
	if len(jwe) > maxJWE {
		return nil, fmt.Errorf("kbs: JWE of %d bytes exceeds %d", len(jwe), maxJWE)
	}
	keyAlgs, encs := []jose.KeyAlgorithm{k.alg}, []jose.ContentEncryption{jose.A256GCM}
	var obj *jose.JSONWebEncryption
	var err error
	if t := bytes.TrimSpace(jwe); len(t) > 0 && t[0] == '{' {
		obj, err = jose.ParseEncryptedJSON(string(t), keyAlgs, encs)
	} else {
		obj, err = jose.ParseEncryptedCompact(string(t), keyAlgs, encs)
	}
	if err != nil {
		return nil, fmt.Errorf("kbs: answer is not a JWE for this key (%s, A256GCM): %w", k.alg, err)
	}
	plain, err := obj.Decrypt(k.priv)
	if err != nil {
		return nil, fmt.Errorf("kbs: decrypt JWE: %w", err)
	}
	return plain, nil
}

// MarshalJSON encodes the key pair as a private JWK, for session files.
func (k *TEEKey) MarshalJSON() ([]byte, error) {
	return jose.JSONWebKey{Key: k.priv, Algorithm: string(k.alg)}.MarshalJSON()
}

// UnmarshalJSON decodes a private JWK written by MarshalJSON.
func (k *TEEKey) UnmarshalJSON(b []byte) error {
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(b); err != nil {
		return fmt.Errorf("kbs: TEE key JWK: %w", err)
	}
	if jwk.IsPublic() {
		return errors.New("kbs: TEE key JWK holds no private key")
	}
	nk, err := NewTEEKey(jwk.Key)
	if err != nil {
		return err
	}
	*k = *nk
	return nil
}
