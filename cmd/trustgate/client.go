package main

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/slackhq/nebula/cert"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/client/kbs"
)

// envJoinToken is where `trustgate client` reads a join token from when
// --join-token-file is not given; secrets never go on the command line.
const envJoinToken = "TRUSTGATE_JOIN_TOKEN"

// clientFlags are the flags every `trustgate client` command shares.
type clientFlags struct {
	url         string
	trustBundle string
	clientCert  string
	clientKey   string
	session     string
	timeout     time.Duration
	teeKeyType  string

	attestor      string
	sampleSVN     string
	joinTokenFile string
	popCert       string
	popKey        string
	k8sCluster    string
	k8sTokenFile  string
}

func (f *clientFlags) register(cmd *cobra.Command) {
	p := cmd.PersistentFlags()
	p.StringVar(&f.url, "url", "http://127.0.0.1:8080", "broker base URL")
	p.StringVar(&f.trustBundle, "trust-bundle", "", "PEM file of the CAs that verify the broker's TLS certificate (default: the system roots)")
	p.StringVar(&f.clientCert, "client-cert", "", "PEM certificate (chain) for mutual TLS")
	p.StringVar(&f.clientKey, "client-key", "", "PEM private key for --client-cert")
	p.StringVar(&f.session, "session", "", "session file: attest writes it (mode 0600); the other commands use it instead of attesting")
	p.DurationVar(&f.timeout, "timeout", kbs.DefaultTimeout, "bound on each request")
	p.StringVar(&f.teeKeyType, "tee-key-type", "ec", "TEE key to generate: ec (P-256, ECDH-ES+A256KW) or rsa (RSA-OAEP-256)")
	p.StringVar(&f.attestor, "attestor", "sample", "attestor (the RCAR tee): sample, join_token, x509pop or k8s_psat")
	p.StringVar(&f.attestor, "tee", "sample", "alias of --attestor")
	p.StringVar(&f.sampleSVN, "sample-svn", "1", "sample: the svn to claim")
	p.StringVar(&f.joinTokenFile, "join-token-file", "", "join_token: file holding the token (default: $"+envJoinToken+")")
	p.StringVar(&f.popCert, "x509pop-cert", "", "x509pop: PEM certificate, leaf first, then intermediates")
	p.StringVar(&f.popKey, "x509pop-key", "", "x509pop: PEM private key of the leaf")
	p.StringVar(&f.k8sCluster, "k8s-cluster", "", "k8s_psat: the cluster name the broker knows")
	p.StringVar(&f.k8sTokenFile, "k8s-token-file", "/var/run/secrets/tokens/spire-agent", "k8s_psat: projected service-account token file")
}

// attester builds the attester the flags name.
func (f *clientFlags) attester() (kbs.Attester, error) {
	switch f.attestor {
	case "sample":
		return kbs.Sample(f.sampleSVN), nil
	case "join_token":
		tok := os.Getenv(envJoinToken)
		if f.joinTokenFile != "" {
			b, err := os.ReadFile(f.joinTokenFile)
			if err != nil {
				return nil, fmt.Errorf("--join-token-file: %w", err)
			}
			tok = string(b)
		}
		tok = strings.TrimSpace(tok)
		if tok == "" {
			return nil, fmt.Errorf("join_token: give --join-token-file or set $%s", envJoinToken)
		}
		return kbs.JoinToken(tok), nil
	case "x509pop":
		if f.popCert == "" || f.popKey == "" {
			return nil, errors.New("x509pop: give --x509pop-cert and --x509pop-key")
		}
		return kbs.LoadX509Pop(f.popCert, f.popKey)
	case "k8s_psat":
		if f.k8sCluster == "" {
			return nil, errors.New("k8s_psat: give --k8s-cluster")
		}
		return kbs.K8sPSAT(f.k8sCluster, f.k8sTokenFile), nil
	}
	return nil, fmt.Errorf("--attestor %q: want sample, join_token, x509pop or k8s_psat", f.attestor)
}

// options are the client options for TLS, timeout and key.
func (f *clientFlags) options(key *kbs.TEEKey) ([]kbs.Option, error) {
	opts := []kbs.Option{kbs.WithTimeout(f.timeout), kbs.WithTEEKey(key)}
	if f.trustBundle == "" && f.clientCert == "" && f.clientKey == "" {
		return opts, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.trustBundle != "" {
		b, err := os.ReadFile(f.trustBundle)
		if err != nil {
			return nil, fmt.Errorf("--trust-bundle: %w", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--trust-bundle %s holds no PEM certificate", f.trustBundle)
		}
	}
	if (f.clientCert == "") != (f.clientKey == "") {
		return nil, errors.New("give both --client-cert and --client-key, or neither")
	}
	if f.clientCert != "" {
		pair, err := tls.LoadX509KeyPair(f.clientCert, f.clientKey)
		if err != nil {
			return nil, fmt.Errorf("--client-cert/--client-key: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return append(opts, kbs.WithTLSConfig(conf)), nil
}

// attest runs RCAR with the flags' attestor and a fresh TEE key.
func (f *clientFlags) attest(ctx context.Context) (*kbs.Client, string, error) {
	a, err := f.attester()
	if err != nil {
		return nil, "", err
	}
	key, err := kbs.GenerateTEEKey(kbs.KeyType(f.teeKeyType))
	if err != nil {
		return nil, "", err
	}
	opts, err := f.options(key)
	if err != nil {
		return nil, "", err
	}
	c, err := kbs.New(f.url, opts...)
	if err != nil {
		return nil, "", err
	}
	tok, err := c.Attest(ctx, a)
	if err != nil {
		return nil, "", err
	}
	return c, tok, nil
}

// connect returns an attested client: from --session when given, else by
// attesting now.
func (f *clientFlags) connect(cmd *cobra.Command) (*kbs.Client, error) {
	if f.session == "" {
		c, _, err := f.attest(cmd.Context())
		return c, err
	}
	s, err := kbs.ReadSession(f.session)
	if err != nil {
		return nil, err
	}
	base := s.URL
	if cmd.Flags().Changed("url") {
		base = f.url
	}
	opts, err := f.options(s.TEEKey)
	if err != nil {
		return nil, err
	}
	return kbs.New(base, append(opts, kbs.WithToken(s.Token))...)
}

func newClientCmd() *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{
		Use:   "client",
		Short: "Attest to a broker and fetch resources, Nebula credentials and SVIDs",
		Long: `A KBS protocol 0.4.0 client, in the spirit of Trustee's kbs-client. Every
command attests first with --attestor, unless --session names a file that
"attest --session" wrote. Secrets are read from files or the environment,
never from the command line.`,
	}
	f.register(cmd)
	cmd.AddCommand(newClientAttestCmd(f), newClientResourceCmd(f), newClientNebulaCmd(f), newClientSVIDCmd(f))
	return cmd
}

func newClientAttestCmd(f *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "attest",
		Short: "Attest and print the attestation token (with --session, also save it and the TEE key)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, tok, err := f.attest(cmd.Context())
			if err != nil {
				return err
			}
			if f.session != "" {
				if err := kbs.WriteSession(f.session, c.Session()); err != nil {
					return err
				}
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), tok)
			return err
		},
	}
}

func newClientResourceCmd(f *clientFlags) *cobra.Command {
	var path, out string
	cmd := &cobra.Command{
		Use:   "get-resource",
		Short: "Fetch a resource, decrypted with the TEE key, to stdout or --out",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			seg := strings.Split(path, "/")
			if len(seg) != 3 {
				return fmt.Errorf("--path %q: want <repository>/<type>/<tag>", path)
			}
			c, err := f.connect(cmd)
			if err != nil {
				return err
			}
			v, err := c.GetResource(cmd.Context(), seg[0], seg[1], seg[2])
			if err != nil {
				return err
			}
			if out != "" {
				return writeFile(out, v, 0o600)
			}
			_, err = cmd.OutOrStdout().Write(v)
			return err
		},
	}
	cmd.Flags().StringVar(&path, "path", "", "resource path <repository>/<type>/<tag>")
	cmd.Flags().StringVar(&out, "out", "", "write the resource to this file (mode 0600) instead of stdout")
	_ = cmd.MarkFlagRequired("path")
	return cmd
}

func newClientNebulaCmd(f *clientFlags) *cobra.Command {
	var (
		req      kbs.NebulaRequest
		outDir   string
		localKey bool
	)
	cmd := &cobra.Command{
		Use:   "nebula",
		Short: "Get Nebula credentials from the nebula-ca plugin: host.crt, host.key, ca.crt",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.connect(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var cred kbs.NebulaCredential
			if localKey {
				cred, err = nebulaLocalKey(ctx, c, req)
			} else {
				cred, err = c.NebulaCredential(ctx, req)
			}
			if err != nil {
				return err
			}
			if err := os.MkdirAll(outDir, 0o755); err != nil {
				return err
			}
			for _, w := range []struct {
				name string
				data []byte
				perm os.FileMode
			}{{"host.key", cred.NodeKey, 0o600}, {"host.crt", cred.NodeCrt, 0o644}, {"ca.crt", cred.CACrt, 0o644}} {
				if err := writeFile(filepath.Join(outDir, w.name), w.data, w.perm); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", filepath.Join(outDir, "{host.crt,host.key,ca.crt}"))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&req.Name, "name", "", "certificate name")
	fl.StringSliceVar(&req.IPs, "ip", nil, "overlay address(es), addr/bits")
	fl.StringSliceVar(&req.Groups, "groups", nil, "groups")
	fl.StringSliceVar(&req.Subnets, "subnets", nil, "unsafe networks the node routes for")
	fl.DurationVar(&req.Duration, "duration", 0, "certificate lifetime (default: the broker's)")
	fl.IntVar(&req.Version, "version", 0, "certificate format, 1 or 2 (default: the broker's)")
	fl.StringVar(&outDir, "out-dir", ".", "directory for host.crt, host.key and ca.crt")
	fl.BoolVar(&localKey, "local-key", false, "make the key pair here and send only the public key (POST), so the private key never leaves the node")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("ip")
	return cmd
}

// nebulaLocalKey makes a key pair on the CA's curve, has the broker
// certify its public half, and returns the credential with the private
// key added.
func nebulaLocalKey(ctx context.Context, c *kbs.Client, req kbs.NebulaRequest) (kbs.NebulaCredential, error) {
	cas, err := c.NebulaCA(ctx)
	if err != nil {
		return kbs.NebulaCredential{}, err
	}
	ca, _, err := cert.UnmarshalCertificateFromPEM(cas)
	if err != nil {
		return kbs.NebulaCredential{}, fmt.Errorf("nebula CA: %w", err)
	}
	curve := ecdh.X25519()
	if ca.Curve() == cert.Curve_P256 {
		curve = ecdh.P256()
	}
	priv, err := curve.GenerateKey(rand.Reader)
	if err != nil {
		return kbs.NebulaCredential{}, fmt.Errorf("nebula key: %w", err)
	}
	cred, err := c.NebulaSign(ctx, req, cert.MarshalPublicKeyToPEM(ca.Curve(), priv.PublicKey().Bytes()))
	if err != nil {
		return kbs.NebulaCredential{}, err
	}
	cred.NodeKey = cert.MarshalPrivateKeyToPEM(ca.Curve(), priv.Bytes())
	return cred, nil
}

func newClientSVIDCmd(f *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "svid", Short: "Get SVIDs from the svid plugin"}
	var (
		spiffeID string
		outDir   string
		audience []string
		out      string
	)
	x := &cobra.Command{
		Use:   "x509",
		Short: "Make a key and CSR here and write the X.509-SVID: svid.0.pem, svid.0.key, bundle.0.pem",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.connect(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			id, err := svidID(c, spiffeID)
			if err != nil {
				return err
			}
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return err
			}
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
			if err != nil {
				return fmt.Errorf("CSR: %w", err)
			}
			sv, err := c.X509SVID(ctx, csr, id.String())
			if err != nil {
				return err
			}
			raw, err := c.SVIDBundle(ctx)
			if err != nil {
				return err
			}
			bundle, err := spiffebundle.Parse(id.TrustDomain(), raw)
			if err != nil {
				return fmt.Errorf("bundle: %w", err)
			}
			var roots []byte
			for _, r := range bundle.X509Authorities() {
				roots = append(roots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
			}
			kder, err := x509.MarshalPKCS8PrivateKey(key)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(outDir, 0o755); err != nil {
				return err
			}
			chain := []byte(strings.Join(sv.Chain, ""))
			if err := writeFile(filepath.Join(outDir, "svid.0.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
				return err
			}
			if err := writeFile(filepath.Join(outDir, "svid.0.pem"), chain, 0o644); err != nil {
				return err
			}
			if err := writeFile(filepath.Join(outDir, "bundle.0.pem"), roots, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "SPIFFE ID: %s\nexpires: %s\nwrote %s\n", sv.SPIFFEID,
				time.Unix(sv.ExpiresAt, 0).UTC().Format(time.RFC3339), filepath.Join(outDir, "{svid.0.pem,svid.0.key,bundle.0.pem}"))
			return nil
		},
	}
	x.Flags().StringVar(&outDir, "out-dir", ".", "directory for svid.0.pem, svid.0.key and bundle.0.pem")
	j := &cobra.Command{
		Use:   "jwt",
		Short: "Print a JWT-SVID for --audience (or write it to --out)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.connect(cmd)
			if err != nil {
				return err
			}
			id, err := svidID(c, spiffeID)
			if err != nil {
				return err
			}
			sv, err := c.JWTSVID(cmd.Context(), id.String(), audience)
			if err != nil {
				return err
			}
			if out != "" {
				return writeFile(out, []byte(sv.Token+"\n"), 0o600)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), sv.Token)
			return err
		},
	}
	j.Flags().StringSliceVar(&audience, "audience", nil, "audience(s) of the token")
	j.Flags().StringVar(&out, "out", "", "write the token to this file (mode 0600) instead of stdout")
	_ = j.MarkFlagRequired("audience")
	cmd.PersistentFlags().StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID to ask for (default: the attested identity)")
	cmd.AddCommand(x, j)
	return cmd
}

// svidID is the SPIFFE ID asked for: the flag's, or else the subject of
// the client's own attestation token.
func svidID(c *kbs.Client, flag string) (spiffeid.ID, error) {
	if flag != "" {
		return spiffeid.FromString(flag)
	}
	tok, err := jwt.ParseSigned(c.Token(), []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.EdDSA, jose.RS256, jose.PS256})
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("attestation token: %w", err)
	}
	var claims jwt.Claims
	// The broker verifies the token; this only reads which ID it names.
	if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
		return spiffeid.ID{}, fmt.Errorf("attestation token: %w", err)
	}
	return spiffeid.FromString(claims.Subject)
}

// writeFile writes data to path with mode perm, replacing an existing
// file's contents and tightening its mode.
func writeFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
