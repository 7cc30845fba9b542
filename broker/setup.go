package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/attest/jointoken"
	"github.com/trustgate/trustgate/attest/k8spsat"
	"github.com/trustgate/trustgate/attest/sample"
	"github.com/trustgate/trustgate/attest/x509pop"
	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/external"
	"github.com/trustgate/trustgate/broker/plugin/nebulaca"
	"github.com/trustgate/trustgate/broker/plugin/resource"
	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/pluginauth"
	"github.com/trustgate/trustgate/policy"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/token"
)

// FromConfig builds a Server from a validated configuration: it loads the
// seal key file, opens the token signing keys, loads the admin key and
// builds the enabled attestors and plugins.
//
// The broker's metrics are registered on reg when it is not nil. The
// built-in resource plugin is always served; nebula-ca and svid when
// enabled; external plugins are connected lazily, on first use.
func FromConfig(ctx context.Context, cfg Config, st store.Store, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust_domain: %w", err)
	}
	sealer, err := seal.LoadKeyFile(cfg.Keys.SealKeyFile)
	if err != nil {
		return nil, fmt.Errorf("keys.seal_key_file: %w", err)
	}
	maxTTL := cfg.Token.TTL.Duration
	if cfg.TokenService.Enabled {
		maxTTL = max(maxTTL, cfg.TokenService.ExpiresIn.Duration)
	}
	tokens, err := token.Open(ctx, token.Options{
		Keys: st.Keys(), Sealer: sealer,
		KeyLifetime: cfg.Token.KeyLifetime.Duration, Prepublish: cfg.Token.Prepublish.Duration,
		MaxTokenTTL: maxTTL, Log: log,
		Locks: st.Locks(), Changes: st.Changes(), Propagation: cfg.Store.propagation(),
	})
	if err != nil {
		return nil, err
	}
	admin, err := NewAdminVerifier(cfg.Admin, nil, nil, log)
	if err != nil {
		return nil, err
	}
	attestors, err := buildAttestors(cfg.Attestors, td, st, log)
	if err != nil {
		return nil, err
	}
	plugins, err := buildPlugins(ctx, cfg.Plugins, td, st, sealer, log)
	if err != nil {
		return nil, err
	}
	def := policy.DenyAll
	if cfg.Policy.Default == "sample-dev" {
		def = policy.SampleDev
		log.Warn("the sample-dev resource policy is in force: callers attested by the sample TEE may read resources, get Nebula certificates and SVIDs, and pull and push on the dev registry " + policy.DevRegistry)
	}
	pol, err := policy.New(ctx, policy.Options{Store: st.Policies(), Default: def, Log: log})
	if err != nil {
		return nil, err
	}
	tlsSide, clientSVIDs, err := setupTLS(ctx, cfg, td, st, sealer, plugins, log)
	if err != nil {
		return nil, err
	}
	var ts *TokenServiceOptions
	if c := cfg.TokenService; c.Enabled {
		ts = &TokenServiceOptions{Realm: cfg.RealmURL(), Service: c.Service, Services: c.Services, X5CServices: c.X5CServices,
			ExpiresIn: c.ExpiresIn.Duration, SVIDAudience: c.SVIDAudience}
		for _, p := range plugins {
			if sp, ok := p.(*svid.Plugin); ok {
				ts.SVIDs = sp
			}
		}
	}
	srv, err := New(Options{
		PolicyFile:   cfg.Policy.PolicyPath,
		TokenService: ts, ClientSVIDs: clientSVIDs,
		Plugins: plugins, Policy: pol, MaxBodyBytes: cfg.Plugins.MaxBodyBytes, Metrics: reg,
		Store: st, Log: log, TrustDomain: td, Issuer: cfg.Issuer,
		Attestors: attestors, Tokens: tokens, Admin: admin,
		SessionTTL: cfg.Session.TTL.Duration, TokenTTL: cfg.Token.TTL.Duration,
		AttestTimeout: cfg.AttestTimeout.Duration, SweepInterval: cfg.Session.SweepInterval.Duration,
		JoinTokenMaxTTL: cfg.Attestors.JoinToken.MaxTTL.Duration,
		RateLimit: RateLimit{PerSecond: cfg.RateLimit.PerSecond, Burst: cfg.RateLimit.Burst, MaxClients: cfg.RateLimit.MaxClients,
			IPv4Prefix: cfg.RateLimit.IPv4Prefix, IPv6Prefix: cfg.RateLimit.IPv6Prefix,
			GlobalPerSecond: cfg.RateLimit.GlobalPerSecond, GlobalBurst: cfg.RateLimit.GlobalBurst},
	})
	if err != nil {
		return nil, err
	}
	srv.tls = tlsSide
	return srv, nil
}

// buildAttestors constructs the enabled attestors. Each new attestor adds a
// section to AttestorsConfig and a constructor call here.
func buildAttestors(cfg AttestorsConfig, td spiffeid.TrustDomain, st store.Store, log *slog.Logger) ([]attest.Attestor, error) {
	var out []attest.Attestor
	if cfg.Sample.Enabled {
		a, err := sample.New(td)
		if err != nil {
			return nil, err
		}
		log.Warn("the sample attestor is enabled: it accepts evidence no hardware signed")
		out = append(out, a)
	}
	if cfg.JoinToken.Enabled {
		out = append(out, jointoken.New(st.JoinTokens(), td, nil, log))
	}
	if cfg.X509Pop.Enabled {
		a, err := x509pop.New(cfg.X509Pop.Config, td, log.With("attestor", "x509pop"))
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	if cfg.K8sPSAT.Enabled {
		a, err := k8spsat.New(cfg.K8sPSAT.Config, td, log.With("attestor", "k8s_psat"))
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// buildPlugins builds the resource plugin and the configured external ones.
func buildPlugins(ctx context.Context, cfg PluginsConfig, td spiffeid.TrustDomain, st store.Store, sealer *seal.Sealer, log *slog.Logger) ([]plugin.Plugin, error) {
	rp, err := resource.New(resource.Options{Resources: st.Resources(), Sealer: sealer})
	if err != nil {
		return nil, err
	}
	out := []plugin.Plugin{rp}
	if cfg.NebulaCA.Enabled {
		p, err := nebulaca.New(ctx, cfg.NebulaCA.Config, st, sealer, log.With("plugin", nebulaca.Name), nil)
		if err != nil {
			return nil, fmt.Errorf("plugins.nebula_ca: %w", err)
		}
		out = append(out, p)
	}
	if cfg.SVID.Enabled {
		p, err := svid.New(ctx, cfg.SVID.Config, td, st, sealer, log.With("plugin", "svid"), nil)
		if err != nil {
			return nil, fmt.Errorf("plugins.svid: %w", err)
		}
		out = append(out, p)
	}
	for _, e := range cfg.External {
		var key pluginauth.PublicKey
		if e.PublicKey != "" {
			if key, err = pluginauth.ParsePublicKey(e.PublicKey); err != nil {
				return nil, fmt.Errorf("plugins.external %s: public_key: %w", e.Name, err)
			}
		}
		p, err := external.New(external.Options{Name: e.Name, Address: e.Address, PublicKey: key, Timeout: e.Timeout.Duration,
			Log: log.With("plugin", e.Name)})
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// DevAdmin is a generated admin credential for --dev mode.
type DevAdmin struct {
	// PublicKeyFile is where the public key was written.
	PublicKeyFile string
	// Token is an admin bearer token valid for TTL.
	Token string
}

// NewDevAdmin generates an ECDSA P-256 admin key, writes its public key to
// dir/admin.pub, and returns a token with role "admin" valid for ttl.
func NewDevAdmin(dir string, ttl time.Duration) (DevAdmin, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return DevAdmin{}, fmt.Errorf("dev admin key: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return DevAdmin{}, fmt.Errorf("dev admin key: %w", err)
	}
	path := dir + "/admin.pub"
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		return DevAdmin{}, fmt.Errorf("dev admin key: %w", err)
	}
	tok, err := SignAdminToken(priv, "dev-admin", ttl)
	if err != nil {
		return DevAdmin{}, err
	}
	return DevAdmin{PublicKeyFile: path, Token: tok}, nil
}

// SignAdminToken signs an ES256 admin token for subject, valid for ttl;
// its "kid" is AdminKeyID of the key.
func SignAdminToken(priv *ecdsa.PrivateKey, subject string, ttl time.Duration) (string, error) {
	return SignAdminTokenFor(priv, subject, "", ttl)
}

// SignAdminTokenFor is SignAdminToken with an "aud" claim when audience is
// not empty (for a broker that sets admin.audience).
func SignAdminTokenFor(priv *ecdsa.PrivateKey, subject, audience string, ttl time.Duration) (string, error) {
	kid, err := AdminKeyID(&priv.PublicKey)
	if err != nil {
		return "", err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: priv}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	now := time.Now()
	claims := jwt.Claims{Subject: subject, IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(ttl))}
	if audience != "" {
		claims.Audience = jwt.Audience{audience}
	}
	tok, err := jwt.Signed(signer).Claims(claims).Claims(map[string]any{"role": AdminRole}).Serialize()
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	return tok, nil
}
