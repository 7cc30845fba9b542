package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/nrigate"
	"github.com/trustgate/trustgate/serve"
	"github.com/trustgate/trustgate/telemetry"
)

func newNRIGatewayCmd(g *globalFlags) *cobra.Command {
	var (
		configPath, metricsAddr string
		printDefault            bool
	)
	cmd := &cobra.Command{
		Use:   "nri-gateway",
		Short: "Run the authenticated NRI gateway in front of the runtime's NRI socket",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if printDefault {
				_, err := fmt.Fprint(cmd.OutOrStdout(), nrigate.DefaultConfigTOML())
				return err
			}
			if configPath == "" {
				return errors.New("give --config FILE (see --print-default-config)")
			}
			log, err := g.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			cfg := nrigate.DefaultConfig()
			if err := config.LoadFile(configPath, &cfg); err != nil {
				return err
			}
			reg := telemetry.NewRegistry()
			gw, err := nrigate.New(cfg, log, reg)
			if err != nil {
				return err
			}
			grp, ctx := errgroup.WithContext(cmd.Context())
			if err := serveMetrics(ctx, grp, log, metricsAddr, reg, serve.Options{}, gw.Ready); err != nil {
				return err
			}
			grp.Go(func() error { return gw.Run(ctx) })
			err = grp.Wait()
			log.Info("stopped")
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "TOML configuration file")
	f.BoolVar(&printDefault, "print-default-config", false, "print a commented default configuration and exit")
	f.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics, /healthz and /readyz on this address (host:port)")
	return cmd
}
