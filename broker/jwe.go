package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// minRSABits is the smallest RSA tee-pubkey answers are encrypted to.
const minRSABits = 2048

// teeRecipient picks the JWE key management algorithm for a caller's
// tee-pubkey JWK, as Trustee's KBS does (kbs/src/jwe): ECDH-ES+A256KW for
// an EC key on P-256 (or P-384, P-521), RSA-OAEP-256 for an RSA key.
// Trustee's deprecated RSA1_5 is refused.
func teeRecipient(raw json.RawMessage) (jose.Recipient, error) {
	if len(raw) == 0 {
		return jose.Recipient{}, errors.New("the token carries no tee-pubkey")
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(raw); err != nil {
		return jose.Recipient{}, fmt.Errorf("not a JWK: %w", err)
	}
	if jwk.Algorithm == string(jose.RSA1_5) {
		return jose.Recipient{}, errors.New("RSA1_5 is not supported: use RSA-OAEP-256")
	}
	switch k := jwk.Key.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: k}, nil
		}
		return jose.Recipient{}, fmt.Errorf("EC curve %s is not supported: want P-256", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return jose.Recipient{}, fmt.Errorf("RSA key of %d bits: want at least %d", k.N.BitLen(), minRSABits)
		}
		return jose.Recipient{Algorithm: jose.RSA_OAEP_256, Key: k}, nil
	default:
		return jose.Recipient{}, fmt.Errorf("key type %T: want an EC (P-256) or RSA public key", jwk.Key)
	}
}

// encryptJWE encrypts plaintext to rcpt with A256GCM and returns the JWE in
// flattened JSON serialization (RFC 7516 section 7.2.2), the shape of
// Trustee's Response: protected, encrypted_key, iv, ciphertext, tag.
func encryptJWE(rcpt jose.Recipient, plaintext []byte) ([]byte, error) {
	enc, err := jose.NewEncrypter(jose.A256GCM, rcpt, nil)
	if err != nil {
		return nil, fmt.Errorf("jwe: %w", err)
	}
	obj, err := enc.Encrypt(plaintext)
	if err != nil {
		return nil, fmt.Errorf("jwe: %w", err)
	}
	out := obj.FullSerialize()
	if out == "" {
		return nil, errors.New("jwe: serialization failed")
	}
	return []byte(out), nil
}
