package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/trustgate/trustgate/policy"
)

// DefaultPolicyFilePoll is how often the policy file (policy.policy_path)
// is checked for changes.
const DefaultPolicyFilePoll = time.Second

// policyFileError formats a policy file's compile problems as
// "file:line:column: message", as editors and compilers do.
func policyFileError(path string, err error) error {
	var ce *policy.CompileError
	if !errors.As(err, &ce) {
		return fmt.Errorf("policy file %s: %w", path, err)
	}
	parts := make([]string, len(ce.Problems))
	for i, p := range ce.Problems {
		parts[i] = fmt.Sprintf("%s:%d:%d: %s", path, p.Line, p.Column, p.Message)
	}
	return fmt.Errorf("policy file does not compile: %s", strings.Join(parts, "; "))
}

// LoadPolicyFile reads and compiles the policy file at path, so that a
// server refuses to start on a policy that does not compile.
func LoadPolicyFile(ctx context.Context, path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("policy file: %w (write the rego policy there; `trustgate policy test` checks one offline)", err)
	}
	if _, err := policy.Compile(ctx, string(data)); err != nil {
		return "", policyFileError(path, err)
	}
	return string(data), nil
}

// applyPolicyFile puts text in force unless it already is.
func (s *Server) applyPolicyFile(ctx context.Context, text string) error {
	if cur, _ := s.policy.Text(); cur == text {
		return nil
	}
	rev, err := s.policy.Set(ctx, text)
	if err != nil {
		return policyFileError(s.opts.PolicyFile, err)
	}
	s.log.Info("resource policy loaded from file", "file", s.opts.PolicyFile, "revision", rev)
	return nil
}

// watchPolicyFile reads the policy file every PolicyFilePoll until ctx
// ends and puts each new text that compiles in force. A text that does not
// compile, or a file that cannot be read, is logged once (with line and
// column) and the policy in force stays. The file is compared by content,
// not by modification time, so that no change is missed whatever the
// file system's time resolution.
func (s *Server) watchPolicyFile(ctx context.Context) {
	path := s.opts.PolicyFile
	every := s.opts.PolicyFilePoll
	if every <= 0 {
		every = DefaultPolicyFilePoll
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var seen []byte
	var readErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			if err.Error() != readErr {
				s.log.Warn("policy file unreadable; keeping the policy in force", "file", path, "err", err)
				readErr = err.Error()
			}
			continue
		}
		readErr = ""
		if seen != nil && bytes.Equal(data, seen) {
			continue
		}
		seen = data
		if err := s.applyPolicyFile(ctx, string(data)); err != nil {
			s.log.Error("policy file rejected; keeping the policy in force", "file", path, "err", err)
		}
	}
}
