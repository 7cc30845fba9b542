package nebulaca

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/slackhq/nebula/cert"

	"github.com/trustgate/trustgate/broker/plugin"
)

// TestIssueVerifiesWithNebula issues credentials for every CA format and
// curve and both node formats, and checks them with nebula's cert package:
// the certificate verifies against ca_crt, carries what was asked for, and
// node_key is the private half of its public key.
func TestIssueVerifiesWithNebula(t *testing.T) {
	for _, caVersion := range []int{1, 2} {
		for _, curve := range []string{"25519", "P256"} {
			cfg := testConfig()
			cfg.CAVersion, cfg.Curve = caVersion, curve
			if caVersion == 1 {
				cfg.CANetworks = []string{"10.42.0.0/16"}
				cfg.CAUnsafeNetworks = []string{"192.168.0.0/16"}
			}
			c := newClock()
			p := newPlugin(t, cfg, nil, c)
			versions := []int{0, 1, 2}
			for _, v := range versions {
				name := "ca-v" + cfg.Curve + "-" + string(rune('0'+caVersion)) + "/node-v" + string(rune('0'+v))
				t.Run(name, func(t *testing.T) {
					q := "name=pod-1&ip=10.42.3.4/16&groups=web,db&subnets=192.168.7.0/24&duration=2h"
					if v != 0 {
						q += "&version=" + string(rune('0'+v))
					}
					cred := mustGet(t, p, q)
					crt := verify(t, cred.CACrt, cred.NodeCrt, c.Now())
					wantVersion := cert.Version(v)
					if v == 0 {
						wantVersion = cert.Version(caVersion)
					}
					if crt.Version() != wantVersion {
						t.Errorf("version %d, want %d", crt.Version(), wantVersion)
					}
					if crt.Name() != "pod-1" || crt.IsCA() {
						t.Errorf("name %q isCA %v", crt.Name(), crt.IsCA())
					}
					if got := crt.Networks(); len(got) != 1 || got[0] != netip.MustParsePrefix("10.42.3.4/16") {
						t.Errorf("networks %v", got)
					}
					if got := crt.UnsafeNetworks(); len(got) != 1 || got[0] != netip.MustParsePrefix("192.168.7.0/24") {
						t.Errorf("unsafe networks %v", got)
					}
					if got := crt.Groups(); !slices.Equal(got, []string{"web", "db"}) {
						t.Errorf("groups %v", got)
					}
					if got := crt.NotAfter().Sub(crt.NotBefore()); got != 2*time.Hour {
						t.Errorf("lifetime %v, want 2h", got)
					}
					key, rest, keyCurve, err := cert.UnmarshalPrivateKeyFromPEM(cred.NodeKey)
					if err != nil || len(rest) != 0 {
						t.Fatalf("node_key: %v (rest %q)", err, rest)
					}
					if err := crt.VerifyPrivateKey(keyCurve, key); err != nil {
						t.Fatalf("node_key does not match node_crt: %v", err)
					}
				})
			}
		}
	}
}

// TestIPv6AndSeveralNetworks needs version 2.
func TestIPv6AndSeveralNetworks(t *testing.T) {
	c := newClock()
	p := newPlugin(t, testConfig(), nil, c)
	cred := mustGet(t, p, "name=dual&ip=10.42.0.9/16,fd42::9/64&subnets=fd99:0:0:1::/64")
	crt := verify(t, cred.CACrt, cred.NodeCrt, c.Now())
	want := []netip.Prefix{netip.MustParsePrefix("10.42.0.9/16"), netip.MustParsePrefix("fd42::9/64")}
	if !slices.Equal(crt.Networks(), want) {
		t.Fatalf("networks %v, want %v", crt.Networks(), want)
	}
	_, err := call(p, http.MethodGet, "credential", "name=dual&ip=fd42::9/64&version=1", nil)
	wantStatus(t, err, 400, "version 1 certificate holds exactly one IPv4")
}

// TestBareIPTakesCAPrefix: a bare address takes the prefix length of the
// CA network that holds it, and needs one when the CA has none.
func TestBareIPTakesCAPrefix(t *testing.T) {
	c := newClock()
	p := newPlugin(t, testConfig(), nil, c)
	cred := mustGet(t, p, "name=a&ip=10.42.200.1")
	crt := verify(t, cred.CACrt, cred.NodeCrt, c.Now())
	if got := crt.Networks()[0]; got != netip.MustParsePrefix("10.42.200.1/16") {
		t.Fatalf("network %v, want 10.42.200.1/16", got)
	}
	open := DefaultConfig()
	p2 := newPlugin(t, open, nil, c)
	_, err := call(p2, http.MethodGet, "credential", "name=a&ip=10.1.2.3", nil)
	wantStatus(t, err, 400, "needs a prefix length")
	cred = mustGet(t, p2, "name=a&ip=172.16.1.2/12&groups=anything")
	verify(t, cred.CACrt, cred.NodeCrt, c.Now())
}

// TestRejects: every request outside the syntax, the CA's constraints or
// the configuration is a 400 that names the problem, and nothing is
// signed.
func TestRejects(t *testing.T) {
	cfg := testConfig()
	cfg.AllowedGroups = []string{"web", "db"}
	cfg.MaxDuration = Duration{Duration: 48 * time.Hour}
	cfg.DefaultDuration = Duration{Duration: 24 * time.Hour}
	p := newPlugin(t, cfg, nil, nil)
	for _, tc := range []struct{ query, want string }{
		{"ip=10.42.0.1/16", "name is required"},
		{"name=a", "ip is required"},
		{"name=a&ip=", "ip is required"},
		{"name=a&ip=10.42.0.256/16", "is not an address with a prefix length"},
		{"name=a&ip=banana", "is not an IP address"},
		{"name=a&ip=10.42.0.1/33", "is not an address with a prefix length"},
		{"name=a&ip=10.43.0.1/16", "outside the CA's networks 10.42.0.0/16,fd42::/64"},
		{"name=a&ip=10.42.0.1/8", "outside the CA's networks"},
		{"name=a&ip=0.0.0.0/16", "unspecified"},
		{"name=a&ip=224.0.0.1/4", "multicast"},
		{"name=a&ip=::ffff:10.42.0.1/112", "IPv4-mapped"},
		{"name=a&ip=fe80::1%25eth0", "zone"},
		{"name=a&ip=10.42.0.1/16,10.42.0.1/24", "listed twice"},
		{"name=a&ip=10.42.0.1/16&groups=admin", `the CA does not allow group "admin"`},
		{"name=a&ip=10.42.0.1/16&groups=ssh", `group "ssh" is not allowed`},
		{"name=a&ip=10.42.0.1/16&groups=web,web", "listed twice"},
		{"name=a&ip=10.42.0.1/16&groups=we%20b", "spaces"},
		{"name=a&ip=10.42.0.1/16&subnets=10.0.0.0/8", "outside the CA's unsafe networks"},
		{"name=a&ip=10.42.0.1/16&subnets=nope", "not a network"},
		{"name=a&ip=10.42.0.1/16&subnets=fd99::/64", "needs an ip of the same family"},
		{"name=a&ip=10.42.0.1/16&duration=49h", "longer than the maximum"},
		{"name=a&ip=10.42.0.1/16&duration=-1h", "positive duration"},
		{"name=a&ip=10.42.0.1/16&duration=1y", "positive duration"},
		{"name=a&ip=10.42.0.1/16&version=3", "want 1 or 2"},
		{"name=a&ip=10.42.0.1/16&bogus=1", `unknown query parameter "bogus"`},
		{"name=a&name=b&ip=10.42.0.1/16", "given 2 times"},
		{"name=a%00b&ip=10.42.0.1/16", "non-printable"},
		{"name=%ff&ip=10.42.0.1/16", "UTF-8"},
		{"name=" + strings.Repeat("x", 256) + "&ip=10.42.0.1/16", "at most 255"},
		{"name=a&ip=10.42.0.1/16&groups=" + strings.Repeat("web,", 65), "more than 64"},
	} {
		_, err := call(p, http.MethodGet, "credential", tc.query, nil)
		wantStatus(t, err, 400, tc.want)
	}
}

// TestDurationBoundedByCA: a node certificate never outlives its CA. The
// default is cut to end a second before the CA; an explicit request that
// would outlive it is refused with the longest duration allowed.
func TestDurationBoundedByCA(t *testing.T) {
	cfg := testConfig()
	cfg.CAValidity = Duration{Duration: 10 * time.Hour}
	cfg.RotateBefore = Duration{Duration: 0}
	cfg.Prepublish = Duration{Duration: 0}
	cfg.DefaultDuration = Duration{Duration: 8 * time.Hour}
	cfg.MaxDuration = Duration{Duration: 100 * time.Hour}
	c := newClock()
	p := newPlugin(t, cfg, nil, c)
	c.Advance(5 * time.Hour)
	cred := mustGet(t, p, "name=a&ip=10.42.0.1/16")
	crt := verify(t, cred.CACrt, cred.NodeCrt, c.Now())
	ca, _, _ := cert.UnmarshalCertificateFromPEM(cred.CACrt)
	if want := ca.NotAfter().Add(-time.Second); !crt.NotAfter().Equal(want) {
		t.Fatalf("default lifetime ends %v, want a second before the CA, %v", crt.NotAfter(), want)
	}
	_, err := call(p, http.MethodGet, "credential", "name=a&ip=10.42.0.1/16&duration=6h", nil)
	wantStatus(t, err, 400, "would outlive the signing CA")
	cred = mustGet(t, p, "name=a&ip=10.42.0.1/16&duration=4h")
	verify(t, cred.CACrt, cred.NodeCrt, c.Now())
}

// TestPostSignsCallersKey: POST certifies the caller's own key and returns
// no private key; a key of the wrong curve, a malformed body, or a field
// beside public_key are refused.
func TestPostSignsCallersKey(t *testing.T) {
	c := newClock()
	p := newPlugin(t, testConfig(), nil, c)
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := cert.MarshalPublicKeyToPEM(cert.Curve_CURVE25519, priv.PublicKey().Bytes())
	body, _ := json.Marshal(map[string]string{"public_key": string(pubPEM)})
	cred, err := call(p, http.MethodPost, "credential", "name=own&ip=10.42.1.1/16&groups=ssh", body)
	if err != nil {
		t.Fatal(err)
	}
	if cred.NodeKey != nil {
		t.Fatal("POST answer carries a node_key")
	}
	crt := verify(t, cred.CACrt, cred.NodeCrt, c.Now())
	if !bytes.Equal(crt.PublicKey(), priv.PublicKey().Bytes()) {
		t.Fatal("certificate is not for the posted key")
	}
	if err := crt.VerifyPrivateKey(cert.Curve_CURVE25519, priv.Bytes()); err != nil {
		t.Fatal(err)
	}

	p256, _ := ecdh.P256().GenerateKey(rand.Reader)
	wrongCurve, _ := json.Marshal(map[string]string{"public_key": string(cert.MarshalPublicKeyToPEM(cert.Curve_P256, p256.PublicKey().Bytes()))})
	for _, tc := range []struct {
		body   string
		status int
		want   string
	}{
		{string(wrongCurve), 400, "the CA signs CURVE25519 keys"},
		{``, 400, "want {"},
		{`{"public_key": 5}`, 400, "want {"},
		{`{"public_key": ""}`, 400, "public_key is required"},
		{`{"public_key": "not pem"}`, 400, "public_key:"},
		{string(body[:len(body)-1]) + `, "name": "other"}`, 400, "unknown field"},
		{string(body) + `{}`, 400, "after the JSON object"},
		{`{"public_key": "-----BEGIN NEBULA X25519 PUBLIC KEY-----\nAAAA\n-----END NEBULA X25519 PUBLIC KEY-----\n"}`, 400, "public_key:"},
		{strings.Repeat(" ", maxKeyBody+1), 413, "at most"},
	} {
		_, err := call(p, http.MethodPost, "credential", "name=own&ip=10.42.1.1/16", []byte(tc.body))
		wantStatus(t, err, tc.status, tc.want)
	}
	// The query is checked for POST as for GET.
	_, err = call(p, http.MethodPost, "credential", "name=own&ip=10.9.1.1/16", body)
	wantStatus(t, err, 400, "outside the CA's networks")
}

// TestRoutes: the plugin's access, encryption, paths and methods.
func TestRoutes(t *testing.T) {
	p := newPlugin(t, testConfig(), nil, nil)
	if p.Name() != "nebula-ca" {
		t.Fatal(p.Name())
	}
	for m, want := range map[string]plugin.Access{"GET": plugin.Attested, "POST": plugin.Attested, "PUT": plugin.Denied, "DELETE": plugin.Denied} {
		if got := p.Access(m); got != want {
			t.Errorf("Access(%s) = %v, want %v", m, got, want)
		}
	}
	if !p.Encrypt("GET") || p.Encrypt("POST") {
		t.Error("GET answers (with private keys) must be encrypted; POST answers need not be")
	}
	ctx := context.Background()
	for _, tc := range []struct {
		method string
		path   []string
		status int
	}{
		{"GET", nil, 404},
		{"GET", []string{"other"}, 404},
		{"GET", []string{"credential", "x"}, 404},
		{"POST", []string{"ca"}, 405},
		{"PUT", []string{"credential"}, 405},
	} {
		_, err := p.Handle(ctx, &plugin.Request{Method: tc.method, Path: tc.path})
		wantStatus(t, err, tc.status, "")
	}
	ca, err := call(p, "GET", "ca", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.NewCAPoolFromPEM(ca.CACrt); err != nil || ca.NodeCrt != nil {
		t.Fatalf("GET ca: %v", err)
	}
	_, err = call(p, "GET", "ca", "x=1", nil)
	wantStatus(t, err, 400, "no query")
}

// TestNodeKeyMatchesX25519: the fast X25519 key derivation gives the same
// public key as crypto/ecdh's X25519 for the same private key, and the P-256
// path gives a pair crypto/ecdh agrees with.
func TestNodeKeyMatchesX25519(t *testing.T) {
	for range 500 {
		pub, priv, err := newNodeKey(cert.Curve_CURVE25519)
		if err != nil {
			t.Fatal(err)
		}
		k, err := ecdh.X25519().NewPrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(k.PublicKey().Bytes(), pub) {
			t.Fatalf("private %x: public %x, crypto/ecdh says %x", priv, pub, k.PublicKey().Bytes())
		}
	}
	pub, priv, err := newNodeKey(cert.Curve_P256)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ecdh.P256().NewPrivateKey(priv)
	if err != nil || !bytes.Equal(k.PublicKey().Bytes(), pub) {
		t.Fatalf("P-256 pair does not match: %v", err)
	}
}
