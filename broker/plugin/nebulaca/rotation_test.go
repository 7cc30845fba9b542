package nebulaca

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slackhq/nebula/cert"

	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
)

func rotationConfig() Config {
	c := testConfig()
	c.CAValidity = Duration{Duration: 100 * time.Hour}
	c.RotateBefore = Duration{Duration: 30 * time.Hour}
	c.Prepublish = Duration{Duration: 10 * time.Hour}
	c.DefaultDuration = Duration{Duration: 5 * time.Hour}
	c.MaxDuration = Duration{Duration: 50 * time.Hour}
	return c
}

// bundleCAs parses a ca_crt bundle into its CAs' fingerprints.
func bundleCAs(t *testing.T, bundle []byte) []string {
	t.Helper()
	pool, err := cert.NewCAPoolFromPEM(bundle)
	if err != nil && !errors.Is(err, cert.ErrExpired) {
		t.Fatalf("bundle: %v", err)
	}
	return pool.GetFingerprints()
}

func caFingerprint(t *testing.T, p *Plugin) string {
	t.Helper()
	cred, err := call(p, "GET", "ca", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	fps := bundleCAs(t, cred.CACrt)
	if len(fps) != 1 {
		t.Fatalf("%d CAs published, want 1", len(fps))
	}
	return fps[0]
}

// TestRotationWithOverlap walks a CA's life: its successor is created
// rotate_before its end and published in ca_crt at once, signs prepublish
// later, and the old CA leaves the bundle and the store when it expires.
// Certificates from either CA verify against the bundle at every step.
func TestRotationWithOverlap(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	st, _ := newStore(t)
	p := newPlugin(t, rotationConfig(), st, c)
	old := caFingerprint(t, p)

	c.Advance(70*time.Hour - time.Second) // 30h01s before the end
	if got := bundleCAs(t, mustGet(t, p, "name=a&ip=10.42.0.1/16").CACrt); len(got) != 1 {
		t.Fatalf("successor published %v early", got)
	}

	c.Advance(2 * time.Second) // rotation due
	cred := mustGet(t, p, "name=a&ip=10.42.0.1/16&duration=20h")
	if got := bundleCAs(t, cred.CACrt); len(got) != 2 {
		t.Fatalf("ca_crt holds %d CAs during the overlap, want 2", len(got))
	}
	crt := verify(t, cred.CACrt, cred.NodeCrt, c.Now())
	if crt.Issuer() != old {
		t.Fatal("successor signs during its prepublication")
	}
	if crt.NotAfter().After(c.Now().Add(30 * time.Hour)) {
		t.Fatalf("certificate from the old CA ends %v, after the CA", crt.NotAfter())
	}
	keys, err := st.Keys().List(ctx, Kind)
	if err != nil || len(keys) != 2 || keys[0].ID != "00000000" || keys[1].ID != "00000001" {
		t.Fatalf("stored CAs %v %v", keys, err)
	}
	if want := c.Now().Add(10 * time.Hour); !keys[1].NotBefore.Equal(want) {
		t.Fatalf("successor signs from %v, want %v", keys[1].NotBefore, want)
	}
	oldCert := cred

	c.Advance(10 * time.Hour) // prepublication over
	cred = mustGet(t, p, "name=b&ip=10.42.0.2/16")
	crt = verify(t, cred.CACrt, cred.NodeCrt, c.Now())
	if crt.Issuer() == old {
		t.Fatal("old CA still signs after the successor's prepublication")
	}
	// A node that trusts only the old CA does not accept the new
	// certificate, so the bundle matters: nebula says so, not this test.
	oldOnly, _, _ := cert.UnmarshalCertificateFromPEM(oldCert.CACrt)
	pool := cert.NewCAPool()
	for rest := oldCert.CACrt; len(rest) > 0; {
		var ca cert.Certificate
		ca, rest, err = cert.UnmarshalCertificateFromPEM(rest)
		if err != nil {
			t.Fatal(err)
		}
		if fp, _ := ca.Fingerprint(); fp == old {
			oldOnly = ca
		}
	}
	if err := pool.AddCA(oldOnly); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.VerifyCertificate(c.Now(), crt); !errors.Is(err, cert.ErrCaNotFound) {
		t.Fatalf("old CA alone verifies a successor's certificate: %v", err)
	}
	// The certificate from the old CA still verifies against the bundle
	// a new node receives.
	verify(t, cred.CACrt, oldCert.NodeCrt, c.Now())

	c.Advance(20 * time.Hour) // old CA expired
	cred = mustGet(t, p, "name=c&ip=10.42.0.3/16")
	if got := bundleCAs(t, cred.CACrt); len(got) != 1 || got[0] == old {
		t.Fatalf("after the old CA expired, ca_crt holds %v", got)
	}
	keys, _ = st.Keys().List(ctx, Kind)
	if len(keys) != 1 || keys[0].ID != "00000001" {
		t.Fatalf("expired CA not deleted: %v", keys)
	}
}

// TestRotationStalled: when no one rotated before the CA expired (the
// broker was down), the next generation signs at once.
func TestRotationStalled(t *testing.T) {
	c := newClock()
	st, _ := newStore(t)
	p := newPlugin(t, rotationConfig(), st, c)
	c.Advance(200 * time.Hour)
	cred := mustGet(t, p, "name=a&ip=10.42.0.1/16")
	verify(t, cred.CACrt, cred.NodeCrt, c.Now())
	keys, _ := st.Keys().List(context.Background(), Kind)
	if len(keys) != 2 || keys[1].ID != "00000001" || !keys[0].NotAfter.Before(c.Now()) {
		t.Fatalf("stored CAs after a stall: %+v", keys)
	}
}

// TestReplicasAgree: replicas sharing a store that rotate at the same
// moment create exactly one successor and sign with the same CA.
func TestReplicasAgree(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	st, _ := newStore(t)
	const n = 6
	ps := make([]*Plugin, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ps[i], errs[i] = New(ctx, rotationConfig(), st, newSealer(t, 1), nil, c.Now)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	first := caFingerprint(t, ps[0])
	for _, p := range ps[1:] {
		if got := caFingerprint(t, p); got != first {
			t.Fatal("replicas started with different CAs")
		}
	}
	c.Advance(71 * time.Hour)
	for i, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = p.Rotate(ctx) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	keys, err := st.Keys().List(ctx, Kind)
	if err != nil || len(keys) != 2 {
		t.Fatalf("replicas stored %d CAs, want 2: %v", len(keys), err)
	}
	c.Advance(10 * time.Hour)
	var issuer string
	for i, p := range ps {
		cred := mustGet(t, p, "name=a&ip=10.42.0.1/16")
		crt := verify(t, cred.CACrt, cred.NodeCrt, c.Now())
		if i == 0 {
			issuer = crt.Issuer()
		} else if crt.Issuer() != issuer {
			t.Fatal("replicas sign with different CAs")
		}
	}
}

// TestCAKeySealedAtRest scans the raw database files: the CA private key
// is never there in the clear (raw, PEM or base64), while its public key
// is (so the scan does see the data); and another seal key cannot open it.
func TestCAKeySealedAtRest(t *testing.T) {
	for _, curve := range []string{"25519", "P256"} {
		t.Run(curve, func(t *testing.T) {
			cfg := testConfig()
			cfg.Curve = curve
			st, path := newStore(t)
			c := newClock()
			p := newPlugin(t, cfg, st, c)
			s := p.state.Load()
			priv := s.signer.key
			pub := s.signer.pem
			keyPEM := cert.MarshalSigningPrivateKeyToPEM(s.signer.crt.Curve(), priv)
			b64 := strings.Split(string(keyPEM), "\n")[1]
			var raw []byte
			files, _ := filepath.Glob(path + "*")
			for _, f := range files {
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				raw = append(raw, b...)
			}
			if !bytes.Contains(raw, pub) {
				t.Fatal("the scan does not see the stored CA (certificate not found)")
			}
			for what, secret := range map[string][]byte{"raw": priv, "PEM": keyPEM, "base64": []byte(b64), "private half": priv[:16]} {
				if bytes.Contains(raw, secret) {
					t.Fatalf("CA private key (%s) in the database in the clear", what)
				}
			}
			_, err := New(context.Background(), cfg, st, newSealer(t, 2), nil, c.Now)
			if !errors.Is(err, seal.ErrOpen) {
				t.Fatalf("CA opened under another seal key: %v", err)
			}
		})
	}
}

// writeCA writes a CA made with nebula's cert package, as nebula-cert ca
// would, and returns its certificate.
func writeCA(t *testing.T, dir string, notBefore, notAfter time.Time, mutate func(crt, key []byte) ([]byte, []byte)) cert.Certificate {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tbs := &cert.TBSCertificate{Version: cert.Version2, Name: "imported", IsCA: true,
		NotBefore: notBefore, NotAfter: notAfter, PublicKey: pub, Curve: cert.Curve_CURVE25519}
	ca, err := tbs.Sign(nil, cert.Curve_CURVE25519, priv)
	if err != nil {
		t.Fatal(err)
	}
	crtPEM, _ := ca.MarshalPEM()
	keyPEM := cert.MarshalSigningPrivateKeyToPEM(cert.Curve_CURVE25519, priv)
	if mutate != nil {
		crtPEM, keyPEM = mutate(crtPEM, keyPEM)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), crtPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestImportCA: a CA from files is used as generation 0, only when the
// store holds none, and a broken import is refused with its reason.
func TestImportCA(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	ca := writeCA(t, dir, c.Now().Add(-time.Hour), c.Now().Add(1000*time.Hour), nil)
	cfg := rotationConfig()
	cfg.CANetworks, cfg.CAUnsafeNetworks, cfg.CAGroups = nil, nil, nil
	cfg.ImportCACert, cfg.ImportCAKey = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	st, _ := newStore(t)
	p := newPlugin(t, cfg, st, c)
	crtPEM, _ := ca.MarshalPEM()
	cred := mustGet(t, p, "name=a&ip=10.1.2.3/8")
	verify(t, crtPEM, cred.NodeCrt, c.Now())
	// The store is the source of truth from now on.
	writeCA(t, dir, c.Now().Add(-time.Hour), c.Now().Add(1000*time.Hour), nil)
	p = newPlugin(t, cfg, st, c)
	verify(t, crtPEM, mustGet(t, p, "name=a&ip=10.1.2.3/8").NodeCrt, c.Now())

	for _, tc := range []struct {
		name   string
		nb, na time.Duration
		mutate func(crt, key []byte) ([]byte, []byte)
		want   string
	}{
		{"expired", -10 * time.Hour, -time.Hour, nil, "not now"},
		{"wrong key", -time.Hour, time.Hour, func(crt, _ []byte) ([]byte, []byte) {
			_, other, _ := ed25519.GenerateKey(rand.Reader)
			return crt, cert.MarshalSigningPrivateKeyToPEM(cert.Curve_CURVE25519, other)
		}, "does not match"},
		{"encrypted key", -time.Hour, time.Hour, func(crt, key []byte) ([]byte, []byte) {
			k, _, _, _ := cert.UnmarshalSigningPrivateKeyFromPEM(key)
			enc, err := cert.EncryptAndMarshalSigningPrivateKey(cert.Curve_CURVE25519, k, []byte("pw"), cert.NewArgon2Parameters(64*1024, 1, 1))
			if err != nil {
				t.Fatal(err)
			}
			return crt, enc
		}, "encrypted"},
		{"garbage", -time.Hour, time.Hour, func(_, key []byte) ([]byte, []byte) { return []byte("hello"), key }, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeCA(t, dir, c.Now().Add(tc.nb), c.Now().Add(tc.na), tc.mutate)
			cfg.ImportCACert, cfg.ImportCAKey = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
			st, _ := newStore(t)
			_, err := New(context.Background(), cfg, st, newSealer(t, 1), nil, c.Now)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("import: %v, want an error containing %q", err, tc.want)
			}
			if keys, _ := st.Keys().List(context.Background(), Kind); len(keys) != 0 {
				t.Fatal("a refused import left a CA in the store")
			}
		})
	}
}

// TestStoreKeyIDs: a stored key that is not a generation is an error, not
// a silent skip.
func TestStoreKeyIDs(t *testing.T) {
	st, _ := newStore(t)
	c := newClock()
	err := st.Keys().Create(context.Background(), store.Key{Kind: Kind, ID: "abc", Sealed: []byte("x"), NotBefore: c.Now(), NotAfter: c.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(context.Background(), testConfig(), st, newSealer(t, 1), nil, c.Now)
	if err == nil || !strings.Contains(err.Error(), `stored CA has ID "abc"`) {
		t.Fatalf("got %v", err)
	}
}
