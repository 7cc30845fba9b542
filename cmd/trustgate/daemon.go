package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/serve"
	"github.com/trustgate/trustgate/telemetry"
)

// daemon is a long-running component: the node agent or the NRI gateway.
type daemon interface {
	Run(ctx context.Context) error
	Ready(ctx context.Context) error
}

// daemonSpec says how a command builds and runs its daemon from a TOML
// configuration over the embedded defaults.
type daemonSpec[C any] struct {
	// defaultTOML is printed by --print-default-config.
	defaultTOML string
	// defaults is the configuration the file is decoded over.
	defaults C
	// metricsAddr is where /metrics, /healthz and /readyz are served
	// ("" for nowhere).
	metricsAddr func(C) string
	// build makes the daemon.
	build func(C, *slog.Logger, prometheus.Registerer) (daemon, error)
}

// daemonFlags adds --config and --print-default-config to cmd and returns where
// they land.
func daemonFlags(cmd *cobra.Command) (configPath *string, printDefault *bool) {
	f := cmd.Flags()
	configPath = f.String("config", "", "TOML configuration file")
	printDefault = f.Bool("print-default-config", false, "print a commented default configuration and exit")
	return configPath, printDefault
}

// daemonConfig is a daemon's configuration type, validated by LoadFile
// through its pointer.
type daemonConfig[C any] interface {
	*C
	config.Validator
}

// runDaemon prints the default configuration, or loads the one at
// configPath, builds the daemon, serves its metrics and readiness, and runs
// it until the command's context ends.
func runDaemon[C any, P daemonConfig[C]](cmd *cobra.Command, g *globalFlags, spec daemonSpec[C], configPath string, printDefault bool) error {
	if printDefault {
		_, err := fmt.Fprint(cmd.OutOrStdout(), spec.defaultTOML)
		return err
	}
	if configPath == "" {
		return errors.New("give --config FILE (see --print-default-config)")
	}
	log, err := g.logger(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	cfg := spec.defaults
	if err := config.LoadFile(configPath, P(&cfg)); err != nil {
		return err
	}
	reg := telemetry.NewRegistry()
	d, err := spec.build(cfg, log, reg)
	if err != nil {
		return err
	}
	grp, ctx := errgroup.WithContext(cmd.Context())
	if err := serveMetrics(ctx, grp, log, spec.metricsAddr(cfg), reg, serve.Options{}, d.Ready); err != nil {
		return err
	}
	grp.Go(func() error { return d.Run(ctx) })
	err = grp.Wait()
	log.Info("stopped")
	return err
}
