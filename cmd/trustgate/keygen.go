package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/trustgate/trustgate/pluginauth"
)

func newKeygenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "keygen PRIVATE_KEY_FILE",
		Short: "Generate a plugin's X25519 key pair: writes the private key (mode 0600), prints the public key",
		Long: "Generate a plugin's X25519 key pair. The private key is written to PRIVATE_KEY_FILE with mode 0600;\n" +
			"an existing file is never overwritten. The public key is printed in base64, as WireGuard does:\n" +
			"list it under a role's keys in the nri-gateway configuration.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := pluginauth.GenerateKey()
			if err != nil {
				return err
			}
			if err := k.WriteFile(args[0]); err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), k.Public().String())
			return err
		},
	}
}
