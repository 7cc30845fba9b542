package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// addAgentAdminCommands adds `agent list` and `agent evict`, the admin
// commands on a broker's attested agents (SPIRE's `spire-server agent list`
// and `agent evict`), to the agent command, wherever that is built.
func addAgentAdminCommands(agentCmd *cobra.Command, _ *globalFlags) {
	af := &adminFlags{}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the agents that attested to a broker",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			agents, err := c.ListAgents(cmd.Context())
			if err != nil {
				return err
			}
			return printJSON(cmd, agents)
		},
	}
	evict := &cobra.Command{
		Use:   "evict <spiffe-id>",
		Short: "Evict an agent: the broker refuses it everything from its next request on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := spiffeid.FromString(args[0]); err != nil {
				return fmt.Errorf("agent ID %q: %w", args[0], err)
			}
			c, err := af.client()
			if err != nil {
				return err
			}
			ag, err := c.EvictAgent(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJSON(cmd, ag)
		},
	}
	for _, c := range []*cobra.Command{list, evict} {
		af.register(c)
		agentCmd.AddCommand(c)
	}
}
