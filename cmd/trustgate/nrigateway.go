package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/trustgate/trustgate/nrigate"
)

func newNRIGatewayCmd(g *globalFlags) *cobra.Command {
	var metricsAddr string
	var configPath *string
	var printDefault *bool
	spec := daemonSpec[nrigate.Config]{
		defaultTOML: nrigate.DefaultConfigTOML(),
		defaults:    nrigate.DefaultConfig(),
		metricsAddr: func(nrigate.Config) string { return metricsAddr },
		build: func(c nrigate.Config, log *slog.Logger, reg prometheus.Registerer) (daemon, error) {
			return nrigate.New(c, log, reg)
		},
	}
	cmd := &cobra.Command{
		Use:   "nri-gateway",
		Short: "Run the authenticated NRI gateway in front of the runtime's NRI socket",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDaemon(cmd, g, spec, *configPath, *printDefault)
		},
	}
	configPath, printDefault = daemonFlags(cmd)
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics, /healthz and /readyz on this address (host:port)")
	return cmd
}
