package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/serve"
	"github.com/trustgate/trustgate/telemetry"
)

func newServerCmd(g *globalFlags) *cobra.Command {
	var (
		configPath, listen, metricsAddr  string
		dev, printDefault, createSealKey bool
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
			var devAdmin broker.DevAdmin
			switch {
			case dev && configPath != "":
				return fmt.Errorf("--dev and --config are exclusive: --dev runs on generated defaults")
			case dev:
				dir, err := os.MkdirTemp("", "trustgate-dev-")
				if err != nil {
					return fmt.Errorf("dev mode: %w", err)
				}
				cfg.Store.Path = filepath.Join(dir, "trustgate.db")
				cfg.Keys.SealKeyFile = filepath.Join(dir, "seal.key")
				if err := seal.GenerateKeyFile(cfg.Keys.SealKeyFile); err != nil {
					return fmt.Errorf("dev mode: %w", err)
				}
				devAdmin, err = broker.NewDevAdmin(dir, 24*time.Hour)
				if err != nil {
					return fmt.Errorf("dev mode: %w", err)
				}
				cfg.Admin = broker.AdminConfig{PublicKeyFile: devAdmin.PublicKeyFile}
				cfg.Attestors.Sample.Enabled = true
				cfg.RateLimit.PerSecond, cfg.RateLimit.GlobalPerSecond = 0, 0
				cfg.Policy.Default = "sample-dev"
				cfg.Plugins.SVID.Enabled = true
				cfg.Plugins.NebulaCA.Enabled = true
				cfg.Plugins.NebulaCA.CANetworks = []string{"10.42.0.0/16"}
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
			if createSealKey {
				if err := seal.GenerateKeyFile(cfg.Keys.SealKeyFile); err != nil {
					return err
				}
				_, err := fmt.Fprintf(out, "created %s\n", cfg.Keys.SealKeyFile)
				return err
			}
			if err := cfg.Validate(); err != nil {
				return err
			}

			ctx := cmd.Context()
			st, err := broker.OpenStoreLog(ctx, cfg.Store, log)
			if err != nil {
				return err
			}
			defer st.Close()
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			addr := "http://" + ln.Addr().String()
			if dev {
				// The token service's realm is where this server listens.
				cfg.TokenService.Enabled = true
				cfg.TokenService.Realm = addr + "/token"
			}
			reg := telemetry.NewRegistry()
			srv, err := broker.FromConfig(ctx, cfg, st, log, reg)
			if err != nil {
				_ = ln.Close()
				return err
			}
			log.Info("broker listening", "addr", addr, "store", cfg.Store.Describe(), "dev", dev)
			if dev {
				fmt.Fprintf(out, "trustgate server (dev mode)\n  API:    %s\n  store:  %s\n  try:    curl %s/healthz\n", addr, cfg.Store.Path, addr)
				fmt.Fprintf(out, "  admin token (24h):\n    export TRUSTGATE_ADMIN_TOKEN=%s\n", devAdmin.Token)
				fmt.Fprintf(out, "  try:    curl -H \"Authorization: Bearer $TRUSTGATE_ADMIN_TOKEN\" %s/admin/v1/entries\n", addr)
				fmt.Fprintf(out, "          trustgate jointoken create --server %s --admin-token \"$TRUSTGATE_ADMIN_TOKEN\"\n", addr)
				fmt.Fprintf(out, "  attest with the sample TEE, then trade the token for a scoped one:\n")
				fmt.Fprintf(out, "          curl -u \"x:$ATTESTATION_TOKEN\" \"%s/token?service=trustgate&scope=plugin:resource/default/key/1:get\"\n", addr)
				fmt.Fprintf(out, "  walkthrough: docs/broker.md\n")
			}
			opts := serve.Options{ShutdownGrace: cfg.ShutdownGrace.Duration}
			grp, ctx := errgroup.WithContext(ctx)
			grp.Go(func() error { return serve.HTTP(ctx, log, "broker", ln, srv, opts) })
			grp.Go(func() error { srv.Run(ctx); return nil })
			if err := serveMetrics(ctx, grp, log, metricsAddr, reg, opts); err != nil {
				_ = ln.Close()
				return err
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
	f.BoolVar(&createSealKey, "create-seal-key", false, "create the configured keys.seal_key_file (mode 0600) and exit; never overwrites")
	f.StringVar(&listen, "listen", "", "override the configured listen address (host:port)")
	f.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (host:port)")
	return cmd
}
