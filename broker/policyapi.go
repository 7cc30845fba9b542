package broker

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/trustgate/trustgate/policy"
)

// maxPolicyBody bounds a resource-policy update.
const maxPolicyBody = 1 << 20

// setPolicy serves POST /kbs/v0/resource-policy as Trustee's KBS does: the
// body is {"policy": "<base64url of the rego text>"}. A policy that does
// not compile is refused (400) with its line and column, and the policy in
// force stays.
func (s *Server) setPolicy(w http.ResponseWriter, r *http.Request) {
	if f := s.opts.PolicyFile; f != "" {
		writeProblem(w, http.StatusConflict, ProblemConflict, "the resource policy is kept in the file "+f+" (policy.policy_path): edit that file; the broker reloads it when it changes")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPolicyBody))
	if err != nil {
		writeProblem(w, http.StatusRequestEntityTooLarge, ProblemPayloadTooLarge, fmt.Sprintf("policy request exceeds %d bytes", maxPolicyBody))
		return
	}
	var req struct {
		Policy *string `json:"policy"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.Policy == nil {
		writeProblem(w, http.StatusBadRequest, ProblemBadRequest, `want {"policy": "<base64url of the rego text>"}`)
		return
	}
	text, err := decodeBase64URL(*req.Policy)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, ProblemBadRequest, "policy is not base64url: "+err.Error())
		return
	}
	rev, err := s.policy.Set(r.Context(), string(text))
	var ce *policy.CompileError
	if errors.As(err, &ce) {
		writeProblem(w, http.StatusBadRequest, ProblemPolicyInvalid, ce.Error()+"; the policy in force is unchanged")
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("resource policy set", "revision", rev, "peer", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]int64{"revision": rev})
}

// getPolicy serves GET /kbs/v0/resource-policy: the policy in force,
// base64url-encoded, as Trustee answers.
func (s *Server) getPolicy(w http.ResponseWriter, _ *http.Request) {
	text, rev := s.policy.Text()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Trustgate-Policy-Revision", fmt.Sprint(rev))
	_, _ = io.WriteString(w, base64.RawURLEncoding.EncodeToString([]byte(text)))
}

// decodeBase64URL accepts base64url with or without padding.
func decodeBase64URL(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(strings.TrimSpace(s), "="))
}
