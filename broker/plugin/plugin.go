// Package plugin declares the broker's resource plugins: what an attested
// caller may get under /kbs/v0/<plugin>/<path...>, and how.
//
// The shape follows Trustee's KBS plugin interface (Handle, ValidateAuth,
// NeedsEncryption), decided per HTTP method: a plugin says, for each method,
// who may call it (Access) and whether the answer is encrypted to the
// caller's TEE key (Encrypt). The broker does the rest in front of Handle:
// it validates the path, limits the body, authenticates the caller,
// evaluates the rego policy (which sees the method, path and query), and
// after Handle encrypts the answer into a JWE when asked. Implementations
// live in subpackages named for the plugin.
package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
)

// Access is who may call a plugin's method.
type Access int

// Access levels.
const (
	// Denied means the plugin does not serve the method (405).
	Denied Access = iota
	// Attested callers present a valid attestation token, and the policy
	// decides.
	Attested
	// Admin callers present an admin token; the policy is not consulted.
	Admin
)

// Plugin serves one name under /kbs/v0/.
type Plugin interface {
	// Name is the first path segment after /kbs/v0/. It must not be one of
	// the broker's reserved names.
	Name() string
	// Access says who may call method ("GET", "POST", "PUT", "DELETE").
	Access(method string) Access
	// Encrypt reports whether the answer to method is encrypted to the
	// caller's TEE key (a flattened JWE); it applies to attested callers.
	Encrypt(method string) bool
	// Handle serves one request that passed authentication and policy.
	Handle(ctx context.Context, req *Request) (*Response, error)
}

// Request is one call to a plugin.
type Request struct {
	// Method is the HTTP method.
	Method string
	// Path holds the validated segments after the plugin name.
	Path []string
	// Query is the URL query.
	Query url.Values
	// Body is the request body, within the broker's size limit.
	Body []byte
	// Caller is who is calling.
	Caller Caller
}

// Caller is an authenticated caller. The broker shares one Caller's slices
// and maps between the requests of one token: plugins must not modify them.
type Caller struct {
	// Admin is true for a caller with an admin token; the other fields
	// are then empty but Subject.
	Admin bool
	// Subject is the token's subject: the SPIFFE ID of an attested caller,
	// or the admin's name.
	Subject string
	// SPIFFEID is the attested identity.
	SPIFFEID string
	// Selectors describe the attested caller, "type:value" as in SPIRE.
	Selectors []string
	// Aliases are the node alias SPIFFE IDs the caller matched.
	Aliases []string
	// TEE is the attestor or TEE that verified the caller.
	TEE string
	// TCB are the attestor's claims.
	TCB map[string]any
	// TEEPubKey is the caller's tee-pubkey JWK from attestation.
	TEEPubKey json.RawMessage
}

// Response is a plugin's answer.
type Response struct {
	// Status is the HTTP status; zero means 200.
	Status int
	// ContentType defaults to application/json.
	ContentType string
	// Body is the answer. When the method is encrypted, Body is the
	// plaintext of the JWE.
	Body []byte
}

// Error is an error a plugin returns to say what the caller did wrong; the
// broker answers it as RFC 7807 problem JSON with Status. Any other error
// is the server's fault (500) and its text is logged, not sent.
type Error struct {
	Status int
	Detail string
}

func (e *Error) Error() string { return fmt.Sprintf("%d: %s", e.Status, e.Detail) }

// Errorf returns an *Error with the given status.
func Errorf(status int, format string, args ...any) error {
	return &Error{Status: status, Detail: fmt.Sprintf(format, args...)}
}

// Runner is an optional interface for a plugin with background work, such
// as rotating its keys: the broker runs Run until its context ends.
type Runner interface {
	Run(ctx context.Context)
}

// RepeatedQuery is an optional interface for a plugin that takes some
// query parameters more than once, such as the svid plugin's
// audience=A&audience=B. The broker refuses any other parameter given more
// than once, so that the policy and the plugin cannot read different
// values of one key; the policy sees each parameter RepeatedQuery names as
// an array of all its values.
type RepeatedQuery interface {
	RepeatedQuery() []string
}

// Decider is an optional interface for a plugin whose access and encryption
// depend on more than the method, as Trustee's ValidateAuth and
// NeedsEncryption see the whole request. When a plugin implements it, the
// broker calls Decide, with req.Caller still empty, instead of Access and
// Encrypt.
type Decider interface {
	Decide(ctx context.Context, req *Request) (access Access, encrypt bool, err error)
}
