package runner

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/trustgate/trustgate/tlsclient"
)

// PinnedBundleFile is where an agent with insecure_bootstrap keeps the
// trust bundle it got from the broker at its first contact, in data_dir.
const PinnedBundleFile = "bootstrap_bundle.pem"

// pinnedBundle is the broker's trust bundle as first received after an
// insecure bootstrap, kept on disk so that a restart does not trust the
// network again: from then on the broker is verified against it.
type pinnedBundle struct {
	path  string
	roots atomic.Pointer[[]*x509.Certificate]
}

// loadPinned reads the pinned bundle from dir, if an earlier run left one.
func loadPinned(dir string) (*pinnedBundle, error) {
	p := &pinnedBundle{path: filepath.Join(dir, PinnedBundleFile)}
	roots, err := tlsclient.LoadBundle(p.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return p, nil
	case err != nil:
		return nil, fmt.Errorf("pinned bundle: %w", err)
	}
	p.roots.Store(&roots)
	return p, nil
}

// get returns the pinned roots, none before the first bundle.
func (p *pinnedBundle) get() []*x509.Certificate {
	if r := p.roots.Load(); r != nil {
		return *r
	}
	return nil
}

// set pins roots (the bundle's X.509 authorities, rotations included) and
// writes them to disk, replacing the file atomically.
func (p *pinnedBundle) set(roots []*x509.Certificate) error {
	if len(roots) == 0 {
		return errors.New("pinned bundle: no X.509 authority")
	}
	var buf []byte
	for _, r := range roots {
		buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	if err := os.MkdirAll(filepath.Dir(p.path), 0o700); err != nil {
		return fmt.Errorf("pinned bundle: %w", err)
	}
	tmp := p.path + ".tmp"
	if err := os.WriteFile(tmp, buf, 0o644); err != nil {
		return fmt.Errorf("pinned bundle: %w", err)
	}
	if err := os.Rename(tmp, p.path); err != nil {
		return fmt.Errorf("pinned bundle: %w", err)
	}
	p.roots.Store(&roots)
	return nil
}
