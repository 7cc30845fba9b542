package nebulaca

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/url"
	"testing"

	"github.com/slackhq/nebula/cert"

	"github.com/trustgate/trustgate/broker/plugin"
)

// FuzzQuery: any query either gets a plugin error (the caller's fault, a
// 4xx) or a certificate that nebula verifies against ca_crt. A request that
// passes the checks but that nebula refuses to sign would be a 500 here,
// and fails the target.
func FuzzQuery(f *testing.F) {
	for _, s := range []string{
		"name=a&ip=10.42.0.1/16",
		"name=a&ip=10.42.0.1",
		"name=pod&ip=10.42.0.1/24,fd42::1/64&groups=web,db&subnets=192.168.1.0/24,fd99::/64&duration=1h&version=2",
		"name=pod&ip=10.42.0.1/16&version=1&subnets=192.168.1.7/24",
		"name=x&ip=fd42::1&subnets=fd99:1::/64",
		"name=x&ip=10.42.0.1/16&duration=1ns",
		"name=x&ip=10.42.0.1/16&groups=,,,web,",
		"name=%ff&ip=::ffff:1.2.3.4/128",
	} {
		f.Add(s)
	}
	c := newClock()
	p := newPlugin(f, testConfig(), nil, c)
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		prm, err := parseQuery(q)
		if err != nil {
			var pe *plugin.Error
			if !errors.As(err, &pe) || pe.Status != 400 {
				t.Fatalf("parse error %v is not a 400", err)
			}
			return
		}
		s := p.state.Load()
		cred, err := p.issue(s, c.Now(), prm, nil)
		if err != nil {
			var pe *plugin.Error
			if !errors.As(err, &pe) || pe.Status != 400 {
				t.Fatalf("query %q passed the checks but signing failed: %v", raw, err)
			}
			return
		}
		verify(t, cred.CACrt, cred.NodeCrt, c.Now())
	})
}

// FuzzKeyRequest: any POST body is refused with a plugin error or yields
// a key that nebula's own PEM parser reads the same.
func FuzzKeyRequest(f *testing.F) {
	good := cert.MarshalPublicKeyToPEM(cert.Curve_CURVE25519, bytes.Repeat([]byte{9}, 32))
	body, _ := json.Marshal(map[string]string{"public_key": string(good)})
	f.Add(body)
	f.Add([]byte(`{"public_key": ""}`))
	f.Add([]byte(`{"public_key": "x", "x": 1}`))
	f.Add([]byte(`[]`))
	f.Add(append(body, body...))
	f.Fuzz(func(t *testing.T, b []byte) {
		pub, err := parseKeyRequest(b)
		if err != nil {
			var pe *plugin.Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a plugin error", err)
			}
			return
		}
		var kr keyRequest
		if err := json.Unmarshal(b, &kr); err != nil {
			t.Fatalf("accepted a body encoding/json refuses: %v", err)
		}
		raw, _, curve, err := cert.UnmarshalPublicKeyFromPEM([]byte(kr.PublicKey))
		if err != nil || curve != pub.curve || !bytes.Equal(raw, pub.raw) {
			t.Fatalf("key %x/%v differs from nebula's reading %x/%v (%v)", pub.raw, pub.curve, raw, curve, err)
		}
	})
}

// FuzzBytes: Bytes decodes exactly the JSON arrays of integers 0..255,
// as a []int decode of the same document says.
func FuzzBytes(f *testing.F) {
	for _, s := range []string{`[]`, `null`, `[0,255]`, `[256]`, `[-0]`, `[1e1]`, `"AA=="`, ` [ 1 ,2 ] `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var b Bytes
		errB := json.Unmarshal(data, &b)
		var ints []int
		errI := json.Unmarshal(data, &ints)
		inRange := errI == nil
		for _, v := range ints {
			if v < 0 || v > 255 {
				inRange = false
			}
		}
		if errB == nil {
			if errI != nil || !inRange || len(ints) != len(b) {
				t.Fatalf("Bytes accepted %q as %v; []int says %v %v", data, b, ints, errI)
			}
			for i := range b {
				if int(b[i]) != ints[i] {
					t.Fatalf("item %d: %d vs %d", i, b[i], ints[i])
				}
			}
			if bytes.Equal(bytes.TrimSpace(data), []byte("null")) != (b == nil) {
				t.Fatalf("null handling: %q -> %v", data, b)
			}
		} else if inRange && !bytes.Contains(data, []byte("-")) {
			// "-0" is an int but not an unsigned number; anything else
			// []int accepts in range must be accepted.
			t.Fatalf("Bytes refused %q (%v), which []int reads as %v", data, errB, ints)
		}
	})
}
