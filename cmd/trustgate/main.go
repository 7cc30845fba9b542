// Command trustgate brings proven identity and least privilege to container
// nodes: an NRI gateway with authenticated plugins, an attestation broker,
// and a node agent, in one binary.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/trustgate/trustgate/telemetry"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "trustgate:", err)
		return 1
	}
	return 0
}

// globalFlags are the flags every subcommand shares.
type globalFlags struct {
	logFormat string
	logLevel  string
}

func (g *globalFlags) logger(w io.Writer) (*slog.Logger, error) {
	return telemetry.NewLogger(w, g.logFormat, g.logLevel)
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "trustgate",
		Short:         "Proven identity and least privilege for container nodes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.AddCommand(
		newVersionCmd(),
		newServerCmd(g),
		newAgentCmd(g),
		newNRIGatewayCmd(g),
		newKeygenCmd(),
		newEntryCmd(),
		newJoinTokenCmd(),
		newHealthcheckCmd(),
		newAdminCmd(),
		newPolicyCmd(),
		newClientCmd(),
	)
	return root
}
