package kbs

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ProblemTypePrefix is the prefix of Trustee's (and the broker's) problem
// types; Error.Name strips it.
const ProblemTypePrefix = "https://github.com/confidential-containers/kbs/errors/"

// Error is a non-2xx answer from the broker. When the body is an RFC 7807
// problem document (application/problem+json, or JSON with a "type"),
// Type, Title and Detail come from it; otherwise Detail holds the start of
// the body.
type Error struct {
	// Status is the HTTP status code.
	Status int
	// Type is the problem type URI, e.g.
	// "https://github.com/confidential-containers/kbs/errors/PolicyDeny".
	Type string
	// Title is the problem's short summary.
	Title string
	// Detail explains this occurrence.
	Detail string
	// RetryAfter is the Retry-After delay of a 429 or 503, or zero.
	RetryAfter time.Duration
}

// Name is the problem type without ProblemTypePrefix, e.g.
// "AttestationError", "PolicyDeny" or "TokenVerifierError".
func (e *Error) Name() string { return strings.TrimPrefix(e.Type, ProblemTypePrefix) }

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "broker answered %d %s", e.Status, http.StatusText(e.Status))
	if n := e.Name(); n != "" {
		b.WriteString(": " + n)
	}
	if e.Detail != "" {
		b.WriteString(": " + e.Detail)
	}
	return b.String()
}

// maxDetail bounds the detail kept from an answer.
const maxDetail = 1024

// ParseError builds the *Error for a non-2xx answer with the given status,
// headers and body. It never fails: a body that is not problem JSON is
// kept, cut to 1 KiB and with control characters escaped, as Detail.
func ParseError(status int, h http.Header, body []byte) *Error {
	e := &Error{Status: status}
	if h != nil {
		if s, err := strconv.Atoi(strings.TrimSpace(h.Get("Retry-After"))); err == nil && s >= 0 && s < 1<<20 {
			e.RetryAfter = time.Duration(s) * time.Second
		}
	}
	var p struct {
		Type   *string `json:"type"`
		Title  string  `json:"title"`
		Detail string  `json:"detail"`
	}
	ct := ""
	if h != nil {
		ct, _, _ = mime.ParseMediaType(h.Get("Content-Type"))
	}
	if (ct == "application/problem+json" || ct == "application/json" || ct == "") && json.Unmarshal(body, &p) == nil && p.Type != nil {
		e.Type, e.Title, e.Detail = clip(*p.Type), clip(p.Title), clip(p.Detail)
		return e
	}
	e.Detail = clip(string(body))
	return e
}

// clip cuts s to maxDetail bytes and quotes it if it holds anything but
// printable text, so that an answer cannot forge log or terminal output.
func clip(s string) string {
	if len(s) > maxDetail {
		s = s[:maxDetail]
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd || (r >= 0x80 && r < 0xa0) {
			q := strconv.QuoteToGraphic(s)
			return q[1 : len(q)-1]
		}
	}
	return s
}
