package nebulaca

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// These tests cross-check issued credentials with the real nebula-cert
// binary (pinned at v1.11.1, like the library). CI installs it with
//
//	go install github.com/slackhq/nebula/cmd/nebula-cert@v1.11.1
//
// Without it on PATH they skip.

func nebulaCert(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("nebula-cert")
	if err != nil {
		t.Skip("nebula-cert is not on PATH; install it with: go install github.com/slackhq/nebula/cmd/nebula-cert@v1.11.1")
	}
	return path
}

func runNebulaCert(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// printed is what nebula-cert print -json says about a certificate.
type printed struct {
	Curve   string `json:"curve"`
	Details struct {
		Groups         []string  `json:"groups"`
		IsCA           bool      `json:"isCa"`
		Issuer         string    `json:"issuer"`
		Name           string    `json:"name"`
		Networks       []string  `json:"networks"`
		UnsafeNetworks []string  `json:"unsafeNetworks"`
		NotAfter       time.Time `json:"notAfter"`
	} `json:"details"`
	Fingerprint string `json:"fingerprint"`
	Version     int    `json:"version"`
}

func nebulaPrint(t *testing.T, bin, path string) []printed {
	t.Helper()
	out, err := exec.Command(bin, "print", "-json", "-path", path).Output()
	if err != nil {
		t.Fatalf("nebula-cert print %s: %v", path, err)
	}
	var ps []printed
	if err := json.Unmarshal(out, &ps); err != nil {
		t.Fatalf("nebula-cert print -json: %v: %s", err, out)
	}
	return ps
}

// TestNebulaCertVerifiesAndPrints: nebula-cert verify accepts every issued
// certificate against ca_crt and rejects a tampered one, and nebula-cert
// print reads back the name, networks, groups, unsafe networks, issuer and
// format that were asked for.
func TestNebulaCertVerifiesAndPrints(t *testing.T) {
	bin := nebulaCert(t)
	for _, curve := range []string{"25519", "P256"} {
		cfg := testConfig()
		cfg.Curve = curve
		p := newPlugin(t, cfg, nil, nil)
		for _, version := range []string{"1", "2"} {
			t.Run(curve+"/v"+version, func(t *testing.T) {
				dir := t.TempDir()
				cred := mustGet(t, p, "name=pod-7&ip=10.42.7.7/16&groups=web,ssh&subnets=192.168.9.0/24&version="+version)
				caPath := writeFile(t, dir, "ca.crt", cred.CACrt)
				crtPath := writeFile(t, dir, "node.crt", cred.NodeCrt)
				if out, err := runNebulaCert(t, bin, "verify", "-ca", caPath, "-crt", crtPath); err != nil {
					t.Fatalf("nebula-cert verify: %v: %s", err, out)
				}
				node := nebulaPrint(t, bin, crtPath)
				ca := nebulaPrint(t, bin, caPath)
				if len(node) != 1 || len(ca) != 1 {
					t.Fatalf("printed %d node and %d CA certificates", len(node), len(ca))
				}
				d := node[0].Details
				if d.Name != "pod-7" || d.IsCA || d.Issuer != ca[0].Fingerprint ||
					!slices.Equal(d.Networks, []string{"10.42.7.7/16"}) ||
					!slices.Equal(d.Groups, []string{"web", "ssh"}) ||
					!slices.Equal(d.UnsafeNetworks, []string{"192.168.9.0/24"}) ||
					version != string(rune('0'+node[0].Version)) {
					t.Fatalf("nebula-cert print: %+v (CA fingerprint %s)", node[0], ca[0].Fingerprint)
				}

				// Flip one bit of the signature: nebula-cert must refuse.
				blk, _ := pem.Decode(cred.NodeCrt)
				blk.Bytes[len(blk.Bytes)-1] ^= 1
				bad := writeFile(t, dir, "bad.crt", pem.EncodeToMemory(blk))
				if out, err := runNebulaCert(t, bin, "verify", "-ca", caPath, "-crt", bad); err == nil {
					t.Fatalf("nebula-cert verify accepts a tampered certificate: %s", out)
				}
			})
		}
	}
}

// TestNebulaCertKeygenThenPost: a key made by nebula-cert keygen is
// certified by POST, and nebula-cert verifies the certificate; the private
// key stayed on "the node".
func TestNebulaCertKeygenThenPost(t *testing.T) {
	bin := nebulaCert(t)
	dir := t.TempDir()
	keyPath, pubPath := filepath.Join(dir, "n.key"), filepath.Join(dir, "n.pub")
	if out, err := runNebulaCert(t, bin, "keygen", "-out-key", keyPath, "-out-pub", pubPath); err != nil {
		t.Fatalf("nebula-cert keygen: %v: %s", err, out)
	}
	pub, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"public_key": string(pub)})
	p := newPlugin(t, testConfig(), nil, nil)
	cred, err := call(p, http.MethodPost, "credential", "name=own&ip=10.42.0.77/16", body)
	if err != nil {
		t.Fatal(err)
	}
	caPath := writeFile(t, dir, "ca.crt", cred.CACrt)
	crtPath := writeFile(t, dir, "n.crt", cred.NodeCrt)
	if out, err := runNebulaCert(t, bin, "verify", "-ca", caPath, "-crt", crtPath); err != nil {
		t.Fatalf("nebula-cert verify: %v: %s", err, out)
	}
	// The certificate carries the keygen public key: nebula-cert sign with
	// -in-pub would embed the same bytes.
	blk, _ := pem.Decode(pub)
	printedPub := nebulaPrintPublicKey(t, bin, crtPath)
	if printedPub != hex.EncodeToString(blk.Bytes) {
		t.Fatalf("certificate public key %s, keygen wrote %x", printedPub, blk.Bytes)
	}
}

func nebulaPrintPublicKey(t *testing.T, bin, path string) string {
	t.Helper()
	out, err := exec.Command(bin, "print", "-json", "-path", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	var ps []struct {
		PublicKey string `json:"publicKey"`
	}
	if err := json.Unmarshal(out, &ps); err != nil || len(ps) != 1 {
		t.Fatalf("print: %v %s", err, out)
	}
	return ps[0].PublicKey
}

// TestNebulaCertImportedCA: a CA made by nebula-cert ca is imported, its
// own constraints bind requests, and nebula-cert verifies the issued
// certificates against the original ca.crt file.
func TestNebulaCertImportedCA(t *testing.T) {
	bin := nebulaCert(t)
	dir := t.TempDir()
	caCrt, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if out, err := runNebulaCert(t, bin, "ca", "-name", "ops CA", "-networks", "10.9.0.0/16", "-groups", "g1,g2",
		"-duration", "100h", "-out-crt", caCrt, "-out-key", caKey); err != nil {
		t.Fatalf("nebula-cert ca: %v: %s", err, out)
	}
	cfg := DefaultConfig()
	cfg.ImportCACert, cfg.ImportCAKey = caCrt, caKey
	cfg.RotateBefore, cfg.Prepublish = Duration{}, Duration{}
	p := newPlugin(t, cfg, nil, nil)
	cred := mustGet(t, p, "name=x&ip=10.9.1.1&groups=g2")
	crtPath := writeFile(t, dir, "x.crt", cred.NodeCrt)
	if out, err := runNebulaCert(t, bin, "verify", "-ca", caCrt, "-crt", crtPath); err != nil {
		t.Fatalf("nebula-cert verify against the original CA file: %v: %s", err, out)
	}
	_, err := call(p, http.MethodGet, "credential", "name=x&ip=10.8.1.1/16", nil)
	wantStatus(t, err, 400, "outside the CA's networks 10.9.0.0/16")
	_, err = call(p, http.MethodGet, "credential", "name=x&ip=10.9.1.1/16&groups=g3", nil)
	wantStatus(t, err, 400, `does not allow group "g3"`)
	_, err = call(p, http.MethodGet, "credential", "name=x&ip=10.9.1.1/16&duration=101h", nil)
	wantStatus(t, err, 400, "would outlive the signing CA")
}

// TestNebulaCertRotationBundle: during a rotation, nebula-cert verify
// accepts certificates from the old and the new CA against the one ca_crt
// bundle, and a file holding only the old CA does not accept the new ones.
func TestNebulaCertRotationBundle(t *testing.T) {
	bin := nebulaCert(t)
	cfg := rotationConfig()
	cfg.Prepublish = Duration{}
	// nebula-cert checks times against the wall clock, so the test clock
	// starts in the past and ends at the present.
	c := &clock{t: time.Now().Add(-75 * time.Hour).Truncate(time.Second)}
	p := newPlugin(t, cfg, nil, c)
	dir := t.TempDir()
	oldCA := writeFile(t, dir, "old-ca.crt", mustGet(t, p, "name=a&ip=10.42.0.1/16").CACrt)
	c.Advance(70*time.Hour - time.Second)
	oldCrt := writeFile(t, dir, "old.crt", mustGet(t, p, "name=a&ip=10.42.0.1/16&duration=20h").NodeCrt)
	c.Advance(2 * time.Second)
	newCrt := writeFile(t, dir, "new.crt", mustGet(t, p, "name=b&ip=10.42.0.2/16&duration=20h").NodeCrt)
	c.t = time.Now()
	cred, err := call(p, http.MethodGet, "ca", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(cred.CACrt, []byte("-----BEGIN")); n != 2 {
		t.Fatalf("bundle holds %d certificates, want 2", n)
	}
	bundle := writeFile(t, dir, "bundle.crt", cred.CACrt)
	for _, crt := range []string{oldCrt, newCrt} {
		if out, err := runNebulaCert(t, bin, "verify", "-ca", bundle, "-crt", crt); err != nil {
			t.Fatalf("nebula-cert verify %s against the bundle: %v: %s", filepath.Base(crt), err, out)
		}
	}
	if out, err := runNebulaCert(t, bin, "verify", "-ca", oldCA, "-crt", newCrt); err == nil || !strings.Contains(out, "could not find ca") {
		t.Fatalf("the old CA alone accepts the new CA's certificate: %v: %s", err, out)
	}
}
