package token

import (
	"encoding/json"
	"errors"
)

// ErrUnknownKey means a token names a key ID this Authority does not
// publish: it was signed by someone else (another issuer's JWT, a JWT-SVID).
var ErrUnknownKey = errors.New("token: unknown key id")

// Access is one entry of a scoped token's "access" claim: the actions
// granted on one resource. It has exactly the JSON form of distribution's
// registry/auth/token.ResourceActions.
type Access struct {
	// Type is the resource type, such as "repository" or "plugin".
	Type string `json:"type"`
	// Class is the optional resource class.
	Class string `json:"class,omitempty"`
	// Name is the resource name.
	Name string `json:"name"`
	// Actions are the granted actions, sorted.
	Actions []string `json:"actions"`
}

// Scoped is the claim set of a scoped token from the broker's token
// service (GET /token). Its registered claims and "access" have exactly the
// JSON form that distribution's registry/auth/token.ClaimSet decodes, so a
// distribution registry trusting the broker's JWKS accepts it: "aud" is a
// single string, the times are integer seconds, and "access" is always
// present (an empty list when nothing was granted).
//
// Tokens for the broker's own service (its plugin endpoints) also carry the
// caller's identity claims, so that the resource policy sees the same
// caller as with the attestation token; tokens for other services do not.
type Scoped struct {
	Issuer     string   `json:"iss"`
	Subject    string   `json:"sub"`
	Audience   string   `json:"aud"`
	Expiration int64    `json:"exp"`
	NotBefore  int64    `json:"nbf"`
	IssuedAt   int64    `json:"iat"`
	JWTID      string   `json:"jti"`
	Access     []Access `json:"access"`

	// SPIFFEID is the caller's SPIFFE ID (own service only).
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// Selectors are the caller's selectors (own service only).
	Selectors []string `json:"selectors,omitempty"`
	// Aliases are the caller's node aliases (own service only).
	Aliases []string `json:"aliases,omitempty"`
	// TEE is the caller's attestor (own service only).
	TEE string `json:"tee,omitempty"`
	// TCB are the attestor's claims (own service only).
	TCB map[string]any `json:"tcb-status,omitempty"`
	// TEEPubKey is the caller's tee-pubkey, to which encrypted plugin
	// answers are sealed (own service only).
	TEEPubKey json.RawMessage `json:"tee-pubkey,omitempty"`
}
