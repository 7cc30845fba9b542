package pluginauth

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// Labels bind every derived value to this protocol, version and algorithm.
const (
	transcriptLabel = "trustgate pluginauth v1 " + AlgorithmECDH
	keysInfo        = "trustgate pluginauth v1 keys"
)

// Nonces of the two directions. Each key seals at most two messages, and the
// keys are fresh per handshake, so a counter nonce never repeats.
const (
	nonceChallenge = 0 // server -> plugin
	nonceProof     = 0 // plugin -> server
	nonceOutcome   = 1 // server -> plugin
)

// sessionKeys are the two directional keys of one handshake.
type sessionKeys struct {
	serverToPlugin cipher.AEAD
	pluginToServer cipher.AEAD
}

// transcriptAfterChallenge hashes the label, the hello as sent, the server's
// ephemeral key and, in mutual mode, the server's static key:
//
//	TH2 = SHA-256(label || len16(hello) || hello || E || [S])
func transcriptAfterChallenge(helloBody []byte, ephemeral []byte, serverStatic []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(transcriptLabel))
	h.Write(binary.BigEndian.AppendUint16(nil, uint16(len(helloBody))))
	h.Write(helloBody)
	h.Write(ephemeral)
	h.Write(serverStatic)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// chain extends a transcript hash with a message: SHA-256(prev || body).
func chain(prev [32]byte, body []byte) [32]byte {
	h := sha256.New()
	h.Write(prev[:])
	h.Write(body)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// deriveKeys runs HKDF-SHA256 with the DH results as secret and TH2 as salt:
// the first 32 bytes key the server-to-plugin direction, the next 32 the
// plugin-to-server direction.
func deriveKeys(dhStatic, dhMutual []byte, th2 [32]byte) (*sessionKeys, error) {
	secret := make([]byte, 0, len(dhStatic)+len(dhMutual))
	secret = append(append(secret, dhStatic...), dhMutual...)
	defer clear(secret)
	okm, err := hkdf.Key(sha256.New, secret, th2[:], keysInfo, 2*chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("derive keys: %w", err)
	}
	defer clear(okm)
	s2p, err := chacha20poly1305.New(okm[:chacha20poly1305.KeySize])
	if err != nil {
		return nil, fmt.Errorf("server-to-plugin key: %w", err)
	}
	p2s, err := chacha20poly1305.New(okm[chacha20poly1305.KeySize:])
	if err != nil {
		return nil, fmt.Errorf("plugin-to-server key: %w", err)
	}
	return &sessionKeys{serverToPlugin: s2p, pluginToServer: p2s}, nil
}

// nonce returns the 96-bit nonce for counter n: four zero bytes and the
// counter in little-endian order, as in WireGuard.
func nonce(n uint64) []byte {
	var b [chacha20poly1305.NonceSize]byte
	binary.LittleEndian.PutUint64(b[4:], n)
	return b[:]
}

// proofOf is the plaintext the plugin seals to prove it opened the
// challenge: SHA-256 of the challenge, as in containerd/nri PR #183.
func proofOf(challenge []byte) [32]byte { return sha256.Sum256(challenge) }
