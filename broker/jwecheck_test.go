package broker_test

// An independent JWE decryptor written from RFC 7516, RFC 7518 (sections
// 4.6 and 4.3) and RFC 3394, sharing nothing with go-jose, to check the
// broker's answers against the specifications rather than one library.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

type jweHeader struct {
	Alg string `json:"alg"`
	Enc string `json:"enc"`
	EPK *struct {
		Kty string `json:"kty"`
		Crv string `json:"crv"`
		X   string `json:"x"`
		Y   string `json:"y"`
	} `json:"epk"`
	APU string `json:"apu"`
	APV string `json:"apv"`
}

// decryptByHand opens a flattened JWE with priv (*ecdsa.PrivateKey for
// ECDH-ES+A256KW, *rsa.PrivateKey for RSA-OAEP-256), content A256GCM.
func decryptByHand(doc []byte, priv any) ([]byte, error) {
	var j flattenedJWE
	if err := json.Unmarshal(doc, &j); err != nil {
		return nil, err
	}
	hb, err := b64.DecodeString(j.Protected)
	if err != nil {
		return nil, fmt.Errorf("protected: %w", err)
	}
	var h jweHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, fmt.Errorf("protected: %w", err)
	}
	if h.Enc != "A256GCM" {
		return nil, fmt.Errorf("enc %q", h.Enc)
	}
	ek, err := b64.DecodeString(j.EncryptedKey)
	if err != nil {
		return nil, err
	}
	var cek []byte
	switch k := priv.(type) {
	case *ecdsa.PrivateKey:
		if h.Alg != "ECDH-ES+A256KW" || h.EPK == nil || h.EPK.Crv != "P-256" {
			return nil, fmt.Errorf("header %s: want ECDH-ES+A256KW with a P-256 epk", hb)
		}
		x, err1 := b64.DecodeString(h.EPK.X)
		y, err2 := b64.DecodeString(h.EPK.Y)
		if err := errors.Join(err1, err2); err != nil || len(x) != 32 || len(y) != 32 {
			return nil, fmt.Errorf("epk: %v", err)
		}
		epk, err := ecdh.P256().NewPublicKey(append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, err
		}
		ours, err := k.ECDH()
		if err != nil {
			return nil, err
		}
		z, err := ours.ECDH(epk)
		if err != nil {
			return nil, err
		}
		apu, _ := b64.DecodeString(h.APU)
		apv, _ := b64.DecodeString(h.APV)
		kek := concatKDF(z, h.Alg, apu, apv, 256)
		cek, err = aesUnwrap(kek, ek)
		if err != nil {
			return nil, err
		}
	case *rsa.PrivateKey:
		if h.Alg != "RSA-OAEP-256" {
			return nil, fmt.Errorf("alg %q", h.Alg)
		}
		cek, err = rsa.DecryptOAEP(sha256.New(), nil, k, ek, nil)
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("key %T", priv)
	}
	iv, err1 := b64.DecodeString(j.IV)
	ct, err2 := b64.DecodeString(j.Ciphertext)
	tag, err3 := b64.DecodeString(j.Tag)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	// RFC 7516 5.2 step 14: the AAD is the ASCII of the encoded header.
	return gcm.Open(nil, iv, append(ct, tag...), []byte(j.Protected))
}

// concatKDF is NIST SP 800-56A's Concat KDF with SHA-256 as RFC 7518 4.6.2
// parameterises it.
func concatKDF(z []byte, alg string, apu, apv []byte, bits uint32) []byte {
	lenPrefixed := func(b []byte) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
	}
	var other []byte
	other = append(other, lenPrefixed([]byte(alg))...)
	other = append(other, lenPrefixed(apu)...)
	other = append(other, lenPrefixed(apv)...)
	other = binary.BigEndian.AppendUint32(other, bits)
	var out []byte
	for counter := uint32(1); len(out)*8 < int(bits); counter++ {
		h := sha256.New()
		h.Write(binary.BigEndian.AppendUint32(nil, counter))
		h.Write(z)
		h.Write(other)
		out = h.Sum(out)
	}
	return out[:bits/8]
}

// aesUnwrap is RFC 3394 section 2.2.2 (index-based key unwrap).
func aesUnwrap(kek, wrapped []byte) ([]byte, error) {
	if len(wrapped)%8 != 0 || len(wrapped) < 24 {
		return nil, fmt.Errorf("wrapped key of %d bytes", len(wrapped))
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := len(wrapped)/8 - 1
	a := make([]byte, 8)
	copy(a, wrapped[:8])
	r := make([][]byte, n)
	for i := range r {
		r[i] = append([]byte(nil), wrapped[8*(i+1):8*(i+2)]...)
	}
	buf := make([]byte, 16)
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(buf[:8], binary.BigEndian.Uint64(a)^t)
			copy(buf[8:], r[i-1])
			block.Decrypt(buf, buf)
			copy(a, buf[:8])
			copy(r[i-1], buf[8:])
		}
	}
	iv := []byte{0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6}
	if subtle.ConstantTimeCompare(a, iv) != 1 {
		return nil, errors.New("key unwrap: integrity check failed")
	}
	var out []byte
	for _, b := range r {
		out = append(out, b...)
	}
	return out, nil
}
