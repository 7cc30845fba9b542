// Package x509pop is SPIRE's x509pop node attestor adapted to the broker's
// RCAR flow: a node proves possession of the private key of a certificate
// issued by a configured CA.
//
// SPIRE's plugin runs a second round trip for its challenge; here the RCAR
// nonce is the challenge. The caller signs the server nonce, a nonce of its
// own and the RCAR report data (see SignedMessage), so the proof is tied to
// this exchange and to the caller's tee-pubkey. The SPIFFE ID comes from
// SPIRE's agent path template and the selectors are SPIRE's
// (x509pop:subject:cn, x509pop:ca:fingerprint, x509pop:serialnumber,
// x509pop:san). docs/attestor-x509pop.md is the operator's reference.
package x509pop

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // SPIRE's fingerprints are SHA-1 by definition.
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sort"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/store"
)

// Name is the attestor's name in the RCAR "tee" field and the selector type.
const Name = "x509pop"

// Attestor verifies x509pop evidence. It is safe for concurrent use.
type Attestor struct {
	s   settings
	td  spiffeid.TrustDomain
	log *slog.Logger
}

var _ attest.Attestor = (*Attestor)(nil)

// New validates cfg, loads its CA bundles and returns the attestor for trust
// domain td. A nil log discards logs.
func New(cfg Config, td spiffeid.TrustDomain, log *slog.Logger) (*Attestor, error) {
	if td.IsZero() {
		return nil, errors.New("x509pop: trust domain is empty")
	}
	s, err := cfg.build()
	if err != nil {
		return nil, fmt.Errorf("x509pop: invalid configuration: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Attestor{s: s, td: td, log: log.With("attestor", Name)}, nil
}

// Name returns "x509pop".
func (a *Attestor) Name() string { return Name }

// Attest verifies that evidence proves possession of a trusted certificate's
// key over ch, and returns the agent's SPIFFE ID and selectors.
func (a *Attestor) Attest(_ context.Context, ch attest.Challenge, evidence json.RawMessage) (attest.Result, error) {
	if ch.Nonce == "" || len(ch.ReportData) == 0 {
		return attest.Result{}, errors.New("x509pop: challenge has no nonce or report data")
	}
	res, err := a.attest(ch, evidence)
	if err != nil {
		a.log.Debug("attestation failed", "peer", ch.Peer, "err", err)
		return attest.Result{}, err
	}
	a.log.Debug("attested", "peer", ch.Peer, "spiffe_id", res.SPIFFEID)
	return res, nil
}

func (a *Attestor) attest(ch attest.Challenge, raw json.RawMessage) (attest.Result, error) {
	ev, err := ParseEvidence(raw)
	if err != nil {
		return attest.Result{}, err
	}
	// Bound the work before parsing anything large.
	if n := len(ev.Intermediates); n > a.s.maxIntermediates {
		return attest.Result{}, reject("%d intermediate certificates, at most %d allowed", n, a.s.maxIntermediates)
	}
	leaf, err := x509.ParseCertificate(ev.Leaf)
	if err != nil {
		return attest.Result{}, reject("parse leaf certificate: %v", err)
	}
	if err := a.checkRSASize(leaf); err != nil {
		return attest.Result{}, reject("leaf certificate: %v", err)
	}
	intermediates := x509.NewCertPool()
	for i, der := range ev.Intermediates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return attest.Result{}, reject("parse intermediate %d: %v", i, err)
		}
		if err := a.checkRSASize(c); err != nil {
			return attest.Result{}, reject("intermediate %d: %v", i, err)
		}
		intermediates.AddCert(c)
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return attest.Result{}, reject("leaf certificate lacks the digitalSignature key usage")
	}
	usage := x509.ExtKeyUsageAny
	if a.s.requireClientAuth {
		usage = x509.ExtKeyUsageClientAuth
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         a.s.roots,
		Intermediates: intermediates,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return attest.Result{}, reject("certificate chain: %v", err)
	}
	if err := verifySignature(leaf.PublicKey, ev, ch); err != nil {
		return attest.Result{}, reject("proof of possession: %v", err)
	}
	san := sanSelectors(leaf, a.td)
	id, err := a.agentID(leaf, san)
	if err != nil {
		return attest.Result{}, err
	}
	return attest.Result{SPIFFEID: id.String(), Selectors: selectors(leaf, chains, san)}, nil
}

// checkRSASize bounds the cost of verifying with a certificate's key.
func (a *Attestor) checkRSASize(c *x509.Certificate) error {
	if k, ok := c.PublicKey.(*rsa.PublicKey); ok && k.N.BitLen() > a.s.maxRSAKeySize {
		return fmt.Errorf("RSA key of %d bits exceeds max_rsa_key_size %d", k.N.BitLen(), a.s.maxRSAKeySize)
	}
	return nil
}

// TemplateData is what agent_path_template renders. The embedded
// certificate's fields are available too, such as .Subject.CommonName.
type TemplateData struct {
	*x509.Certificate
	// PluginName is "x509pop".
	PluginName string
	// TrustDomain is the trust domain's name, e.g. "example.org".
	TrustDomain string
	// Fingerprint is the leaf's SHA-1 fingerprint, lowercase hex.
	Fingerprint string
	// SerialNumberHex is the leaf's serial number, lowercase hex with an
	// even number of digits.
	SerialNumberHex string
	// URISanSelectors maps the keys of the leaf's
	// x509pop://<trust-domain>/<key>/<value> URI SANs to their values.
	URISanSelectors map[string]string
}

// agentID renders the template and places it under /spire/agent.
func (a *Attestor) agentID(leaf *x509.Certificate, san map[string]string) (spiffeid.ID, error) {
	var buf bytes.Buffer
	err := a.s.template.Execute(&buf, TemplateData{
		Certificate:     leaf,
		PluginName:      Name,
		TrustDomain:     a.td.Name(),
		Fingerprint:     Fingerprint(leaf),
		SerialNumberHex: SerialNumberHex(leaf.SerialNumber),
		URISanSelectors: san,
	})
	if err != nil {
		return spiffeid.ID{}, reject("agent_path_template cannot render for this certificate: %v", err)
	}
	path := buf.String()
	if err := spiffeid.ValidatePath(path); err != nil {
		return spiffeid.ID{}, reject("agent_path_template renders %q for this certificate, not a valid SPIFFE ID path: %v", path, err)
	}
	id, err := spiffeid.FromPath(a.td, "/spire/agent"+path)
	if err != nil {
		return spiffeid.ID{}, reject("agent ID: %v", err)
	}
	return id, nil
}

// selectors returns SPIRE's x509pop selectors, in a stable order.
func selectors(leaf *x509.Certificate, chains [][]*x509.Certificate, san map[string]string) []store.Selector {
	var out []store.Selector
	add := func(v string) { out = append(out, store.Selector{Type: Name, Value: v}) }
	if leaf.Subject.CommonName != "" {
		add("subject:cn:" + leaf.Subject.CommonName)
	}
	seen := map[string]bool{}
	for _, chain := range chains {
		for _, c := range chain[1:] {
			fp := Fingerprint(c)
			if !seen[fp] {
				seen[fp] = true
				add("ca:fingerprint:" + fp)
			}
		}
	}
	if leaf.SerialNumber != nil {
		add("serialnumber:" + SerialNumberHex(leaf.SerialNumber))
	}
	keys := make([]string, 0, len(san))
	for k := range san {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		add("san:" + k + ":" + san[k])
	}
	return out
}

// sanSelectors collects the leaf's x509pop://<td>/<key>/<value> URI SANs.
// As in SPIRE, a later SAN with the same key replaces an earlier one.
func sanSelectors(leaf *x509.Certificate, td spiffeid.TrustDomain) map[string]string {
	out := map[string]string{}
	prefix := Name + "://" + td.Name() + "/"
	for _, u := range leaf.URIs {
		if !strings.HasPrefix(u.String(), prefix) {
			continue
		}
		key, value, ok := strings.Cut(strings.Trim(u.Path, "/"), "/")
		if ok && key != "" && value != "" {
			out[key] = value
		}
	}
	return out
}

// Fingerprint is SPIRE's certificate fingerprint: the SHA-1 of the DER,
// lowercase hex.
func Fingerprint(c *x509.Certificate) string {
	sum := sha1.Sum(c.Raw) //nolint:gosec // SPIRE's fingerprints are SHA-1 by definition.
	return hex.EncodeToString(sum[:])
}

// SerialNumberHex is SPIRE's serial number form: lowercase hex, padded to
// an even number of digits.
func SerialNumberHex(n *big.Int) string {
	if n == nil {
		return ""
	}
	s := n.Text(16)
	if len(s)%2 == 1 {
		s = "0" + s
	}
	return s
}

func reject(format string, args ...any) error {
	return fmt.Errorf("%w: x509pop: %s", attest.ErrRejected, fmt.Sprintf(format, args...))
}
