package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/policy"
)

func newPolicyCmd() *cobra.Command {
	af := &adminFlags{}
	cmd := &cobra.Command{Use: "policy", Short: "Get, set and test the broker's resource policy (rego)"}
	af.register(cmd)
	get := &cobra.Command{
		Use:   "get",
		Short: "Print the resource policy in force",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			text, rev, err := c.GetPolicy(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "# revision %d\n", rev)
			_, err = io.WriteString(cmd.OutOrStdout(), text)
			return err
		},
	}
	set := &cobra.Command{
		Use:   "set FILE",
		Short: "Put the policy of FILE (- for stdin) in force; a policy that does not compile is refused with its line and column",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			text, err := readArg(cmd, args[0])
			if err != nil {
				return err
			}
			c, err := af.client()
			if err != nil {
				return err
			}
			rev, err := c.SetPolicy(cmd.Context(), string(text))
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "policy in force: revision %d\n", rev)
			return err
		},
	}
	var policyFile, inputFile string
	test := &cobra.Command{
		Use:   "test --policy FILE --input FILE",
		Short: "Evaluate an input document (JSON, as docs/broker-plugins.md shows) against a policy file, offline, and print the decision",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if policyFile == "" || inputFile == "" {
				return fmt.Errorf("--policy FILE and --input FILE are required")
			}
			text, err := broker.LoadPolicyFile(cmd.Context(), policyFile)
			if err != nil {
				return err
			}
			prep, err := policy.Compile(cmd.Context(), text)
			if err != nil {
				return err
			}
			data, err := readArg(cmd, inputFile)
			if err != nil {
				return err
			}
			in, err := policy.ParseInput(data)
			if err != nil {
				return fmt.Errorf("%s: %w", inputFile, err)
			}
			d, err := prep.Eval(cmd.Context(), in)
			if err != nil {
				return err
			}
			out := struct {
				Allow  bool     `json:"allow"`
				Reason string   `json:"reason,omitempty"`
				Grant  []string `json:"grant,omitempty"`
			}{d.Allow, d.Reason, d.Grant}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}
	test.Flags().StringVar(&policyFile, "policy", "", "the rego policy file")
	test.Flags().StringVar(&inputFile, "input", "", "the input document, JSON (- for stdin)")
	cmd.AddCommand(get, set, test)
	return cmd
}

// readArg reads the file name, or stdin for "-".
func readArg(cmd *cobra.Command, name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4<<20))
	}
	return os.ReadFile(name)
}
