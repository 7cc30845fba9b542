package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/tlsclient"
)

// Environment variables of the admin commands.
const (
	// envAdminToken holds an admin bearer token for --server.
	envAdminToken = "TRUSTGATE_ADMIN_TOKEN"
	// envAdminSocket overrides the default admin socket path.
	envAdminSocket = "TRUSTGATE_ADMIN_SOCKET"
)

// adminFlags are the flags of commands that call the admin API: the local
// admin socket by default, or a broker URL with a token from the
// environment or a file. A token is never taken from the command line,
// where every user of the host can read it.
type adminFlags struct {
	socket, server, tokenFile string
	trustBundle               string
	argvToken                 string
}

func (a *adminFlags) register(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&a.socket, "socket", "", "the broker's admin socket (default $"+envAdminSocket+", or "+broker.DefaultAdminSocket+"); no token is needed")
	f.StringVar(&a.server, "server", "", "call the broker at this base URL instead of the socket, with the admin token of $"+envAdminToken+" or --token-file")
	f.StringVar(&a.trustBundle, "trust-bundle", "", "PEM trust bundle of an https --server (tls.bundle_file, trustgate server bundle show)")
	f.StringVar(&a.tokenFile, "token-file", "", "read the admin token (from `trustgate admin token`) from this file, with --server")
	// The old flag is kept, hidden, only to refuse it with the way out.
	f.StringVar(&a.argvToken, "admin-token", "", "")
	_ = f.MarkHidden("admin-token")
}

// errArgvToken refuses a token given on the command line.
var errArgvToken = errors.New("--admin-token is not accepted: a token on the command line is visible to every user of the host (ps, /proc); set " + envAdminToken + " or use --token-file FILE")

// client returns an admin client for the flags and environment.
func (a *adminFlags) client() (*broker.AdminClient, error) {
	if a.argvToken != "" {
		return nil, errArgvToken
	}
	if a.server == "" {
		if a.tokenFile != "" {
			return nil, errors.New("--token-file goes with --server: the admin socket needs no token")
		}
		sock := a.socket
		if sock == "" {
			sock = os.Getenv(envAdminSocket)
		}
		if sock == "" {
			sock = broker.DefaultAdminSocket
		}
		return &broker.AdminClient{Socket: sock}, nil
	}
	if a.socket != "" {
		return nil, errors.New("--socket and --server are exclusive")
	}
	var tok string
	switch {
	case a.tokenFile != "":
		data, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		tok = strings.TrimSpace(string(data))
		if tok == "" {
			return nil, fmt.Errorf("--token-file %s is empty", a.tokenFile)
		}
	case os.Getenv(envAdminToken) != "":
		tok = strings.TrimSpace(os.Getenv(envAdminToken))
	default:
		return nil, fmt.Errorf("--server needs an admin token: set %s or --token-file FILE (mint one with `trustgate admin token`), or leave out --server to use the admin socket on the broker's host", envAdminToken)
	}
	hc, err := tlsclient.HTTPClient(tlsclient.Options{TrustBundlePath: a.trustBundle})
	if err != nil {
		return nil, err
	}
	return &broker.AdminClient{Server: a.server, Token: tok, HTTP: hc}, nil
}
