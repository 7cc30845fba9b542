package token

import (
	"encoding/json"

	"github.com/go-jose/go-jose/v4/jwt"
)

// Attestation is the claim set of the attestation token that
// POST /kbs/v0/attest returns.
type Attestation struct {
	jwt.Claims
	// SPIFFEID is the attested identity; Subject carries it too.
	SPIFFEID string `json:"spiffe_id"`
	// Selectors describe the caller, each "type:value" in SPIRE's naming.
	Selectors []string `json:"selectors,omitempty"`
	// Aliases are the SPIFFE IDs of node alias entries whose selectors
	// are a subset of Selectors.
	Aliases []string `json:"aliases,omitempty"`
	// TEE is the attestor or TEE that verified the evidence, the RCAR
	// request's "tee".
	TEE string `json:"tee"`
	// TCB holds the attestor's claims (TCB claims for a TEE), named as in
	// Trustee's token.
	TCB map[string]any `json:"tcb-status,omitempty"`
	// TEEPubKey is the caller's runtime-data tee-pubkey (a JWK), to which
	// resources are encrypted.
	TEEPubKey json.RawMessage `json:"tee-pubkey,omitempty"`
}
