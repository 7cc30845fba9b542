package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/trustgate/trustgate/broker"
)

func newJoinTokenCmd() *cobra.Command {
	af := &adminFlags{}
	cmd := &cobra.Command{Use: "jointoken", Short: "Manage node join tokens on a broker"}
	af.register(cmd)
	var (
		ttl      time.Duration
		spiffeID string
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a single-use join token (printed once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			if ttl < time.Second {
				return fmt.Errorf("--ttl %v: want at least 1s", ttl)
			}
			out, err := c.CreateJoinToken(cmd.Context(), broker.JoinTokenRequest{TTL: int64(ttl / time.Second), SPIFFEID: spiffeID})
			if err != nil {
				return err
			}
			return printJSON(cmd, out)
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 10*time.Minute, "time to live")
	create.Flags().StringVar(&spiffeID, "spiffeID", "", "pin the agent SPIFFE ID the token grants (default spiffe://<td>/spire/agent/join_token/<token>)")
	cmd.AddCommand(create)
	return cmd
}
