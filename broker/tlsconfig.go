package broker

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/trustgate/trustgate/config"
)

// TLS modes of the [tls] table.
const (
	// TLSModeCA serves a certificate issued by the broker's own CA (the
	// svid plugin's), renewed with overlap; clients trust the bundle.
	TLSModeCA = "ca"
	// TLSModeFiles serves cert_file and key_file, reloaded when they change.
	TLSModeFiles = "files"
	// TLSModeOff serves cleartext HTTP: on loopback, or with insecure_http.
	TLSModeOff = "off"
)

// TLSConfig is the [tls] table: how the broker serves HTTPS.
type TLSConfig struct {
	// Mode is TLSModeCA, TLSModeFiles or TLSModeOff.
	Mode string `toml:"mode"`
	// CertFile and KeyFile are the PEM certificate chain and key of mode
	// "files". They are checked every ReloadInterval and reloaded when
	// either changes.
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// ReloadInterval is how often the files are checked for changes.
	ReloadInterval Duration `toml:"reload_interval"`
	// ServerNames are extra DNS names and IP addresses of the CA-issued
	// certificate, besides the issuer's host, the listen address,
	// localhost, 127.0.0.1 and ::1.
	ServerNames []string `toml:"server_names"`
	// CertTTL is the lifetime of a CA-issued serving certificate; it is
	// renewed half-way through.
	CertTTL Duration `toml:"cert_ttl"`
	// BundleFile, when set, is where the broker writes the trust bundle
	// (PEM roots) at start-up and whenever it changes, for clients'
	// trust_bundle_path.
	BundleFile string `toml:"bundle_file"`
	// ClientCerts accepts X.509-SVIDs chained to the bundle as client
	// certificates: such a caller is authenticated as its SPIFFE ID. It
	// has no effect in mode "off".
	ClientCerts bool `toml:"client_certs"`
}

// needsCA reports whether the TLS settings need the broker's CA.
func (t *TLSConfig) needsCA() bool {
	return t.Mode == TLSModeCA || (t.Mode != TLSModeOff && t.ClientCerts) || t.BundleFile != ""
}

// validateTLS adds the problems of insecure_http and [tls] to p.
func (c *Config) validateTLS(p *config.Problems) {
	t := &c.TLS
	switch t.Mode {
	case TLSModeCA:
		if t.CertTTL.Duration < 2*time.Second {
			p.Addf("tls.cert_ttl = %q: want a duration of at least 2s, such as \"24h\"", t.CertTTL)
		}
		for _, n := range t.ServerNames {
			if n == "" || strings.ContainsAny(n, " /:") && net.ParseIP(n) == nil {
				p.Addf("tls.server_names: %q is neither a DNS name nor an IP address", n)
			}
		}
	case TLSModeFiles:
		if t.CertFile == "" || t.KeyFile == "" {
			p.Addf("tls.mode = \"files\" needs tls.cert_file and tls.key_file (PEM certificate chain and private key)")
		}
		if t.ReloadInterval.Duration <= 0 {
			p.Addf("tls.reload_interval = %q: want a positive duration such as \"10s\"", t.ReloadInterval)
		}
	case TLSModeOff:
		if !c.InsecureHTTP && !LoopbackListen(c.Listen) {
			p.Addf("listen = %q with tls.mode = \"off\" would serve cleartext HTTP beyond this host: set tls.mode = \"ca\" (a certificate from the broker's own CA) or \"files\" (tls.cert_file and tls.key_file), listen on 127.0.0.1, or set insecure_http = true if a TLS proxy in front of the broker terminates HTTPS", c.Listen)
		}
	default:
		p.Addf("tls.mode = %q: want \"ca\" (a certificate from the broker's own CA), \"files\" (tls.cert_file and tls.key_file) or \"off\" (cleartext)", t.Mode)
	}
	if t.Mode != TLSModeOff && c.InsecureHTTP {
		p.Addf("insecure_http = true with tls.mode = %q: insecure_http only allows cleartext (tls.mode = \"off\"); remove one of them", t.Mode)
	}
}

// LoopbackListen reports whether a listen address only reaches this host:
// a loopback IP or "localhost". An empty host or 0.0.0.0 listens on every
// interface.
func LoopbackListen(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// servingNames returns the DNS names and IPs of the CA-issued serving
// certificate: the configured names, the issuer's host, the listen host
// when specific, and the loopback names.
func (c *Config) servingNames() ([]string, []net.IP) {
	var dns []string
	var ips []net.IP
	seen := map[string]bool{}
	add := func(n string) {
		n = strings.TrimSuffix(strings.Trim(n, "[]"), ".")
		if n == "" || seen[n] {
			return
		}
		seen[n] = true
		if ip := net.ParseIP(n); ip != nil {
			if !ip.IsUnspecified() {
				ips = append(ips, ip)
			}
			return
		}
		dns = append(dns, n)
	}
	for _, n := range c.TLS.ServerNames {
		add(n)
	}
	if u, err := url.Parse(c.Issuer); err == nil {
		add(u.Hostname())
	}
	if host, _, err := net.SplitHostPort(c.Listen); err == nil {
		add(host)
	}
	for _, n := range []string{"localhost", "127.0.0.1", "::1"} {
		add(n)
	}
	return dns, ips
}

// String describes the mode for logs.
func (t *TLSConfig) String() string {
	switch t.Mode {
	case TLSModeFiles:
		return fmt.Sprintf("files (%s, %s)", t.CertFile, t.KeyFile)
	case TLSModeCA:
		return "ca (issued by the broker's CA)"
	}
	return t.Mode
}
