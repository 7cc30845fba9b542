package agentapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// problemTypePrefix is the broker's problem type prefix (Trustee's).
const problemTypePrefix = "https://github.com/confidential-containers/kbs/errors/"

// Problem is an RFC 7807 problem document, and an error that carries its
// status.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title,omitempty"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

func (p *Problem) Error() string { return p.Detail }

func problem(status int, format string, args ...any) error {
	return &Problem{Status: status, Detail: fmt.Sprintf(format, args...)}
}

// problemType names a status as the broker's problem types do.
func problemType(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "BadRequest"
	case http.StatusUnauthorized, http.StatusForbidden:
		return "AgentAccess"
	case http.StatusNotFound:
		return "NotFound"
	case http.StatusRequestEntityTooLarge:
		return "BadRequest"
	}
	return "InternalError"
}

func writeProblem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{Type: problemTypePrefix + problemType(status), Title: http.StatusText(status), Status: status, Detail: detail})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

// readJSON decodes a body of at most limit bytes into v, strictly.
func readJSON(r *http.Request, limit int64, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return problem(http.StatusBadRequest, "read body: %v", err)
	}
	if int64(len(body)) > limit {
		return problem(http.StatusRequestEntityTooLarge, "body is more than %d bytes", limit)
	}
	return decodeJSON(body, v)
}

// decodeJSON decodes exactly one JSON value with no unknown fields.
func decodeJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return problem(http.StatusBadRequest, "body: %v", err)
	}
	if dec.More() {
		return problem(http.StatusBadRequest, "body: trailing data after the JSON value")
	}
	return nil
}
