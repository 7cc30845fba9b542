package x509pop

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/store"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// issued is a certificate with its key.
type issued struct {
	cert *x509.Certificate
	key  crypto.Signer
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// testRSAKey is generated once: RSA key generation is slow.
func testRSAKey(t testing.TB) *rsa.PrivateKey {
	rsaOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		rsaKey = k
	})
	return rsaKey
}

func ecKey(t testing.TB) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var serial int64 = 0x0f00

// issue signs tmpl for key.Public() with parent (self-signed when nil).
func issue(t testing.TB, tmpl *x509.Certificate, key crypto.Signer, parent *issued) issued {
	t.Helper()
	serial++
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(serial)
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	signerCert, signerKey := tmpl, key
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return issued{cert: c, key: key}
}

func caTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
}

func leafTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// pki is a root, an intermediate and a leaf under it.
type pki struct {
	root, inter, leaf issued
	bundle            string
}

func newPKI(t testing.TB, leafKey crypto.Signer) pki {
	t.Helper()
	var p pki
	p.root = issue(t, caTemplate("root"), ecKey(t), nil)
	p.inter = issue(t, caTemplate("intermediate"), ecKey(t), &p.root)
	lt := leafTemplate("node-1")
	lt.URIs = []*url.URL{
		{Scheme: "x509pop", Host: "example.org", Path: "/datacenter/us-east-1"},
		{Scheme: "x509pop", Host: "example.org", Path: "/rack/r7"},
		{Scheme: "x509pop", Host: "other.org", Path: "/datacenter/eu"},
		{Scheme: "spiffe", Host: "example.org", Path: "/ignored"},
	}
	p.leaf = issue(t, lt, leafKey, &p.inter)
	p.bundle = writeBundle(t, p.root.cert)
	return p
}

func writeBundle(t testing.TB, certs ...*x509.Certificate) string {
	t.Helper()
	var buf bytes.Buffer
	for _, c := range certs {
		if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func challenge() attest.Challenge {
	rd := sha256.Sum256([]byte("report data of this session"))
	return attest.Challenge{Nonce: "bm9uY2Ugb2YgdGhlIHNlcnZlcg==", ReportData: rd[:], HashAlgorithm: "sha256", Peer: "127.0.0.1:1"}
}

func newAttestor(t testing.TB, cfg Config) *Attestor {
	t.Helper()
	a, err := New(cfg, td, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func selectorStrings(sel []store.Selector) []string {
	var out []string
	for _, s := range sel {
		out = append(out, s.Type+":"+s.Value)
	}
	return out
}

func TestAttestECDSAAndRSAPSS(t *testing.T) {
	for name, key := range map[string]crypto.Signer{"ecdsa": ecKey(t), "rsa-pss": testRSAKey(t)} {
		t.Run(name, func(t *testing.T) {
			p := newPKI(t, key)
			a := newAttestor(t, Config{CABundlePaths: []string{p.bundle}})
			ch := challenge()
			ev, err := MakeEvidence(ch, p.leaf.cert, []*x509.Certificate{p.inter.cert}, p.leaf.key)
			if err != nil {
				t.Fatal(err)
			}
			res, err := a.Attest(context.Background(), ch, ev)
			if err != nil {
				t.Fatal(err)
			}
			// The fingerprint is computed independently of Fingerprint.
			want := "spiffe://example.org/spire/agent/x509pop/" + sha1Hex(p.leaf.cert.Raw)
			if res.SPIFFEID != want {
				t.Errorf("SPIFFE ID %q, want %q", res.SPIFFEID, want)
			}
			wantSel := []string{
				"x509pop:subject:cn:node-1",
				"x509pop:ca:fingerprint:" + sha1Hex(p.inter.cert.Raw),
				"x509pop:ca:fingerprint:" + sha1Hex(p.root.cert.Raw),
				"x509pop:serialnumber:" + evenHex(p.leaf.cert.SerialNumber.Bytes()),
				"x509pop:san:datacenter:us-east-1",
				"x509pop:san:rack:r7",
			}
			if got := selectorStrings(res.Selectors); !slices.Equal(got, wantSel) {
				t.Errorf("selectors\n got %q\nwant %q", got, wantSel)
			}
			var decoded Evidence
			if err := json.Unmarshal(ev, &decoded); err != nil {
				t.Fatal(err)
			}
			wantAlg := map[string]string{"ecdsa": AlgECDSASHA256, "rsa-pss": AlgRSAPSSSHA256}[name]
			if decoded.Algorithm != wantAlg {
				t.Errorf("algorithm %q, want %q", decoded.Algorithm, wantAlg)
			}
		})
	}
}

// sha1Hex runs openssl when available, so the fingerprint is checked by a
// tool no one here wrote; otherwise it hashes with crypto/sha1 via a
// different route than Fingerprint (raw bytes, not a *x509.Certificate).
func sha1Hex(der []byte) string {
	if path, err := exec.LookPath("openssl"); err == nil {
		cmd := exec.Command(path, "x509", "-inform", "DER", "-noout", "-fingerprint", "-sha1")
		cmd.Stdin = bytes.NewReader(der)
		if out, err := cmd.Output(); err == nil {
			_, fp, ok := strings.Cut(strings.TrimSpace(string(out)), "=")
			if ok {
				return strings.ToLower(strings.ReplaceAll(fp, ":", ""))
			}
		}
	}
	c, _ := x509.ParseCertificate(der)
	return Fingerprint(c)
}

func evenHex(b []byte) string {
	return hex.EncodeToString(b)
}

func TestRejects(t *testing.T) {
	key := ecKey(t)
	p := newPKI(t, key)
	other := newPKI(t, ecKey(t))
	ch := challenge()
	inter := []*x509.Certificate{p.inter.cert}

	expiredTmpl := leafTemplate("old")
	expiredTmpl.NotBefore = time.Now().Add(-2 * time.Hour)
	expiredTmpl.NotAfter = time.Now().Add(-time.Hour)
	expired := issue(t, expiredTmpl, ecKey(t), &p.inter)

	noSigTmpl := leafTemplate("no-sig")
	noSigTmpl.KeyUsage = x509.KeyUsageKeyEncipherment
	noSig := issue(t, noSigTmpl, ecKey(t), &p.inter)

	serverOnlyTmpl := leafTemplate("server-only")
	serverOnlyTmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	serverOnly := issue(t, serverOnlyTmpl, ecKey(t), &p.inter)

	// A chain longer than the limit: root -> i1 -> i2 -> leaf with limit 1.
	i2 := issue(t, caTemplate("intermediate-2"), ecKey(t), &p.inter)
	deep := issue(t, leafTemplate("deep"), ecKey(t), &i2)

	mk := func(ch attest.Challenge, leaf issued, inter []*x509.Certificate) json.RawMessage {
		ev, err := MakeEvidence(ch, leaf.cert, inter, leaf.key)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	edit := func(ev json.RawMessage, f func(*Evidence)) json.RawMessage {
		var e Evidence
		if err := json.Unmarshal(ev, &e); err != nil {
			t.Fatal(err)
		}
		f(&e)
		out, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	good := mk(ch, p.leaf, inter)
	otherRD := ch
	otherRD.ReportData = bytes.Repeat([]byte{7}, 32)
	otherNonce := ch
	otherNonce.Nonce = "b3RoZXIgbm9uY2U="

	cases := []struct {
		name     string
		cfg      Config
		ch       attest.Challenge
		evidence json.RawMessage
		want     string
	}{
		{"wrong CA", Config{}, ch, mk(ch, other.leaf, []*x509.Certificate{other.inter.cert}), "certificate chain"},
		{"missing intermediate", Config{}, ch, mk(ch, p.leaf, nil), "certificate chain"},
		{"too many intermediates", Config{MaxIntermediates: 1}, ch, mk(ch, deep, []*x509.Certificate{i2.cert, p.inter.cert}), "at most 1"},
		{"expired leaf", Config{}, ch, mk(ch, expired, inter), "expired"},
		{"no digitalSignature", Config{}, ch, mk(ch, noSig, inter), "digitalSignature"},
		{"clientAuth required", Config{RequireClientAuth: true}, ch, mk(ch, serverOnly, inter), "certificate chain"},
		{"signed another server nonce", Config{}, otherNonce, good, "proof of possession"},
		{"signed another report data", Config{}, otherRD, good, "proof of possession"},
		{"client nonce swapped", Config{}, ch, edit(good, func(e *Evidence) { e.Nonce = bytes.Repeat([]byte{1}, 32) }), "proof of possession"},
		{"algorithm mismatch", Config{}, ch, edit(good, func(e *Evidence) { e.Algorithm = AlgRSAPSSSHA256 }), "does not match"},
		{"signature of another key", Config{}, ch, edit(good, func(e *Evidence) {
			var o Evidence
			_ = json.Unmarshal(mk(ch, other.leaf, nil), &o)
			e.Signature = o.Signature
			e.Nonce = o.Nonce
		}), "proof of possession"},
		{"leaf not a certificate", Config{}, ch, edit(good, func(e *Evidence) { e.Leaf = []byte("junk") }), "parse leaf"},
		{"intermediate not a certificate", Config{}, ch, edit(good, func(e *Evidence) { e.Intermediates = [][]byte{[]byte("junk")} }), "parse intermediate 0"},
		{"missing leaf", Config{}, ch, edit(good, func(e *Evidence) { e.Leaf = nil }), "no leaf"},
		{"missing nonce", Config{}, ch, edit(good, func(e *Evidence) { e.Nonce = nil }), "client nonce is 0 bytes"},
		{"missing signature", Config{}, ch, edit(good, func(e *Evidence) { e.Signature = nil }), "no signature"},
		{"missing algorithm", Config{}, ch, edit(good, func(e *Evidence) { e.Algorithm = "" }), "algorithm"},
		{"empty intermediate", Config{}, ch, edit(good, func(e *Evidence) { e.Intermediates = [][]byte{{}} }), "intermediate 0 is empty"},
		{"null", Config{}, ch, json.RawMessage("null"), "no leaf"},
		{"empty", Config{}, ch, nil, "empty"},
		{"not JSON", Config{}, ch, json.RawMessage("{"), "decode"},
		{"unknown field", Config{}, ch, json.RawMessage(`{"leaf":"AA==","extra":1}`), "unknown field"},
		{"trailing data", Config{}, ch, append(append(json.RawMessage{}, good...), "{}"...), "after the JSON"},
		{"bad base64", Config{}, ch, json.RawMessage(`{"leaf":"!!"}`), "decode"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.CABundlePaths = []string{p.bundle}
			a := newAttestor(t, tc.cfg)
			_, err := a.Attest(context.Background(), tc.ch, tc.evidence)
			if !errors.Is(err, attest.ErrRejected) {
				t.Fatalf("error %v does not wrap ErrRejected", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	// The same PKI with the deep chain inside the default limit succeeds,
	// so the limit and not the chain failed above.
	a := newAttestor(t, Config{CABundlePaths: []string{p.bundle}})
	if _, err := a.Attest(context.Background(), ch, mk(ch, deep, []*x509.Certificate{i2.cert, p.inter.cert})); err != nil {
		t.Errorf("deep chain within the limit: %v", err)
	}
	if _, err := a.Attest(context.Background(), ch, mk(ch, serverOnly, inter)); err != nil {
		t.Errorf("serverAuth-only leaf without require_client_auth: %v", err)
	}
}

func TestChallengeWithoutReportDataIsServerError(t *testing.T) {
	p := newPKI(t, ecKey(t))
	a := newAttestor(t, Config{CABundlePaths: []string{p.bundle}})
	ch := challenge()
	ev, err := MakeEvidence(ch, p.leaf.cert, []*x509.Certificate{p.inter.cert}, p.leaf.key)
	if err != nil {
		t.Fatal(err)
	}
	ch.ReportData = nil
	_, err = a.Attest(context.Background(), ch, ev)
	if err == nil || errors.Is(err, attest.ErrRejected) {
		t.Fatalf("got %v, want a server error", err)
	}
}

func TestAgentPathTemplate(t *testing.T) {
	key := ecKey(t)
	p := newPKI(t, key)
	spaced := issue(t, leafTemplate("has space?"), ecKey(t), &p.inter)
	ch := challenge()
	cases := []struct {
		tmpl   string
		leaf   issued
		want   string
		reject string
	}{
		{"/cn/{{ .Subject.CommonName }}", p.leaf, "spiffe://example.org/spire/agent/cn/node-1", ""},
		{"/{{ .PluginName }}/{{ .SerialNumberHex }}", p.leaf, "spiffe://example.org/spire/agent/x509pop/" + SerialNumberHex(p.leaf.cert.SerialNumber), ""},
		{"/{{ .TrustDomain }}/{{ .URISanSelectors.datacenter }}/{{ .Subject.CommonName }}", p.leaf, "spiffe://example.org/spire/agent/example.org/us-east-1/node-1", ""},
		{"/{{ .URISanSelectors.missing }}", p.leaf, "", "cannot render"},
		{"/cn/{{ .Subject.CommonName }}", spaced, "", "not a valid SPIFFE ID path"},
		{"no-leading-slash/{{ .Fingerprint }}", p.leaf, "", "not a valid SPIFFE ID path"},
	}
	for _, tc := range cases {
		t.Run(tc.tmpl, func(t *testing.T) {
			a := newAttestor(t, Config{CABundlePaths: []string{p.bundle}, AgentPathTemplate: tc.tmpl})
			ev, err := MakeEvidence(ch, tc.leaf.cert, []*x509.Certificate{p.inter.cert}, tc.leaf.key)
			if err != nil {
				t.Fatal(err)
			}
			res, err := a.Attest(context.Background(), ch, ev)
			if tc.reject != "" {
				if !errors.Is(err, attest.ErrRejected) || !strings.Contains(err.Error(), tc.reject) {
					t.Fatalf("got %v, want rejection mentioning %q", err, tc.reject)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.SPIFFEID != tc.want {
				t.Errorf("got %q, want %q", res.SPIFFEID, tc.want)
			}
		})
	}
}

func TestSignedMessageLayout(t *testing.T) {
	got := SignedMessage("ab", []byte{1, 2, 3}, []byte{9})
	want := "trustgate/x509pop/v1\x00" +
		"\x00\x00\x00\x02ab" +
		"\x00\x00\x00\x03\x01\x02\x03" +
		"\x00\x00\x00\x01\x09"
	if string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
	// Moving a byte between fields changes the message.
	if bytes.Equal(SignedMessage("a", []byte("b"), nil), SignedMessage("ab", nil, nil)) {
		t.Error("field boundaries are ambiguous")
	}
}

func TestSerialNumberHex(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{{0x1, "01"}, {0xabc, "0abc"}, {0x0a1b2c3d4e5f, "0a1b2c3d4e5f"}, {0x10, "10"}} {
		if got := SerialNumberHex(big.NewInt(tc.n)); got != tc.want {
			t.Errorf("SerialNumberHex(%#x) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestConfigValidateReportsEverything(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		CABundlePaths:     []string{filepath.Join(dir, "missing.pem"), notPEM},
		AgentPathTemplate: "/{{ .Fingerprint",
		MaxIntermediates:  -1,
		MaxRSAKeySize:     1024,
	}
	err := cfg.Validate()
	var p config.Problems
	if !errors.As(err, &p) {
		t.Fatalf("got %v, want config.Problems", err)
	}
	for _, want := range []string{"missing.pem", "no PEM CERTIFICATE", "does not parse", "max_intermediates", "max_rsa_key_size"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("problems %q do not mention %q", err, want)
		}
	}
	if len(p) != 5 {
		t.Errorf("got %d problems, want 5: %v", len(p), err)
	}
	if err := (Config{}).Validate(); err == nil || !strings.Contains(err.Error(), "ca_bundle_paths is empty") {
		t.Errorf("empty config: %v", err)
	}
	if _, err := New(cfg, td, nil); err == nil {
		t.Error("New accepted an invalid config")
	}
	if _, err := New(Config{CABundlePaths: []string{writeBundle(t, newPKI(t, ecKey(t)).root.cert)}}, spiffeid.TrustDomain{}, nil); err == nil {
		t.Error("New accepted an empty trust domain")
	}
}

func TestConfigDecodesFromTOML(t *testing.T) {
	var cfg Config
	err := config.Decode([]byte(`
ca_bundle_paths = ["/a.pem", "/b.pem"]
agent_path_template = "/cn/{{ .Subject.CommonName }}"
max_intermediates = 2
max_rsa_key_size = 4096
require_client_auth = true
`), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{CABundlePaths: []string{"/a.pem", "/b.pem"}, AgentPathTemplate: "/cn/{{ .Subject.CommonName }}", MaxIntermediates: 2, MaxRSAKeySize: 4096, RequireClientAuth: true}
	if !slices.Equal(cfg.CABundlePaths, want.CABundlePaths) || cfg.AgentPathTemplate != want.AgentPathTemplate ||
		cfg.MaxIntermediates != 2 || cfg.MaxRSAKeySize != 4096 || !cfg.RequireClientAuth {
		t.Errorf("decoded %+v, want %+v", cfg, want)
	}
}

func TestMakeEvidenceBadInput(t *testing.T) {
	p := newPKI(t, ecKey(t))
	ch := challenge()
	if _, err := MakeEvidence(ch, nil, nil, p.leaf.key); err == nil {
		t.Error("nil leaf accepted")
	}
	if _, err := MakeEvidence(ch, p.leaf.cert, nil, nil); err == nil {
		t.Error("nil signer accepted")
	}
	if _, err := MakeEvidence(ch, p.leaf.cert, []*x509.Certificate{nil}, p.leaf.key); err == nil {
		t.Error("nil intermediate accepted")
	}
	if _, err := MakeEvidence(attest.Challenge{}, p.leaf.cert, nil, p.leaf.key); err == nil {
		t.Error("empty challenge accepted")
	}
}

func BenchmarkX509popAttest(b *testing.B) {
	p := newPKI(b, ecKey(b))
	a := newAttestor(b, Config{CABundlePaths: []string{p.bundle}})
	ch := challenge()
	ev, err := MakeEvidence(ch, p.leaf.cert, []*x509.Certificate{p.inter.cert}, p.leaf.key)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("attest", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := a.Attest(context.Background(), ch, ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The floor: the standard library's chain verification and one ECDSA
	// verification, with nothing else.
	b.Run("stdlib-floor", func(b *testing.B) {
		b.ReportAllocs()
		roots := x509.NewCertPool()
		roots.AddCert(p.root.cert)
		inter := x509.NewCertPool()
		inter.AddCert(p.inter.cert)
		var e Evidence
		if err := json.Unmarshal(ev, &e); err != nil {
			b.Fatal(err)
		}
		digest := sha256.Sum256(SignedMessage(ch.Nonce, e.Nonce, ch.ReportData))
		pub := p.leaf.cert.PublicKey.(*ecdsa.PublicKey)
		for b.Loop() {
			if _, err := p.leaf.cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				b.Fatal(err)
			}
			if !ecdsa.VerifyASN1(pub, digest[:], e.Signature) {
				b.Fatal("verify")
			}
		}
	})
}
