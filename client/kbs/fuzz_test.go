package kbs

import (
	"net/http"
	"strings"
	"testing"
	"unicode"

	"github.com/go-jose/go-jose/v4"
)

// FuzzParseError: any answer becomes an *Error whose text is bounded and
// holds no control characters.
func FuzzParseError(f *testing.F) {
	f.Add(401, "application/problem+json", []byte(`{"type":"https://github.com/confidential-containers/kbs/errors/AttestationError","title":"Unauthorized","status":401,"detail":"nonce"}`))
	f.Add(429, "application/problem+json", []byte(`{"type":"x","detail":"slow\n\x1b[31mdown"}`))
	f.Add(500, "text/html", []byte("<html>\x00</html>"))
	f.Add(403, "", []byte(`{"type":null}`))
	f.Add(502, "application/json", []byte(strings.Repeat("a", 5000)))
	f.Fuzz(func(t *testing.T, status int, ct string, body []byte) {
		h := http.Header{"Content-Type": {ct}, "Retry-After": {"3"}}
		e := ParseError(status, h, body)
		if e.Status != status {
			t.Fatal("status changed")
		}
		for _, s := range []string{e.Type, e.Title, e.Detail} {
			if len(s) > 4*maxDetail+2 {
				t.Fatalf("field of %d bytes", len(s))
			}
			for _, r := range s {
				if unicode.IsControl(r) {
					t.Fatalf("control character %q in %q", r, s)
				}
			}
		}
		_ = e.Error()
	})
}

// FuzzParseAnswers feeds the same bytes to every answer parser.
func FuzzParseAnswers(f *testing.F) {
	f.Add([]byte(`{"nonce":"bm9uY2U=","extra-params":{"selected-hash-algorithm":"sha512"}}`))
	f.Add([]byte(`{"nonce":"","extra-params":""}`))
	f.Add([]byte(`{"token":"a.b.c"}`))
	f.Add([]byte(`{"node_crt":[45,45],"node_key":[1],"ca_crt":[255,0]}`))
	f.Add([]byte(`{"ca_crt":[256]}`))
	f.Add([]byte(`{"ca_crt":"AAA="}`))
	f.Add([]byte(`{"spiffe_id":"spiffe://example.org/x","svid":["-----BEGIN CERTIFICATE-----"],"expires_at":1}`))
	f.Add([]byte(`{"token":"a.b.c","spiffe_id":"spiffe://example.org/x","expires_at":1e3}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if ch, err := parseChallenge(b); err == nil && (ch.Nonce == "" || ch.HashAlgorithm == "") {
			t.Fatalf("challenge %+v accepted", ch)
		}
		if tok, err := parseToken(b); err == nil && strings.Count(tok, ".") != 2 {
			t.Fatalf("token %q accepted", tok)
		}
		if c, err := parseNebula(b); err == nil && len(c.CACrt) == 0 {
			t.Fatal("nebula answer without ca_crt accepted")
		}
		if x, err := parseX509SVID(b); err == nil && (len(x.Chain) == 0 || x.SPIFFEID == "") {
			t.Fatalf("x509 answer %+v accepted", x)
		}
		if j, err := parseJWTSVID(b); err == nil && j.Token == "" {
			t.Fatal("jwt answer without a token accepted")
		}
	})
}

// FuzzOpen: arbitrary bytes never open, and never panic, for either key
// type; a real JWE to the key is the seed that does open.
func FuzzOpen(f *testing.F) {
	ec, err := GenerateTEEKey(KeyEC)
	if err != nil {
		f.Fatal(err)
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: ec.priv.Public()}, nil)
	if err != nil {
		f.Fatal(err)
	}
	obj, err := enc.Encrypt([]byte("hello"))
	if err != nil {
		f.Fatal(err)
	}
	good := obj.FullSerialize()
	compact, err := obj.CompactSerialize()
	if err != nil {
		f.Fatal(err)
	}
	for _, g := range []string{good, compact} {
		if plain, err := ec.Open([]byte(g)); err != nil || string(plain) != "hello" {
			f.Fatalf("seed %q: %q %v", g, plain, err)
		}
	}
	f.Add([]byte(good))
	f.Add([]byte(compact))
	f.Add([]byte(`{"protected":"eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0","iv":"","ciphertext":"","tag":""}`))
	f.Add([]byte("a.b.c.d.e"))
	f.Fuzz(func(t *testing.T, b []byte) {
		plain, err := ec.Open(b)
		if err == nil && string(plain) != "hello" {
			// Only an authentic JWE opens; a re-serialized good one still
			// says hello.
			t.Fatalf("opened %q to %q", b, plain)
		}
		var k TEEKey
		_ = k.UnmarshalJSON(b)
	})
}
