package x509pop

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"testing"

	"github.com/trustgate/trustgate/attest"
)

// FuzzParseEvidence checks that the decoder never panics, and that whatever
// it accepts satisfies the shape it promises.
func FuzzParseEvidence(f *testing.F) {
	f.Add([]byte(`{"leaf":"AA==","nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","algorithm":"ecdsa-sha256","signature":"AA=="}`))
	f.Add([]byte(`{"leaf":"AA==","intermediates":["AA==",""],"nonce":"","algorithm":"rsa-pss-sha256","signature":"AA=="}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"leaf":null}{}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := ParseEvidence(raw)
		if err != nil {
			if !errors.Is(err, attest.ErrRejected) {
				t.Fatalf("error %v does not wrap ErrRejected", err)
			}
			return
		}
		if len(ev.Leaf) == 0 || len(ev.Nonce) != ClientNonceSize || len(ev.Signature) == 0 {
			t.Fatalf("accepted evidence with missing fields: %+v", ev)
		}
	})
}

// FuzzAttest feeds arbitrary evidence, seeded with valid evidence, to a
// configured attestor: it must reject without panicking, and anything it
// accepts must carry the signed leaf and client nonce (only the JSON
// spelling or the intermediates may differ).
func FuzzAttest(f *testing.F) {
	p := newPKI(f, ecKey(f))
	a := newAttestor(f, Config{CABundlePaths: []string{p.bundle}})
	ch := challenge()
	good, err := MakeEvidence(ch, p.leaf.cert, []*x509.Certificate{p.inter.cert}, p.leaf.key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(good))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"leaf":"MAA=","nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","algorithm":"ecdsa-sha256","signature":"MAA="}`))
	var want Evidence
	if err := json.Unmarshal(good, &want); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		_, err := a.Attest(context.Background(), ch, raw)
		if err == nil {
			ev, perr := ParseEvidence(raw)
			if perr != nil || string(ev.Leaf) != string(want.Leaf) || string(ev.Nonce) != string(want.Nonce) {
				t.Fatalf("accepted evidence the key did not sign: %q", raw)
			}
			return
		}
		if !errors.Is(err, attest.ErrRejected) {
			t.Fatalf("error %v does not wrap ErrRejected", err)
		}
	})
}
