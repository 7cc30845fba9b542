package main

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/slackhq/nebula/cert"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/client/kbs"
	"github.com/trustgate/trustgate/internal/brokertest"
)

// runClient runs `trustgate client <args>` in process.
func runClient(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"client"}, args...), &out, &errb)
	return out.String(), errb.String(), code
}

func mustRunClient(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := runClient(t, args...)
	if code != 0 {
		t.Fatalf("trustgate client %s: exit %d: %s", strings.Join(args, " "), code, errs)
	}
	return out
}

// subject reads the sub of an attestation token (the kbs tests verify
// signatures; here the CLI's plumbing is under test).
func subject(t *testing.T, tok string) string {
	t.Helper()
	p, err := jwt.ParseSigned(strings.TrimSpace(tok), []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("not a token: %q: %v", tok, err)
	}
	var c jwt.Claims
	if err := p.UnsafeClaimsWithoutVerification(&c); err != nil {
		t.Fatal(err)
	}
	return c.Subject
}

func wantMode(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != mode {
		t.Fatalf("%s: mode %v, want %v", path, fi.Mode().Perm(), mode)
	}
}

// TestClientAttestors attests with every attestor through the CLI, over
// TLS with --trust-bundle.
func TestClientAttestors(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{TLS: true})
	base := []string{"attest", "--url", b.URL, "--trust-bundle", b.CAFile}

	if _, errs, code := runClient(t, "attest", "--url", b.URL); code == 0 || !strings.Contains(errs, "certificate") {
		t.Fatalf("attested to an untrusted broker: exit %d %s", code, errs)
	}
	if got := subject(t, mustRunClient(t, append(base, "--attestor", "sample")...)); got != "spiffe://example.org/tee/sample" {
		t.Fatalf("sample: %s", got)
	}

	jt := b.JoinToken(t)
	t.Setenv(envJoinToken, jt)
	if got := subject(t, mustRunClient(t, append(base, "--tee", "join_token")...)); got != "spiffe://example.org/spire/agent/join_token/"+jt {
		t.Fatalf("join_token: %s", got)
	}
	_, errs, code := runClient(t, append(base, "--tee", "join_token")...)
	if code == 0 || !strings.Contains(errs, "AttestationError") {
		t.Fatalf("join token used twice: exit %d %s", code, errs)
	}
	t.Setenv(envJoinToken, "")
	jt2 := b.JoinToken(t)
	jtFile := filepath.Join(t.TempDir(), "jt")
	if err := os.WriteFile(jtFile, []byte(jt2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := subject(t, mustRunClient(t, append(base, "--attestor", "join_token", "--join-token-file", jtFile)...)); !strings.HasSuffix(got, "/"+jt2) {
		t.Fatalf("join_token from file: %s", got)
	}
	if _, errs, code := runClient(t, append(base, "--attestor", "join_token")...); code == 0 || !strings.Contains(errs, envJoinToken) {
		t.Fatalf("no join token: exit %d %s", code, errs)
	}

	certFile, keyFile, leaf := b.X509PopLeaf(t, "node-1")
	fp := sha1.Sum(leaf.Raw)
	if got := subject(t, mustRunClient(t, append(base, "--attestor", "x509pop", "--x509pop-cert", certFile, "--x509pop-key", keyFile)...)); got != "spiffe://example.org/spire/agent/x509pop/"+hex.EncodeToString(fp[:]) {
		t.Fatalf("x509pop: %s", got)
	}

	psat := b.PSATTokenFile(t, "node-uid-b")
	if got := subject(t, mustRunClient(t, append(base, "--attestor", "k8s_psat", "--k8s-cluster", brokertest.PSATCluster, "--k8s-token-file", psat)...)); got != "spiffe://example.org/spire/agent/k8s_psat/edge/node-uid-b" {
		t.Fatalf("k8s_psat: %s", got)
	}
}

// TestClientSessionAndResource: attest --session, then get-resource from
// the session with an RSA TEE key, to stdout and to a file.
func TestClientSessionAndResource(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	secret := "disk key \x00\x01"
	b.PutResource(t, "default/key/1", []byte(secret))
	dir := t.TempDir()
	sess := filepath.Join(dir, "session.json")
	tok := mustRunClient(t, "attest", "--url", b.URL, "--tee-key-type", "rsa", "--session", sess)
	wantMode(t, sess, 0o600)
	s, err := kbs.ReadSession(sess)
	if err != nil || s.Token != strings.TrimSpace(tok) || s.URL != b.URL {
		t.Fatalf("session %+v: %v", s, err)
	}
	if got := mustRunClient(t, "get-resource", "--session", sess, "--path", "default/key/1"); got != secret {
		t.Fatalf("resource %q", got)
	}
	out := filepath.Join(dir, "key.bin")
	mustRunClient(t, "get-resource", "--session", sess, "--path", "default/key/1", "--out", out)
	if got, _ := os.ReadFile(out); string(got) != secret {
		t.Fatalf("file %q", got)
	}
	wantMode(t, out, 0o600)
	// Without a session the command attests itself.
	if got := mustRunClient(t, "get-resource", "--url", b.URL, "--path", "default/key/1"); got != secret {
		t.Fatalf("resource %q", got)
	}
	if _, errs, code := runClient(t, "get-resource", "--session", sess, "--path", "default/key/2"); code == 0 || !strings.Contains(errs, "404") {
		t.Fatalf("missing resource: exit %d %s", code, errs)
	}
}

// TestClientNebula writes Nebula credentials that nebula's cert package
// verifies, with the broker's key and with a key made locally.
func TestClientNebula(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	for _, local := range []bool{false, true} {
		dir := t.TempDir()
		args := []string{"nebula", "--url", b.URL, "--name", "node-1", "--ip", "10.42.0.7/16", "--out-dir", dir}
		if local {
			args = append(args, "--local-key")
		}
		mustRunClient(t, args...)
		read := func(n string) []byte {
			b, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		wantMode(t, filepath.Join(dir, "host.key"), 0o600)
		pool, err := cert.NewCAPoolFromPEM(read("ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		nc, _, err := cert.UnmarshalCertificateFromPEM(read("host.crt"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pool.VerifyCertificate(time.Now(), nc); err != nil || nc.Name() != "node-1" {
			t.Fatalf("local %v: certificate %q: %v", local, nc.Name(), err)
		}
		priv, _, curve, err := cert.UnmarshalPrivateKeyFromPEM(read("host.key"))
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.VerifyPrivateKey(curve, priv); err != nil {
			t.Fatalf("local %v: host.key does not match host.crt: %v", local, err)
		}
	}
}

// TestClientSVID writes an X.509-SVID that go-spiffe verifies against the
// written bundle, and prints a JWT-SVID that validates against the
// broker's bundle.
func TestClientSVID(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	dir := t.TempDir()
	sess := filepath.Join(dir, "s.json")
	mustRunClient(t, "attest", "--url", b.URL, "--session", sess)
	out := mustRunClient(t, "svid", "x509", "--session", sess, "--out-dir", dir)
	if !strings.Contains(out, "spiffe://example.org/tee/sample") {
		t.Fatalf("output %q", out)
	}
	wantMode(t, filepath.Join(dir, "svid.0.key"), 0o600)
	svid, err := x509svid.Load(filepath.Join(dir, "svid.0.pem"), filepath.Join(dir, "svid.0.key"))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	bundle, err := x509bundle.Load(td, filepath.Join(dir, "bundle.0.pem"))
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, bundle)
	if err != nil || id.String() != "spiffe://example.org/tee/sample" {
		t.Fatalf("x509svid.Verify: %v %v", id, err)
	}
	if _, errs, code := runClient(t, "svid", "x509", "--session", sess, "--out-dir", dir, "--spiffe-id", "spiffe://example.org/other"); code == 0 || !strings.Contains(errs, "403") {
		t.Fatalf("another ID: exit %d %s", code, errs)
	}

	tok := strings.TrimSpace(mustRunClient(t, "svid", "jwt", "--session", sess, "--audience", "db,web"))
	s, err := kbs.ReadSession(sess)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kbs.New(b.URL, kbs.WithTEEKey(s.TEEKey), kbs.WithToken(s.Token))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := c.SVIDBundle(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sb, err := spiffebundle.Parse(td, raw)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jwtsvid.ParseAndValidate(tok, sb, []string{"web"})
	if err != nil || js.ID.String() != "spiffe://example.org/tee/sample" {
		t.Fatalf("jwtsvid: %v", err)
	}
}

// TestClientWorkloadSVID follows docs/plugin-svid.md: a node attested with
// a join token gets the SVID of an entry registered under its agent ID,
// and not of one registered under another parent.
func TestClientWorkloadSVID(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	dir := t.TempDir()
	sess := filepath.Join(dir, "node.json")
	jt := b.JoinToken(t)
	t.Setenv(envJoinToken, jt)
	agent := subject(t, mustRunClient(t, "attest", "--url", b.URL, "--attestor", "join_token", "--session", sess))
	b.CreateEntry(t, "spiffe://example.org/ns/prod/sa/web", agent, broker.Selector{Type: "unix", Value: "uid:1000"})
	b.CreateEntry(t, "spiffe://example.org/ns/prod/sa/db", "spiffe://example.org/spire/agent/join_token/other", broker.Selector{Type: "unix", Value: "uid:1000"})
	out := mustRunClient(t, "svid", "x509", "--session", sess, "--spiffe-id", "spiffe://example.org/ns/prod/sa/web", "--out-dir", dir)
	if !strings.Contains(out, "spiffe://example.org/ns/prod/sa/web") {
		t.Fatalf("output %q", out)
	}
	svid, err := x509svid.Load(filepath.Join(dir, "svid.0.pem"), filepath.Join(dir, "svid.0.key"))
	if err != nil || svid.ID.String() != "spiffe://example.org/ns/prod/sa/web" {
		t.Fatalf("svid %v: %v", svid, err)
	}
	if _, errs, code := runClient(t, "svid", "x509", "--session", sess, "--spiffe-id", "spiffe://example.org/ns/prod/sa/db", "--out-dir", dir); code == 0 || !strings.Contains(errs, "403") {
		t.Fatalf("another agent's entry: exit %d %s", code, errs)
	}
}

// TestClientMutualTLS: a broker that requires client certificates serves
// the client only with --client-cert and --client-key.
func TestClientMutualTLS(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{TLS: true, RequireClientCert: true})
	certFile, keyFile, _ := b.X509PopLeaf(t, "node-9")
	args := []string{"attest", "--url", b.URL, "--trust-bundle", b.CAFile}
	if _, errs, code := runClient(t, args...); code == 0 {
		t.Fatalf("attested without a client certificate: %s", errs)
	}
	if _, errs, code := runClient(t, append(args, "--client-cert", certFile)...); code == 0 || !strings.Contains(errs, "both") {
		t.Fatalf("half a key pair: exit %d %s", code, errs)
	}
	if got := subject(t, mustRunClient(t, append(args, "--client-cert", certFile, "--client-key", keyFile)...)); got != "spiffe://example.org/tee/sample" {
		t.Fatalf("sub %s", got)
	}
}
