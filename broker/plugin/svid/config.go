package svid

import (
	"time"

	"github.com/trustgate/trustgate/config"
)

// Config is the svid plugin's configuration, the [plugins.svid] table of the
// server's configuration file. DefaultConfig fills every field.
type Config struct {
	// X509SVIDTTL is the lifetime of an X.509-SVID whose entry sets none,
	// and of agent SVIDs.
	X509SVIDTTL Duration `toml:"x509_svid_ttl"`
	// MaxX509SVIDTTL caps every X.509-SVID, whatever its entry says.
	MaxX509SVIDTTL Duration `toml:"max_x509_svid_ttl"`
	// JWTSVIDTTL is the lifetime of a JWT-SVID whose entry sets none.
	JWTSVIDTTL Duration `toml:"jwt_svid_ttl"`
	// MaxJWTSVIDTTL caps every JWT-SVID.
	MaxJWTSVIDTTL Duration `toml:"max_jwt_svid_ttl"`
	// RootTTL is how long one root CA signs intermediates. A root is in the
	// bundle from half-way through its predecessor's term until the last
	// certificate under it expires.
	RootTTL Duration `toml:"root_ttl"`
	// IntermediateTTL is how long one intermediate CA signs SVIDs. Its
	// successor is made half-way through its term.
	IntermediateTTL Duration `toml:"intermediate_ttl"`
	// JWTKeyTTL is how long one JWT key signs. Its successor is published
	// in the bundle half-way through its term.
	JWTKeyTTL Duration `toml:"jwt_key_ttl"`
	// EntryCacheTTL is how long registration entries are cached per SPIFFE
	// ID, as SPIRE's server caches them: a deleted entry stops granting
	// SVIDs at most this long after. "0s" reads the store on every request.
	EntryCacheTTL Duration `toml:"entry_cache_ttl"`
	// BundleRefreshHint is the refresh_hint of the served bundle: how often
	// relying parties should fetch it again.
	BundleRefreshHint Duration `toml:"bundle_refresh_hint"`
}

// DefaultConfig returns the defaults: SPIRE's SVID lifetimes (1h X.509,
// 5m JWT), a one-year root, daily intermediates and JWT keys.
func DefaultConfig() Config {
	return Config{
		X509SVIDTTL:       Duration{Duration: time.Hour},
		MaxX509SVIDTTL:    Duration{Duration: 24 * time.Hour},
		JWTSVIDTTL:        Duration{Duration: 5 * time.Minute},
		MaxJWTSVIDTTL:     Duration{Duration: time.Hour},
		RootTTL:           Duration{Duration: 365 * 24 * time.Hour},
		IntermediateTTL:   Duration{Duration: 24 * time.Hour},
		JWTKeyTTL:         Duration{Duration: 24 * time.Hour},
		EntryCacheTTL:     Duration{Duration: 5 * time.Second},
		BundleRefreshHint: Duration{Duration: 5 * time.Minute},
	}
}

// Validate reports every problem with c at once.
func (c *Config) Validate() error {
	var p config.Problems
	positive := func(name string, d Duration) bool {
		if d.Duration <= 0 {
			p.Addf("%s = %q: want a positive duration such as \"1h\"", name, d)
			return false
		}
		return true
	}
	ok := positive("x509_svid_ttl", c.X509SVIDTTL)
	ok = positive("max_x509_svid_ttl", c.MaxX509SVIDTTL) && ok
	ok = positive("jwt_svid_ttl", c.JWTSVIDTTL) && ok
	ok = positive("max_jwt_svid_ttl", c.MaxJWTSVIDTTL) && ok
	ok = positive("root_ttl", c.RootTTL) && ok
	ok = positive("intermediate_ttl", c.IntermediateTTL) && ok
	ok = positive("jwt_key_ttl", c.JWTKeyTTL) && ok
	ok = positive("bundle_refresh_hint", c.BundleRefreshHint) && ok
	if c.EntryCacheTTL.Duration < 0 || c.EntryCacheTTL.Duration > time.Minute {
		p.Addf("entry_cache_ttl = %q: want 0s (off) to 1m", c.EntryCacheTTL)
	}
	if !ok {
		return p.Err()
	}
	if c.X509SVIDTTL.Duration > c.MaxX509SVIDTTL.Duration {
		p.Addf("x509_svid_ttl = %q exceeds max_x509_svid_ttl = %q", c.X509SVIDTTL, c.MaxX509SVIDTTL)
	}
	if c.JWTSVIDTTL.Duration > c.MaxJWTSVIDTTL.Duration {
		p.Addf("jwt_svid_ttl = %q exceeds max_jwt_svid_ttl = %q", c.JWTSVIDTTL, c.MaxJWTSVIDTTL)
	}
	if c.RootTTL.Duration < 2*c.IntermediateTTL.Duration {
		p.Addf("root_ttl = %q: want at least twice intermediate_ttl = %q, so that a root outlives the intermediates it signs", c.RootTTL, c.IntermediateTTL)
	}
	if c.IntermediateTTL.Duration < 2*time.Minute {
		p.Addf("intermediate_ttl = %q: want at least 2m", c.IntermediateTTL)
	}
	if c.JWTKeyTTL.Duration < 2*time.Minute {
		p.Addf("jwt_key_ttl = %q: want at least 2m", c.JWTKeyTTL)
	}
	// A successor JWT key is published half a term before it signs; a
	// relying party that refreshes as hinted must have seen it by then.
	if c.BundleRefreshHint.Duration >= c.JWTKeyTTL.Duration/2 {
		p.Addf("bundle_refresh_hint = %q: want less than half of jwt_key_ttl = %q, so relying parties learn a JWT key before it signs", c.BundleRefreshHint, c.JWTKeyTTL)
	}
	return p.Err()
}

// Duration is a duration written in TOML as a string such as "90s".
type Duration = config.Duration
