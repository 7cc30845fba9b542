package kbs

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Session is what a later process needs to use an attestation without
// attesting again: the broker, the token and the TEE key it binds. It
// holds the private TEE key: keep it private (WriteSession writes 0600).
type Session struct {
	// URL is the broker's base URL.
	URL string `json:"url"`
	// TEE is the attestor that was used.
	TEE string `json:"tee,omitempty"`
	// Token is the attestation token.
	Token string `json:"token"`
	// TEEKey is the private TEE key, a JWK.
	TEEKey *TEEKey `json:"tee_key"`
}

// WriteSession writes s to path, mode 0600, replacing the file atomically.
func WriteSession(path string, s Session) error {
	if s.TEEKey == nil || s.Token == "" {
		return errors.New("kbs: session needs a token and a TEE key")
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("kbs: encode session: %w", err)
	}
	return writeFileAtomic(path, append(b, '\n'), 0o600)
}

// ReadSession reads a session written by WriteSession.
func ReadSession(path string) (Session, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Session{}, fmt.Errorf("kbs: read session: %w", err)
	}
	var s Session
	if err := json.Unmarshal(b, &s); err != nil {
		return Session{}, fmt.Errorf("kbs: session %s: %w", path, err)
	}
	if s.URL == "" || s.Token == "" || s.TEEKey == nil {
		return Session{}, fmt.Errorf("kbs: session %s lacks url, token or tee_key", path)
	}
	return s, nil
}

// writeFileAtomic writes data to a temporary file in path's directory with
// mode perm and renames it over path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("kbs: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("kbs: write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("kbs: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("kbs: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("kbs: write %s: %w", path, err)
	}
	return nil
}
