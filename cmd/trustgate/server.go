package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/serve"
	"github.com/trustgate/trustgate/store/sqlite"
	"github.com/trustgate/trustgate/telemetry"
)

func newServerCmd(g *globalFlags) *cobra.Command {
	var (
		configPath, listen, metricsAddr string
		dev, printDefault               bool
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the attestation broker",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if printDefault {
				_, err := fmt.Fprint(out, broker.DefaultConfigTOML())
				return err
			}
			log, err := g.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			cfg := broker.DefaultConfig()
			switch {
			case dev && configPath != "":
				return fmt.Errorf("--dev and --config are exclusive: --dev runs on generated defaults")
			case dev:
				dir, err := os.MkdirTemp("", "trustgate-dev-")
				if err != nil {
					return fmt.Errorf("dev mode: %w", err)
				}
				cfg.Store.Path = filepath.Join(dir, "trustgate.db")
			case configPath != "":
				if err := config.LoadFile(configPath, &cfg); err != nil {
					return err
				}
			default:
				return fmt.Errorf("give --config FILE, or --dev to run on embedded defaults (see --print-default-config)")
			}
			if listen != "" {
				cfg.Listen = listen
			}
			if err := cfg.Validate(); err != nil {
				return err
			}

			ctx := cmd.Context()
			st, err := sqlite.Open(ctx, cfg.Store.Path, sqlite.Options{Synchronous: cfg.Store.Synchronous})
			if err != nil {
				return err
			}
			defer st.Close()
			reg := telemetry.NewRegistry()
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			addr := "http://" + ln.Addr().String()
			log.Info("broker listening", "addr", addr, "store", cfg.Store.Path, "dev", dev)
			if dev {
				fmt.Fprintf(out, "trustgate server (dev mode)\n  API:    %s\n  store:  %s\n  try:    curl %s/healthz\n", addr, cfg.Store.Path, addr)
			}
			opts := serve.Options{ShutdownGrace: cfg.ShutdownGrace.Duration}
			grp, ctx := errgroup.WithContext(ctx)
			grp.Go(func() error { return serve.HTTP(ctx, log, "broker", ln, broker.New(st, log), opts) })
			if metricsAddr != "" {
				mln, err := net.Listen("tcp", metricsAddr)
				if err != nil {
					_ = ln.Close()
					return fmt.Errorf("metrics listen: %w", err)
				}
				log.Info("metrics listening", "addr", "http://"+mln.Addr().String()+"/metrics")
				grp.Go(func() error { return serve.HTTP(ctx, log, "metrics", mln, telemetry.MetricsHandler(reg), opts) })
			}
			err = grp.Wait()
			if err == nil || context.Cause(ctx) != nil {
				log.Info("stopped")
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "TOML configuration file")
	f.BoolVar(&dev, "dev", false, "run on embedded defaults: a fresh SQLite store in a temporary directory, generated keys")
	f.BoolVar(&printDefault, "print-default-config", false, "print a commented default configuration and exit")
	f.StringVar(&listen, "listen", "", "override the configured listen address (host:port)")
	f.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (host:port)")
	return cmd
}
