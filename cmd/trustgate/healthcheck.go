package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/store/sqlite"
	"github.com/trustgate/trustgate/tlsclient"
)

func newHealthcheckCmd() *cobra.Command {
	var (
		rawURL, configPath, bundlePath string
		insecure, live                 bool
		timeout                        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Probe a server's or gateway's /readyz (or /healthz with --live); exit 0 when it answers 200, else 1",
		Long: `Probe /readyz (or /healthz with --live) and exit 0 when it answers 200.

With --url, probe that URL (its path defaults to /readyz); a gateway serves
the probes on its --metrics-addr. With --config, probe the server that the
configuration describes, on its listen address, verifying its certificate
against its trust bundle (tls.bundle_file or the store's, in mode "ca") or its
tls.cert_file (mode "files").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/readyz"
			if live {
				path = "/healthz"
			}
			opts := tlsclient.Options{TrustBundlePath: bundlePath, InsecureBootstrap: insecure}
			var serverName string
			switch {
			case (rawURL == "") == (configPath == ""):
				return errors.New("give exactly one of --url and --config")
			case configPath != "":
				u, o, name, err := probeFromConfig(cmd, configPath, path)
				if err != nil {
					return err
				}
				rawURL, serverName = u, name
				if opts.TrustBundlePath == "" && !insecure {
					opts.TrustBundle = o
				}
			default:
				u, err := url.Parse(rawURL)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					return fmt.Errorf("--url %q: want an http(s) URL such as https://127.0.0.1:8080/readyz", rawURL)
				}
				if u.Path == "" || u.Path == "/" {
					u.Path = path
				}
				rawURL = u.String()
			}
			hc, err := tlsclient.HTTPClient(opts)
			if err != nil {
				return err
			}
			hc.Timeout = timeout
			if serverName != "" {
				hc.Transport.(*http.Transport).TLSClientConfig.ServerName = serverName
			}
			resp, err := hc.Get(rawURL)
			if err != nil {
				return fmt.Errorf("healthcheck %s: %w", rawURL, err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("healthcheck %s: %s: %s", rawURL, resp.Status, body)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: %s", rawURL, body)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&rawURL, "url", "", "probe this URL (path defaults to /readyz)")
	f.StringVar(&configPath, "config", "", "probe the server this TOML configuration describes")
	f.StringVar(&bundlePath, "trust-bundle", "", "PEM trust bundle to verify an https server with")
	f.BoolVar(&insecure, "insecure-bootstrap", false, "do not verify the server's certificate (logged)")
	f.BoolVar(&live, "live", false, "probe /healthz (the process serves) instead of /readyz (it can do its work)")
	f.DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	return cmd
}

// probeFromConfig returns the probe URL of the server cfg describes, the
// roots to verify it with, and the name to verify (mode "files").
func probeFromConfig(cmd *cobra.Command, path, probe string) (string, []*x509.Certificate, string, error) {
	cfg := broker.DefaultConfig()
	if err := config.LoadFile(path, &cfg); err != nil {
		return "", nil, "", err
	}
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return "", nil, "", fmt.Errorf("listen = %q: %w", cfg.Listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	u := url.URL{Scheme: "https", Host: net.JoinHostPort(host, port), Path: probe}
	switch cfg.TLS.Mode {
	case broker.TLSModeOff:
		u.Scheme = "http"
		return u.String(), nil, "", nil
	case broker.TLSModeFiles:
		roots, err := tlsclient.LoadBundle(cfg.TLS.CertFile)
		if err != nil {
			return "", nil, "", err
		}
		name := ""
		if len(roots[0].DNSNames) > 0 {
			name = roots[0].DNSNames[0]
		}
		return u.String(), roots, name, nil
	}
	if cfg.TLS.BundleFile != "" {
		roots, err := tlsclient.LoadBundle(cfg.TLS.BundleFile)
		return u.String(), roots, "", err
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return "", nil, "", fmt.Errorf("trust_domain: %w", err)
	}
	if _, err := os.Stat(cfg.Store.Path); err != nil {
		return "", nil, "", fmt.Errorf("store.path: %w", err)
	}
	st, err := sqlite.Open(cmd.Context(), cfg.Store.Path, sqlite.Options{Synchronous: cfg.Store.Synchronous})
	if err != nil {
		return "", nil, "", err
	}
	defer st.Close()
	b, err := svid.StoredX509Bundle(cmd.Context(), st, td, time.Now())
	if err != nil {
		return "", nil, "", err
	}
	return u.String(), b.X509Authorities(), "", nil
}
