package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentconfig "github.com/trustgate/trustgate/agent/config"
	"github.com/trustgate/trustgate/agent/runner"
)

// defaultAgentSocket is socket_path in the default agent configuration.
var defaultAgentSocket = agentconfig.Default().SocketPath

func newAgentCmd(g *globalFlags) *cobra.Command {
	var configPath *string
	var printDefault *bool
	spec := daemonSpec[agentconfig.Config]{
		defaultTOML: agentconfig.DefaultTOML(),
		defaults:    agentconfig.Default(),
		metricsAddr: func(c agentconfig.Config) string { return c.MetricsAddress },
		build: func(c agentconfig.Config, log *slog.Logger, reg prometheus.Registerer) (daemon, error) {
			return runner.New(c, log, reg)
		},
	}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent: node attestation, SPIFFE Workload API, NRI identity injection",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDaemon(cmd, g, spec, *configPath, *printDefault)
		},
	}
	configPath, printDefault = daemonFlags(cmd)
	cmd.AddCommand(newAgentAPICmd(), newAgentHealthcheckCmd())
	addAgentAdminCommands(cmd, g)
	return cmd
}

func workloadClient(ctx context.Context, socket string) (*workloadapi.Client, error) {
	abs, err := filepath.Abs(socket)
	if err != nil {
		return nil, err
	}
	return workloadapi.New(ctx, workloadapi.WithAddr("unix://"+abs))
}

func newAgentAPICmd() *cobra.Command {
	var (
		socket, write, spiffeID string
		audience                []string
		timeout                 time.Duration
	)
	api := &cobra.Command{Use: "api", Short: "Call the Workload API as a workload (like spire-agent api)"}
	fetch := &cobra.Command{Use: "fetch", Short: "Fetch SVIDs or bundles from the Workload API"}
	pf := fetch.PersistentFlags()
	pf.StringVar(&socket, "socketPath", defaultAgentSocket, "the Workload API socket")
	pf.DurationVar(&timeout, "timeout", 5*time.Second, "how long to wait for an answer")
	pf.StringVar(&write, "write", "", "write the PEM files to this directory (x509 and bundles)")
	withClient := func(cmd *cobra.Command, f func(ctx context.Context, c *workloadapi.Client) error) error {
		ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
		defer cancel()
		c, err := workloadClient(ctx, socket)
		if err != nil {
			return err
		}
		defer c.Close()
		return f(ctx, c)
	}
	x509Cmd := &cobra.Command{Use: "x509", Short: "Fetch X.509-SVIDs; with --write, svid.N.pem, svid.N.key and bundle.N.pem", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *workloadapi.Client) error {
				xc, err := c.FetchX509Context(ctx)
				if err != nil {
					return err
				}
				for i, s := range xc.SVIDs {
					fmt.Fprintf(cmd.OutOrStdout(), "SPIFFE ID:\t%s\nExpires at:\t%s\n", s.ID, s.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
					if write == "" {
						continue
					}
					certs, key, err := s.Marshal()
					if err != nil {
						return err
					}
					b, err := xc.Bundles.GetX509BundleForTrustDomain(s.ID.TrustDomain())
					if err != nil {
						return err
					}
					bundle, err := b.Marshal()
					if err != nil {
						return err
					}
					for name, data := range map[string][]byte{fmt.Sprintf("svid.%d.pem", i): certs, fmt.Sprintf("svid.%d.key", i): key, fmt.Sprintf("bundle.%d.pem", i): bundle} {
						if err := os.WriteFile(filepath.Join(write, name), data, 0o600); err != nil {
							return err
						}
					}
				}
				return nil
			})
		}}
	bundlesCmd := &cobra.Command{Use: "bundles", Short: "Fetch the X.509 bundles; with --write, bundle.N.pem", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *workloadapi.Client) error {
				set, err := c.FetchX509Bundles(ctx)
				if err != nil {
					return err
				}
				for i, b := range set.Bundles() {
					pem, err := b.Marshal()
					if err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "Trust domain:\t%s\n", b.TrustDomain())
					if write != "" {
						if err := os.WriteFile(filepath.Join(write, fmt.Sprintf("bundle.%d.pem", i)), pem, 0o600); err != nil {
							return err
						}
					}
				}
				return nil
			})
		}}
	jwtCmd := &cobra.Command{Use: "jwt", Short: "Fetch a JWT-SVID for --audience and print it", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(audience) == 0 {
				return errors.New("give --audience")
			}
			p := jwtsvid.Params{Audience: audience[0], ExtraAudiences: audience[1:]}
			if spiffeID != "" {
				id, err := spiffeid.FromString(spiffeID)
				if err != nil {
					return err
				}
				p.Subject = id
			}
			return withClient(cmd, func(ctx context.Context, c *workloadapi.Client) error {
				svids, err := c.FetchJWTSVIDs(ctx, p)
				if err != nil {
					return err
				}
				for _, s := range svids {
					fmt.Fprintln(cmd.OutOrStdout(), s.Marshal())
				}
				return nil
			})
		}}
	jwtCmd.Flags().StringSliceVar(&audience, "audience", nil, "the token's audience (repeat for more)")
	jwtCmd.Flags().StringVar(&spiffeID, "spiffeID", "", "only this SPIFFE ID")
	fetch.AddCommand(x509Cmd, jwtCmd, bundlesCmd)
	api.AddCommand(fetch)
	return api
}

func newAgentHealthcheckCmd() *cobra.Command {
	var (
		socket  string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Check that the agent's Workload API answers (exit 0 when healthy)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			c, err := workloadClient(ctx, socket)
			if err != nil {
				return err
			}
			defer c.Close()
			// The agent is healthy when it answers: an identity, or a
			// refusal of a caller that matches no entry.
			_, err = c.FetchX509SVID(ctx)
			if err != nil && status.Code(err) != codes.PermissionDenied {
				return fmt.Errorf("agent is unhealthy: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Agent is healthy.")
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socketPath", defaultAgentSocket, "the Workload API socket")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "how long to wait for an answer")
	return cmd
}
