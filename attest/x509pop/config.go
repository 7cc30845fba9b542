package x509pop

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"text/template"

	"github.com/trustgate/trustgate/config"
)

// Defaults for the limits in Config.
const (
	// DefaultMaxIntermediates is SPIRE's default bound on the intermediates
	// a caller may send.
	DefaultMaxIntermediates = 4
	// DefaultMaxRSAKeySize is SPIRE's default bound on RSA modulus sizes,
	// in bits, for every certificate the caller sends.
	DefaultMaxRSAKeySize = 8192
	// DefaultAgentPathTemplate is SPIRE's default agent path for external
	// PKI: the SHA-1 fingerprint of the leaf certificate.
	DefaultAgentPathTemplate = "/{{ .PluginName }}/{{ .Fingerprint }}"
)

// Config configures the x509pop attestor. Zero values mean the documented
// defaults, so a Config embedded in a larger file needs only ca_bundle_paths.
type Config struct {
	// CABundlePaths are PEM files holding the trusted root CAs. At least one
	// is required, and each must hold at least one certificate.
	CABundlePaths []string `toml:"ca_bundle_paths"`
	// AgentPathTemplate is a text/template rendering the agent's SPIFFE ID
	// path below /spire/agent. Empty means DefaultAgentPathTemplate.
	AgentPathTemplate string `toml:"agent_path_template"`
	// MaxIntermediates bounds the intermediates in the evidence. Zero means
	// DefaultMaxIntermediates.
	MaxIntermediates int `toml:"max_intermediates"`
	// MaxRSAKeySize bounds RSA key sizes in bits. Zero means
	// DefaultMaxRSAKeySize.
	MaxRSAKeySize int `toml:"max_rsa_key_size"`
	// RequireClientAuth additionally requires the leaf to carry the
	// clientAuth extended key usage. SPIRE accepts any extended key usage;
	// so does this attestor unless this is set.
	RequireClientAuth bool `toml:"require_client_auth"`
}

// Validate reports every problem with the configuration, including CA
// bundles that cannot be read and a template that does not parse.
func (c Config) Validate() error {
	_, err := c.build()
	return err
}

// settings is a validated Config, ready to use.
type settings struct {
	roots             *x509.CertPool
	template          *template.Template
	maxIntermediates  int
	maxRSAKeySize     int
	requireClientAuth bool
}

func (c Config) build() (settings, error) {
	var p config.Problems
	s := settings{
		roots:             x509.NewCertPool(),
		maxIntermediates:  c.MaxIntermediates,
		maxRSAKeySize:     c.MaxRSAKeySize,
		requireClientAuth: c.RequireClientAuth,
	}
	if len(c.CABundlePaths) == 0 {
		p.Addf("x509pop: ca_bundle_paths is empty: list the PEM files holding the CAs that issue node certificates, such as [\"/etc/trustgate/node-ca.pem\"]")
	}
	for _, path := range c.CABundlePaths {
		certs, err := loadPEMCertificates(path)
		if err != nil {
			p.Addf("x509pop: ca_bundle_paths: %v (point it at a readable PEM file of CERTIFICATE blocks)", err)
			continue
		}
		for _, cert := range certs {
			s.roots.AddCert(cert)
		}
	}
	text := c.AgentPathTemplate
	if text == "" {
		text = DefaultAgentPathTemplate
	}
	tmpl, err := parsePathTemplate(text)
	if err != nil {
		p.Addf("x509pop: agent_path_template %q does not parse: %v (see docs/attestor-x509pop.md for the fields it may use)", text, err)
	}
	s.template = tmpl
	switch {
	case c.MaxIntermediates < 0:
		p.Addf("x509pop: max_intermediates = %d: want 0 (the default, %d) or more", c.MaxIntermediates, DefaultMaxIntermediates)
	case c.MaxIntermediates == 0:
		s.maxIntermediates = DefaultMaxIntermediates
	}
	switch {
	case c.MaxRSAKeySize < 0 || (c.MaxRSAKeySize > 0 && c.MaxRSAKeySize < 2048):
		p.Addf("x509pop: max_rsa_key_size = %d: want 0 (the default, %d) or at least 2048", c.MaxRSAKeySize, DefaultMaxRSAKeySize)
	case c.MaxRSAKeySize == 0:
		s.maxRSAKeySize = DefaultMaxRSAKeySize
	}
	return s, p.Err()
}

// parsePathTemplate parses an agent path template. A field the data does
// not have is an error at render time rather than the text "<no value>".
func parsePathTemplate(text string) (*template.Template, error) {
	return template.New("agent_path_template").Option("missingkey=error").Parse(text)
}

// loadPEMCertificates reads every CERTIFICATE block of a PEM file.
func loadPEMCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA bundle %s: certificate %d: %w", path, len(certs)+1, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("CA bundle %s holds no PEM CERTIFICATE block", path)
	}
	return certs, nil
}
