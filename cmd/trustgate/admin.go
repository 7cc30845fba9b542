package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/config"
)

func newAdminCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "admin", Short: "Admin credentials for remote administrators (on the broker's host, the admin socket needs none)"}
	key := &cobra.Command{Use: "key", Short: "Manage admin signing keys"}
	var (
		configPath, keyPath, pubPath, jwksPath string
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Generate an admin signing key and make the broker's configuration trust it",
		Long: "Generate an ECDSA P-256 admin signing key, write it to --key (0600, never overwritten), and write its public key\n" +
			"where the broker's configuration looks for it: admin.public_key_file (0600, never overwritten) or admin.jwks_file\n" +
			"(the key is added). The broker reads its admin keys at start-up: restart it to trust a new key.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := broker.DefaultConfig().Admin
			if configPath != "" {
				data, err := os.ReadFile(configPath)
				if err != nil {
					return fmt.Errorf("read config: %w", err)
				}
				full := broker.DefaultConfig()
				if err := config.Decode(data, &full); err != nil {
					return fmt.Errorf("config %s: %w", configPath, err)
				}
				cfg = full.Admin
			}
			if pubPath != "" || jwksPath != "" {
				cfg.PublicKeyFile, cfg.JWKSFile = pubPath, jwksPath
			}
			if pubPath != "" && jwksPath != "" {
				return errors.New("--public-key-file and --jwks-file are exclusive")
			}
			if keyPath == "" {
				return errors.New("--key FILE is required: where the private key goes (keep it with the administrator, not on the broker)")
			}
			kid, err := broker.CreateAdminKey(keyPath, cfg)
			if err != nil {
				return err
			}
			trusted := cfg.PublicKeyFile
			if trusted == "" {
				trusted = cfg.JWKSFile
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "created admin signing key %s (kid %s)\nthe broker trusts it through %s once restarted\nmint a token: trustgate admin token --key %s --ttl 15m\n", keyPath, kid, trusted, keyPath)
			return err
		},
	}
	cf := create.Flags()
	cf.StringVar(&configPath, "config", "", "the broker's configuration file: its [admin] public_key_file or jwks_file receives the public key (default: the default configuration's)")
	cf.StringVar(&keyPath, "key", "", "write the private key to this file (0600, never overwritten)")
	cf.StringVar(&pubPath, "public-key-file", "", "write the public key to this file instead of the configured one")
	cf.StringVar(&jwksPath, "jwks-file", "", "add the public key to this JWKS file instead of the configured one")
	key.AddCommand(create)

	var (
		signKey, subject, audience string
		ttl                        time.Duration
	)
	token := &cobra.Command{
		Use:   "token",
		Short: "Mint an admin token with a key from `admin key create`; it is printed on stdout",
		Long: "Mint an ES256 JWT with role \"admin\" signed by --key. The broker refuses a token whose lifetime exceeds\n" +
			"its admin.max_token_ttl (default 1h), and one that expired more than 30 s ago (clock-skew leeway).\n" +
			"Hand it to the admin commands in TRUSTGATE_ADMIN_TOKEN or a file (--token-file), never on the command line.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if signKey == "" {
				return errors.New("--key FILE is required (create one with `trustgate admin key create`)")
			}
			if ttl <= 0 {
				return fmt.Errorf("--ttl %v: want a positive duration, at most the broker's admin.max_token_ttl", ttl)
			}
			priv, err := broker.LoadAdminSigningKey(signKey)
			if err != nil {
				return err
			}
			tok, err := broker.SignAdminTokenFor(priv, subject, audience, ttl)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), tok)
			return err
		},
	}
	tf := token.Flags()
	tf.StringVar(&signKey, "key", "", "the admin signing key (from `trustgate admin key create`)")
	tf.DurationVar(&ttl, "ttl", 15*time.Minute, "token lifetime; the broker refuses more than its admin.max_token_ttl (default 1h)")
	tf.StringVar(&subject, "subject", "admin", "the token's \"sub\", recorded in the broker's log")
	tf.StringVar(&audience, "audience", "", "the token's \"aud\": the broker's admin.audience, when it sets one")
	cmd.AddCommand(key, token)
	return cmd
}
