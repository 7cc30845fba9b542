package x509pop

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/trustgate/trustgate/attest"
)

// Signature algorithms the evidence may name.
const (
	// AlgECDSASHA256 is ECDSA over SHA-256 of the signed message, with the
	// signature in ASN.1 DER form (as crypto.Signer produces it).
	AlgECDSASHA256 = "ecdsa-sha256"
	// AlgRSAPSSSHA256 is RSASSA-PSS with SHA-256, MGF1-SHA-256 and a
	// 32-byte salt, over SHA-256 of the signed message.
	AlgRSAPSSSHA256 = "rsa-pss-sha256"
)

// ClientNonceSize is the exact length of the client's nonce, in bytes.
const ClientNonceSize = 32

// signedPrefix separates x509pop signatures from any other use of the key.
const signedPrefix = "trustgate/x509pop/v1\x00"

// Evidence is the JSON the caller sends as tee-evidence. Byte fields are
// standard base64 in JSON.
type Evidence struct {
	// Leaf is the node's certificate, DER.
	Leaf []byte `json:"leaf"`
	// Intermediates are certificates linking Leaf to a configured CA, DER,
	// in any order. Roots need not be sent.
	Intermediates [][]byte `json:"intermediates,omitempty"`
	// Nonce is the caller's own ClientNonceSize random bytes, so that the
	// server never chooses everything the key signs.
	Nonce []byte `json:"nonce"`
	// Algorithm is AlgECDSASHA256 or AlgRSAPSSSHA256 and must match the
	// leaf's key.
	Algorithm string `json:"algorithm"`
	// Signature is over SignedMessage(challenge nonce, Nonce, report data).
	Signature []byte `json:"signature"`
}

// SignedMessage returns the exact bytes whose SHA-256 digest the caller
// signs:
//
//	"trustgate/x509pop/v1" 0x00
//	uint32be(len(serverNonce)) serverNonce
//	uint32be(len(clientNonce)) clientNonce
//	uint32be(len(reportData))  reportData
//
// serverNonce is the RCAR challenge nonce as the server sent it (the
// base64 text, not its decoding); reportData is the RCAR report data, the
// session's hash over the JCS-canonical {tee-pubkey, nonce,
// additional-evidence}, which ties the signature to the caller's tee-pubkey.
func SignedMessage(serverNonce string, clientNonce, reportData []byte) []byte {
	b := make([]byte, 0, len(signedPrefix)+12+len(serverNonce)+len(clientNonce)+len(reportData))
	b = append(b, signedPrefix...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(serverNonce)))
	b = append(b, serverNonce...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(clientNonce)))
	b = append(b, clientNonce...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(reportData)))
	b = append(b, reportData...)
	return b
}

// MakeEvidence answers ch with the key of leaf: it draws a client nonce,
// signs SignedMessage with signer and returns the tee-evidence JSON. The
// signer must hold leaf's private key (ECDSA or RSA).
func MakeEvidence(ch attest.Challenge, leaf *x509.Certificate, intermediates []*x509.Certificate, signer crypto.Signer) (json.RawMessage, error) {
	if leaf == nil {
		return nil, errors.New("x509pop: make evidence: leaf certificate is nil")
	}
	if signer == nil {
		return nil, errors.New("x509pop: make evidence: signer is nil")
	}
	if ch.Nonce == "" || len(ch.ReportData) == 0 {
		return nil, errors.New("x509pop: make evidence: challenge needs a nonce and report data")
	}
	ev := Evidence{Leaf: leaf.Raw, Nonce: make([]byte, ClientNonceSize)}
	for i, c := range intermediates {
		if c == nil {
			return nil, fmt.Errorf("x509pop: make evidence: intermediate %d is nil", i)
		}
		ev.Intermediates = append(ev.Intermediates, c.Raw)
	}
	if _, err := rand.Read(ev.Nonce); err != nil {
		return nil, fmt.Errorf("x509pop: make evidence: client nonce: %w", err)
	}
	digest := sha256.Sum256(SignedMessage(ch.Nonce, ev.Nonce, ch.ReportData))
	var opts crypto.SignerOpts
	switch signer.Public().(type) {
	case *ecdsa.PublicKey:
		ev.Algorithm, opts = AlgECDSASHA256, crypto.SHA256
	case *rsa.PublicKey:
		ev.Algorithm, opts = AlgRSAPSSSHA256, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	default:
		return nil, fmt.Errorf("x509pop: make evidence: unsupported key type %T (want ECDSA or RSA)", signer.Public())
	}
	sig, err := signer.Sign(rand.Reader, digest[:], opts)
	if err != nil {
		return nil, fmt.Errorf("x509pop: make evidence: sign: %w", err)
	}
	ev.Signature = sig
	out, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("x509pop: make evidence: encode: %w", err)
	}
	return out, nil
}

// ParseEvidence decodes tee-evidence strictly: unknown fields, trailing
// data and missing fields are errors wrapping attest.ErrRejected. It checks
// shapes only; Attest verifies the content.
func ParseEvidence(raw []byte) (Evidence, error) {
	var ev Evidence
	if len(bytes.TrimSpace(raw)) == 0 {
		return ev, fmt.Errorf("%w: x509pop: evidence is empty", attest.ErrRejected)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return Evidence{}, fmt.Errorf("%w: x509pop: decode evidence: %v", attest.ErrRejected, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Evidence{}, fmt.Errorf("%w: x509pop: evidence has data after the JSON object", attest.ErrRejected)
	}
	switch {
	case len(ev.Leaf) == 0:
		return Evidence{}, fmt.Errorf("%w: x509pop: evidence has no leaf certificate", attest.ErrRejected)
	case len(ev.Nonce) != ClientNonceSize:
		return Evidence{}, fmt.Errorf("%w: x509pop: client nonce is %d bytes, want %d", attest.ErrRejected, len(ev.Nonce), ClientNonceSize)
	case ev.Algorithm != AlgECDSASHA256 && ev.Algorithm != AlgRSAPSSSHA256:
		return Evidence{}, fmt.Errorf("%w: x509pop: algorithm %q: want %q or %q", attest.ErrRejected, ev.Algorithm, AlgECDSASHA256, AlgRSAPSSSHA256)
	case len(ev.Signature) == 0:
		return Evidence{}, fmt.Errorf("%w: x509pop: evidence has no signature", attest.ErrRejected)
	}
	for i, c := range ev.Intermediates {
		if len(c) == 0 {
			return Evidence{}, fmt.Errorf("%w: x509pop: intermediate %d is empty", attest.ErrRejected, i)
		}
	}
	return ev, nil
}

// verifySignature checks ev.Signature with the leaf's public key.
func verifySignature(pub any, ev Evidence, ch attest.Challenge) error {
	digest := sha256.Sum256(SignedMessage(ch.Nonce, ev.Nonce, ch.ReportData))
	switch key := pub.(type) {
	case *ecdsa.PublicKey:
		if ev.Algorithm != AlgECDSASHA256 {
			return fmt.Errorf("algorithm %q does not match the leaf's ECDSA key", ev.Algorithm)
		}
		if !ecdsa.VerifyASN1(key, digest[:], ev.Signature) {
			return errors.New("ECDSA signature does not verify")
		}
	case *rsa.PublicKey:
		if ev.Algorithm != AlgRSAPSSSHA256 {
			return fmt.Errorf("algorithm %q does not match the leaf's RSA key", ev.Algorithm)
		}
		opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		if err := rsa.VerifyPSS(key, crypto.SHA256, digest[:], ev.Signature, opts); err != nil {
			return errors.New("RSA-PSS signature does not verify")
		}
	default:
		return fmt.Errorf("leaf key type %T is not supported (want ECDSA or RSA)", pub)
	}
	return nil
}
