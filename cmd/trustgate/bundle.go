package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/store/sqlite"
)

func newServerBundleCmd() *cobra.Command {
	bundle := &cobra.Command{
		Use:   "bundle",
		Short: "The trust bundle that clients verify the broker with",
	}
	var configPath string
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the trust bundle (PEM roots) from the server's store, for clients' trust_bundle_path",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if configPath == "" {
				return errors.New("give --config FILE, the server's configuration")
			}
			cfg := broker.DefaultConfig()
			if err := config.LoadFile(configPath, &cfg); err != nil {
				return err
			}
			td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
			if err != nil {
				return fmt.Errorf("trust_domain: %w", err)
			}
			if _, err := os.Stat(cfg.Store.Path); err != nil {
				return fmt.Errorf("store.path: %w (start the server once to create its CA)", err)
			}
			ctx := cmd.Context()
			st, err := sqlite.Open(ctx, cfg.Store.Path, sqlite.Options{Synchronous: cfg.Store.Synchronous})
			if err != nil {
				return err
			}
			defer st.Close()
			b, err := svid.StoredX509Bundle(ctx, st, td, time.Now())
			if err != nil {
				return err
			}
			pem, err := b.Marshal()
			if err != nil {
				return fmt.Errorf("bundle: %w", err)
			}
			_, err = cmd.OutOrStdout().Write(pem)
			return err
		},
	}
	show.Flags().StringVar(&configPath, "config", "", "the server's TOML configuration file")
	bundle.AddCommand(show)
	return bundle
}
