// Package attest declares how the broker verifies that a caller is what it
// claims to be.
//
// An Attestor handles one kind of evidence: a TEE's hardware report (or
// Trustee's "sample" stand-in) or a SPIRE-style node attestor (join_token,
// x509pop, k8s_psat). The broker runs every one through the same RCAR flow:
// it issues a Challenge from POST /kbs/v0/auth, passes the caller's
// tee-evidence from POST /kbs/v0/attest to the attestor named by the
// session's "tee" field, and turns the Result into an attestation token.
// Implementations live in subpackages named for the attestor.
package attest

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/trustgate/trustgate/store"
)

// Attestor verifies one kind of evidence.
type Attestor interface {
	// Name is the attestor's name as callers give it in the RCAR request's
	// "tee" field, e.g. "sample", "join_token", "x509pop", "k8s_psat".
	Name() string
	// Attest verifies evidence answering ch and returns who the caller is.
	// Any failure, including malformed evidence, returns an error wrapping
	// ErrRejected (the caller's fault) or another error (the server's).
	Attest(ctx context.Context, ch Challenge, evidence json.RawMessage) (Result, error)
}

// Challenge is what the server asked the caller to answer.
type Challenge struct {
	// Nonce is the RCAR nonce exactly as the server sent it (base64).
	Nonce string
	// ReportData is the digest that binds the evidence to this exchange:
	// the session's hash algorithm over the JCS-canonical JSON
	// {"tee-pubkey", "nonce", "additional-evidence"} of the attest request.
	// Evidence that carries report data must carry exactly this value.
	ReportData []byte
	// HashAlgorithm names the algorithm ReportData was made with, e.g.
	// "sha384", as sent in the challenge's extra-params.
	HashAlgorithm string
	// Peer is the caller's network address, for logs.
	Peer string
}

// Result is a verified identity.
type Result struct {
	// SPIFFEID is the identity the evidence proves, e.g.
	// spiffe://example.org/spire/agent/x509pop/<fingerprint>.
	SPIFFEID string
	// Selectors describe the caller, in SPIRE's naming, e.g.
	// {Type: "x509pop", Value: "subject:cn:node-1"}.
	Selectors []store.Selector
	// Claims are attestor-specific claims for the token, such as TCB
	// claims from a TEE report. Values must marshal to JSON.
	Claims map[string]any
}

// ErrRejected marks evidence that does not prove what it claims. Errors
// wrapping it become 401 responses; other errors are the server's.
var ErrRejected = errors.New("attestation rejected")
