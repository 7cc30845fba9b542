package kbs

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/attest/x509pop"
)

// Challenge is what an Attester answers: the broker's challenge and the
// report data that binds evidence to it and to the client's TEE key.
type Challenge struct {
	// Nonce is the RCAR nonce as the broker sent it (base64 text).
	Nonce string
	// HashAlgorithm is the challenge's selected-hash-algorithm.
	HashAlgorithm string
	// ReportData is HashAlgorithm over the JCS form of {tee-pubkey, nonce,
	// additional-evidence}, exactly as the broker checks it.
	ReportData []byte
	// ExtraParams are the challenge's extra-params.
	ExtraParams map[string]string
}

// Attester makes the evidence of one attestor. Implementations must be
// safe to call from one goroutine at a time; a Client calls Evidence once
// per Attest.
type Attester interface {
	// TEE is the attestor's name, the RCAR request's "tee", e.g. "sample",
	// "join_token", "x509pop" or "k8s_psat".
	TEE() string
	// Evidence returns tee-evidence.primary_evidence answering ch.
	Evidence(ctx context.Context, ch Challenge) (json.RawMessage, error)
}

// AttesterFunc adapts a function to an Attester for the named TEE.
func AttesterFunc(tee string, f func(ctx context.Context, ch Challenge) (json.RawMessage, error)) Attester {
	return funcAttester{tee: tee, f: f}
}

type funcAttester struct {
	tee string
	f   func(context.Context, Challenge) (json.RawMessage, error)
}

func (a funcAttester) TEE() string { return a.tee }
func (a funcAttester) Evidence(ctx context.Context, ch Challenge) (json.RawMessage, error) {
	return a.f(ctx, ch)
}

// Sample is Trustee's sample TEE (no hardware; tests and demos): its
// evidence is {"svn", "report_data"} with the report data in standard
// base64. svn is the security version number to claim, e.g. "1".
func Sample(svn string) Attester {
	return AttesterFunc("sample", func(_ context.Context, ch Challenge) (json.RawMessage, error) {
		return json.Marshal(map[string]string{"svn": svn, "report_data": base64.StdEncoding.EncodeToString(ch.ReportData)})
	})
}

// JoinToken presents a single-use join token, SPIRE's model. The token is
// spent by the attempt, whatever its outcome.
func JoinToken(token string) Attester {
	return AttesterFunc("join_token", func(context.Context, Challenge) (json.RawMessage, error) {
		if token == "" {
			return nil, errors.New("kbs: join_token: the token is empty")
		}
		return json.Marshal(map[string]string{"token": token})
	})
}

// K8sPSAT presents the projected service-account token read from
// tokenPath at each attestation (kubelet rotates the file), for the
// broker's cluster named cluster.
func K8sPSAT(cluster, tokenPath string) Attester {
	return AttesterFunc("k8s_psat", func(context.Context, Challenge) (json.RawMessage, error) {
		b, err := os.ReadFile(tokenPath)
		if err != nil {
			return nil, fmt.Errorf("kbs: k8s_psat: read token: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return nil, fmt.Errorf("kbs: k8s_psat: token file %s is empty", tokenPath)
		}
		return json.Marshal(map[string]string{"cluster": cluster, "token": tok})
	})
}

// X509Pop proves possession of the private key of leaf, a certificate
// that chains (through intermediates) to a CA the broker trusts: it signs
// the challenge nonce, a fresh client nonce and the report data
// (x509pop.SignedMessage). signer holds the leaf's ECDSA or RSA key.
func X509Pop(leaf *x509.Certificate, intermediates []*x509.Certificate, signer crypto.Signer) Attester {
	return AttesterFunc(x509pop.Name, func(_ context.Context, ch Challenge) (json.RawMessage, error) {
		return x509pop.MakeEvidence(attest.Challenge{Nonce: ch.Nonce, ReportData: ch.ReportData, HashAlgorithm: ch.HashAlgorithm}, leaf, intermediates, signer)
	})
}

// LoadX509Pop reads an X509Pop attester from PEM files: certFile holds the
// leaf first, then any intermediates; keyFile the leaf's private key
// (PKCS#8, SEC 1 "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY").
func LoadX509Pop(certFile, keyFile string) (Attester, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("kbs: x509pop: %w", err)
	}
	var certs []*x509.Certificate
	for rest := cb; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("kbs: x509pop: %s: %w", certFile, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("kbs: x509pop: %s holds no CERTIFICATE", certFile)
	}
	signer, err := LoadPrivateKey(keyFile)
	if err != nil {
		return nil, fmt.Errorf("kbs: x509pop: %w", err)
	}
	return X509Pop(certs[0], certs[1:], signer), nil
}

// LoadPrivateKey reads a PEM private key: PKCS#8, SEC 1 or PKCS#1.
func LoadPrivateKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, fmt.Errorf("%s holds no private key", path)
		}
		var k any
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: key type %T cannot sign", path, k)
		}
		return s, nil
	}
}
