// Package reportdata computes the report data that binds RCAR evidence to
// one exchange, the one function the broker (which checks it) and the
// client (which computes it) share.
package reportdata

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"hash"

	"github.com/gowebpki/jcs"
)

// Hash algorithm names as KBS protocol 0.4.0 carries them in
// extra-params.
const (
	SHA256 = "sha256"
	SHA384 = "sha384"
	SHA512 = "sha512"
)

// Compute returns hashAlg over the JCS (RFC 8785) form of
// {"tee-pubkey", "nonce", "additional-evidence"}, as Trustee's
// kbs/src/attestation/backend.rs builds it and attestation-service/src/lib.rs
// hashes it. teePubKey is the JWK exactly as sent in runtime-data.
func Compute(hashAlg string, teePubKey json.RawMessage, nonce, additionalEvidence string) ([]byte, error) {
	var h hash.Hash
	switch hashAlg {
	case SHA256:
		h = sha256.New()
	case SHA384:
		h = sha512.New384()
	case SHA512:
		h = sha512.New()
	default:
		return nil, fmt.Errorf("hash algorithm %q: want sha256, sha384 or sha512", hashAlg)
	}
	doc, err := json.Marshal(struct {
		TEEPubKey json.RawMessage `json:"tee-pubkey"`
		Nonce     string          `json:"nonce"`
		Extra     string          `json:"additional-evidence"`
	}{teePubKey, nonce, additionalEvidence})
	if err != nil {
		return nil, fmt.Errorf("runtime data: %w", err)
	}
	canon, err := jcs.Transform(doc)
	if err != nil {
		return nil, fmt.Errorf("runtime data: JCS: %w", err)
	}
	h.Write(canon)
	return h.Sum(nil), nil
}
