package broker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"

	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/seal"
)

// Preflight checks, before anything is created, what Validate cannot see
// in the configuration alone: the files it names. `trustgate server` runs
// it before it opens the store, so that a start that fails leaves no
// database or key behind. Each problem says how to fix it.
//
// A plugin or attestor table whose settings differ from the defaults while
// its enabled = false is refused: the broker would silently ignore it.
func Preflight(ctx context.Context, cfg Config) error {
	var p config.Problems
	if _, err := seal.LoadKeyFile(cfg.Keys.SealKeyFile); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			p.Addf("keys.seal_key_file %s does not exist: create it once with `trustgate server --create-seal-key --config FILE` (mode 0600; keep it out of the database's backups)", cfg.Keys.SealKeyFile)
		} else {
			p.Addf("keys.seal_key_file: %v", err)
		}
	}
	if cfg.Store.Driver == "sqlite" && cfg.Store.Path != "" {
		dir := filepath.Dir(cfg.Store.Path)
		switch fi, err := os.Stat(dir); {
		case errors.Is(err, fs.ErrNotExist):
			p.Addf("store.path %s: its directory %s does not exist; the broker does not create it: run `mkdir -p -m 0700 %s` as the broker's user (or set store.path elsewhere)", cfg.Store.Path, dir, dir)
		case err != nil:
			p.Addf("store.path %s: %v", cfg.Store.Path, err)
		case !fi.IsDir():
			p.Addf("store.path %s: %s is not a directory", cfg.Store.Path, dir)
		}
	}
	if _, err := NewAdminVerifier(cfg.Admin, nil, nil, nil); err != nil {
		p.Addf("%v", err)
	}
	if cfg.Policy.PolicyPath != "" {
		if _, err := LoadPolicyFile(ctx, cfg.Policy.PolicyPath); err != nil {
			p.Addf("policy.policy_path: %v", err)
		}
	}
	def := DefaultConfig()
	ignored := func(table string, enabled bool, got, want any) {
		if !enabled && !reflect.DeepEqual(got, want) {
			p.Addf("[%s] has settings but enabled = false, so the broker would ignore them: set enabled = true in [%s], or remove its settings", table, table)
		}
	}
	ignored("attestors.x509pop", cfg.Attestors.X509Pop.Enabled, cfg.Attestors.X509Pop.Config, def.Attestors.X509Pop.Config)
	ignored("attestors.k8s_psat", cfg.Attestors.K8sPSAT.Enabled, cfg.Attestors.K8sPSAT.Config, def.Attestors.K8sPSAT.Config)
	ignored("attestors.join_token", cfg.Attestors.JoinToken.Enabled, cfg.Attestors.JoinToken.MaxTTL, def.Attestors.JoinToken.MaxTTL)
	ignored("plugins.nebula_ca", cfg.Plugins.NebulaCA.Enabled, cfg.Plugins.NebulaCA.Config, def.Plugins.NebulaCA.Config)
	ignored("plugins.svid", cfg.Plugins.SVID.Enabled, cfg.Plugins.SVID.Config, def.Plugins.SVID.Config)
	ts, dts := cfg.TokenService, def.TokenService
	ts.Enabled, dts.Enabled = false, false
	ignored("token_service", cfg.TokenService.Enabled, ts, dts)
	if err := p.Err(); err != nil {
		return fmt.Errorf("the broker cannot start: %w", err)
	}
	return nil
}
