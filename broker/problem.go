package broker

import (
	"encoding/json"
	"net/http"
)

// problemTypePrefix is Trustee's error type prefix (kbs/src/error.rs in
// confidential-containers/trustee), so that KBS clients that match on the
// type see the same values.
const problemTypePrefix = "https://github.com/confidential-containers/kbs/errors/"

// Problem is an RFC 7807 problem document. Its "type" and "detail" members
// are Trustee's ErrorInformation; "title" and "status" complete RFC 7807.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title,omitempty"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// Problem types. The RCAR ones are Trustee's names.
const (
	// ProblemAttestation is Trustee's AttestationError: any RCAR failure
	// that is the caller's (bad version, unknown TEE, bad nonce, rejected
	// evidence). Status 401.
	ProblemAttestation = "AttestationError"
	// ProblemSerde is Trustee's SerdeError: a body that is not the
	// expected JSON. Status 401, as Trustee answers.
	ProblemSerde = "SerdeError"
	// ProblemInvalidPath is Trustee's InvalidRequestPath. Status 404.
	ProblemInvalidPath = "InvalidRequestPath"
	// ProblemRateLimited means the client address sent too many requests.
	// Status 429 (Trustee has no rate limit).
	ProblemRateLimited = "RateLimited"
	// ProblemAdminAccess is Trustee's AdminAuthAccess: a missing or invalid
	// admin token (401) or one without the admin role (403).
	ProblemAdminAccess = "AdminAuthAccess"
	// ProblemBadRequest is an admin request with invalid content. Status 400.
	ProblemBadRequest = "BadRequest"
	// ProblemNotFound is an admin request for a missing record. Status 404.
	ProblemNotFound = "NotFound"
	// ProblemConflict is an admin create of an existing record. Status 409.
	ProblemConflict = "Conflict"
	// ProblemInternal is the server's own failure. Status 500.
	ProblemInternal = "InternalError"
)

func writeProblem(w http.ResponseWriter, status int, typ, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{Type: problemTypePrefix + typ, Title: http.StatusText(status), Status: status, Detail: detail})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
