package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/policy"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/serve"
	"github.com/trustgate/trustgate/telemetry"
)

func newServerCmd(g *globalFlags) *cobra.Command {
	var (
		configPath, listen, metricsAddr  string
		dev, printDefault, createSealKey bool
		devKeep                          bool
		devDir, devAgentListen           string
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the attestation broker",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if printDefault {
				_, err := fmt.Fprint(out, broker.DefaultConfigTOML())
				return err
			}
			log, err := g.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			cfg := broker.DefaultConfig()
			var devAdmin broker.DevAdmin
			started := false
			for _, name := range []string{"dev-keep", "dev-dir", "dev-agent-listen"} {
				if !dev && cmd.Flags().Changed(name) {
					return fmt.Errorf("--%s goes with --dev", name)
				}
			}
			switch {
			case dev && configPath != "":
				return fmt.Errorf("--dev and --config are exclusive: --dev runs on generated defaults")
			case dev:
				if l := cmp.Or(listen, cfg.Listen); !broker.LoopbackListen(l) {
					return fmt.Errorf("--listen %q with --dev: want a loopback host:port, such as 127.0.0.1:8080: --dev serves cleartext HTTP", l)
				}
				if !broker.LoopbackListen(devAgentListen) {
					return fmt.Errorf("--dev-agent-listen %q: want a loopback host:port, such as 127.0.0.1:8443: a --dev broker is not for other hosts", devAgentListen)
				}
				dir, err := devDirectory(devDir, devKeep)
				if err != nil {
					return err
				}
				defer func() {
					switch {
					case dir.remove:
						_ = os.RemoveAll(dir.path)
					case devDir != "" && !started:
						// A failed start leaves --dev-dir as it found it.
						for _, name := range devFiles {
							_ = os.Remove(filepath.Join(dir.path, name))
						}
					}
				}()
				if devAdmin, err = devConfig(&cfg, dir.path, devAgentListen); err != nil {
					return err
				}
			case configPath != "":
				if err := config.LoadFile(configPath, &cfg); err != nil {
					return err
				}
			default:
				return fmt.Errorf("give --config FILE, or --dev to run on embedded defaults (see --print-default-config)")
			}
			if listen != "" {
				cfg.Listen = listen
			}
			if createSealKey {
				if err := seal.GenerateKeyFile(cfg.Keys.SealKeyFile); err != nil {
					return err
				}
				_, err := fmt.Fprintf(out, "created %s\n", cfg.Keys.SealKeyFile)
				return err
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			ctx := cmd.Context()
			// Nothing is created before the files the configuration
			// names are known to be good.
			if err := broker.Preflight(ctx, cfg); err != nil {
				return err
			}
			fresh := cfg.Store.Driver == "sqlite" && !fileExists(cfg.Store.Path)
			st, err := broker.OpenStoreLog(ctx, cfg.Store, log)
			if err != nil {
				return err
			}
			defer func() {
				st.Close()
				if !started && fresh {
					removeSQLite(cfg.Store.Path)
				}
			}()
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			addr := "http://" + ln.Addr().String()
			if cfg.TLS.Mode != broker.TLSModeOff && !dev {
				addr = "https://" + ln.Addr().String()
			}
			// --dev serves its API in cleartext and, for node agents, the
			// same broker over HTTPS with the CA mode's certificate and
			// client certificates on a second loopback address.
			var agentLn net.Listener
			closeAll := func() {
				_ = ln.Close()
				if agentLn != nil {
					_ = agentLn.Close()
				}
			}
			if dev {
				if agentLn, err = net.Listen("tcp", devAgentListen); err != nil {
					_ = ln.Close()
					return fmt.Errorf("dev mode: listen for agents (--dev-agent-listen): %w", err)
				}
			}
			if dev {
				// The token service's realm is where this server listens.
				cfg.TokenService.Realm = addr + "/token"
			}
			reg := telemetry.NewRegistry()
			srv, err := broker.FromConfig(ctx, cfg, st, log, reg)
			if err != nil {
				closeAll()
				return err
			}
			var adminLn net.Listener
			if cfg.Admin.SocketPath != "" {
				if adminLn, err = broker.ListenAdminSocket(cfg.Admin.SocketPath); err != nil {
					closeAll()
					return err
				}
				log.Info("admin socket listening", "path", cfg.Admin.SocketPath)
			}
			tlsMode := cfg.TLS.String()
			var agentAddr string
			switch tc := srv.TLSConfig(); {
			case dev:
				agentLn = tls.NewListener(agentLn, tc)
				agentAddr = "https://" + agentLn.Addr().String()
				tlsMode = broker.TLSModeOff
				log.Info("broker listening for agents", "addr", agentAddr, "tls", cfg.TLS.String(), "bundle_file", cfg.TLS.BundleFile)
			case tc != nil:
				ln = tls.NewListener(ln, tc)
			default:
				log.Warn("serving cleartext HTTP: tokens and secrets cross the network unencrypted unless a TLS proxy fronts this address", "addr", addr, "insecure_http", cfg.InsecureHTTP)
			}
			log.Info("broker listening", "addr", addr, "tls", tlsMode, "store", cfg.Store.Describe(), "dev", dev)
			if dev {
				fmt.Fprintf(out, "trustgate server (dev mode)\n  API:    %s\n  store:  %s\n  try:    curl %s/healthz\n", addr, cfg.Store.Path, addr)
				fmt.Fprintf(out, "  admin socket (no token needed):\n    export TRUSTGATE_ADMIN_SOCKET=%s\n", cfg.Admin.SocketPath)
				fmt.Fprintf(out, "  try:    trustgate jointoken create\n          trustgate policy get\n")
				fmt.Fprintf(out, "  admin token (24h), for the HTTP API:\n    export TRUSTGATE_ADMIN_TOKEN=%s\n", devAdmin.Token)
				fmt.Fprintf(out, "  try:    curl -H \"Authorization: Bearer $TRUSTGATE_ADMIN_TOKEN\" %s/admin/v1/entries\n", addr)
				fmt.Fprintf(out, "          trustgate entry list --server %s\n", addr)
				fmt.Fprintf(out, "  policy (sample-dev): the sample TEE may GET resources, use nebula-ca and svid, and pull and push\n")
				fmt.Fprintf(out, "          on the registry service %q; nothing else is allowed. Change it with\n", policy.DevRegistry)
				fmt.Fprintf(out, "          trustgate policy get > p.rego; edit; trustgate policy test --policy p.rego --input in.json; trustgate policy set p.rego\n")
				fmt.Fprintf(out, "  attest with the sample TEE, then trade the token for a scoped one:\n")
				fmt.Fprintf(out, "          curl -u \"x:$ATTESTATION_TOKEN\" \"%s/token?service=trustgate&scope=plugin:resource/default/key/1:get\"\n", addr)
				fmt.Fprintf(out, "  walkthrough: docs/broker.md\n")
				fmt.Fprintf(out, "  node agents: %s (HTTPS from the broker's CA; agent SVIDs as client certificates)\n", agentAddr)
				fmt.Fprintf(out, "    in the agent's configuration: broker_url = %q\n", agentAddr)
				fmt.Fprintf(out, "                                  trust_bundle_path = %q\n", cfg.TLS.BundleFile)
				fmt.Fprintf(out, "                                  trust_domain = %q\n", cfg.TrustDomain)
				fmt.Fprintf(out, "    a join token for [attestor] type = \"join_token\": trustgate jointoken create (over the admin socket above)\n")
				switch {
				case devDir != "":
					fmt.Fprintf(out, "  --dev-dir: %s stays after exit\n", devDir)
				case devKeep:
					fmt.Fprintf(out, "  --dev-keep: %s stays after exit\n", filepath.Dir(cfg.Store.Path))
				default:
					fmt.Fprintf(out, "  %s is removed on exit (--dev-keep keeps it)\n", filepath.Dir(cfg.Store.Path))
				}
			}
			opts := serve.Options{ShutdownGrace: cfg.ShutdownGrace.Duration, OnShutdown: srv.Drain}
			grp, ctx := errgroup.WithContext(ctx)
			grp.Go(func() error { return serve.HTTP(ctx, log, "broker", ln, srv, opts) })
			if agentLn != nil {
				grp.Go(func() error { return serve.HTTP(ctx, log, "broker-agents", agentLn, srv, opts) })
			}
			grp.Go(func() error { srv.Run(ctx); return nil })
			if adminLn != nil {
				grp.Go(func() error { return srv.ServeAdminSocket(ctx, adminLn) })
			}
			if err := serveMetrics(ctx, grp, log, metricsAddr, reg, opts, srv.Ready); err != nil {
				closeAll()
				if adminLn != nil {
					_ = adminLn.Close()
				}
				return err
			}
			started = true
			err = grp.Wait()
			if err == nil || context.Cause(ctx) != nil {
				log.Info("stopped")
			}
			return err
		},
	}
	cmd.AddCommand(newServerBundleCmd())
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "TOML configuration file")
	f.BoolVar(&dev, "dev", false, "run on embedded defaults: a fresh SQLite store in a temporary directory, generated keys")
	f.BoolVar(&devKeep, "dev-keep", false, "with --dev: keep the temporary directory (store, keys) after exit")
	f.StringVar(&devDir, "dev-dir", "", "with --dev: keep the store, keys, admin socket and trust bundle in this directory (created if missing, kept after exit) instead of a temporary one")
	f.StringVar(&devAgentListen, "dev-agent-listen", "127.0.0.1:8443", "with --dev: the loopback address (host:port) where node agents reach the broker over HTTPS")
	f.BoolVar(&printDefault, "print-default-config", false, "print a commented default configuration and exit")
	f.BoolVar(&createSealKey, "create-seal-key", false, "create the configured keys.seal_key_file (mode 0600) and exit; never overwrites")
	f.StringVar(&listen, "listen", "", "override the configured listen address (host:port)")
	f.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics, /healthz and /readyz on this address (host:port)")
	return cmd
}

// fileExists reports whether path names an existing file.
func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// removeSQLite removes a database that a failed start created, with its
// WAL and shared-memory files.
func removeSQLite(path string) {
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		_ = os.Remove(p)
	}
}

// devWorkdir is the directory of a --dev broker, and whether it is removed on
// exit.
type devWorkdir struct {
	path   string
	remove bool
}

// devFiles are the files a --dev broker creates in its directory.
var devFiles = []string{"trustgate.db", "seal.key", "admin.pub", "admin.sock", "bundle.pem"}

// devDirectory makes the directory of a --dev broker: a new temporary one,
// removed on exit unless keep, or dir (--dev-dir), created if missing and
// kept, which must not hold the files of an earlier run.
func devDirectory(dir string, keep bool) (devWorkdir, error) {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "trustgate-dev-")
		if err != nil {
			return devWorkdir{}, fmt.Errorf("dev mode: %w", err)
		}
		return devWorkdir{path: tmp, remove: !keep}, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return devWorkdir{}, fmt.Errorf("dev mode: --dev-dir: %w", err)
	}
	for _, name := range devFiles {
		if p := filepath.Join(dir, name); fileExists(p) {
			return devWorkdir{}, fmt.Errorf("dev mode: --dev-dir %s already holds %s from an earlier run: remove it, or choose another directory", dir, name)
		}
	}
	return devWorkdir{path: dir}, nil
}

// devConfig turns cfg into the --dev broker's configuration with its files
// in dir: a new seal key and admin key, the sample attestor and the
// sample-dev policy, nebula-ca, svid and the token service on, a
// cleartext API, and the CA mode's TLS with client certificates for the
// node agents' listener at agentListen, a loopback address.
func devConfig(cfg *broker.Config, dir, agentListen string) (broker.DevAdmin, error) {
	cfg.Store.Path = filepath.Join(dir, "trustgate.db")
	cfg.Keys.SealKeyFile = filepath.Join(dir, "seal.key")
	if err := seal.GenerateKeyFile(cfg.Keys.SealKeyFile); err != nil {
		return broker.DevAdmin{}, fmt.Errorf("dev mode: %w", err)
	}
	devAdmin, err := broker.NewDevAdmin(dir, 24*time.Hour)
	if err != nil {
		return broker.DevAdmin{}, fmt.Errorf("dev mode: %w", err)
	}
	cfg.Admin = broker.AdminConfig{PublicKeyFile: devAdmin.PublicKeyFile, SocketPath: filepath.Join(dir, "admin.sock"),
		MaxTokenTTL: broker.Duration{Duration: 24 * time.Hour}}
	cfg.TokenService.Enabled = true
	cfg.TokenService.Services = []string{policy.DevRegistry}
	// The API is cleartext on loopback, which keeps the README's curl
	// examples short; the TLS settings serve the agents' listener only.
	cfg.TLS.Mode = broker.TLSModeCA
	cfg.TLS.ClientCerts = true
	cfg.TLS.BundleFile = filepath.Join(dir, "bundle.pem")
	if host, _, err := net.SplitHostPort(agentListen); err == nil && host != "" {
		cfg.TLS.ServerNames = []string{host}
	}
	cfg.Attestors.Sample.Enabled = true
	cfg.RateLimit.PerSecond, cfg.RateLimit.GlobalPerSecond = 0, 0
	cfg.Policy.Default = "sample-dev"
	cfg.Plugins.SVID.Enabled = true
	cfg.Plugins.NebulaCA.Enabled = true
	cfg.Plugins.NebulaCA.CANetworks = []string{"10.42.0.0/16"}
	return devAdmin, nil
}
