package svid_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/svid"
)

// FuzzParseCSR feeds arbitrary bodies to the CSR parser: it must never
// panic, and every refusal is a 400.
func FuzzParseCSR(f *testing.F) {
	_, der := newCSR(f, workloadID)
	f.Add(der)
	f.Add(pemCSR(der))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		csr, err := svid.ParseCSR(body)
		if err != nil {
			var pe *plugin.Error
			if !errors.As(err, &pe) || pe.Status != http.StatusBadRequest {
				t.Fatalf("refusal is not a 400: %v", err)
			}
			return
		}
		if err := csr.CheckSignature(); err != nil || len(csr.URIs) > 1 {
			t.Fatalf("accepted a CSR that does not verify or names %d URIs: %v", len(csr.URIs), err)
		}
	})
}

// FuzzParseJWTRequest feeds arbitrary queries and bodies to the JWT-SVID
// request parser.
func FuzzParseJWTRequest(f *testing.F) {
	f.Add("", `{"spiffe_id":"spiffe://example.org/a","audience":["x"]}`)
	f.Add("spiffe_id=spiffe%3A%2F%2Fexample.org%2Fa&audience=x&audience=y", "")
	f.Add("audience=x", "")
	f.Add("", `{"spiffe_id":1}`)
	f.Add("", `{"audience":null} trailing`)
	f.Fuzz(func(t *testing.T, query, body string) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		id, aud, err := svid.ParseJWTRequest(q, []byte(body))
		if err != nil {
			var pe *plugin.Error
			if !errors.As(err, &pe) || pe.Status != http.StatusBadRequest {
				t.Fatalf("refusal is not a 400: %v", err)
			}
			return
		}
		if id.IsZero() || len(aud) == 0 || len(aud) > svid.MaxAudiences {
			t.Fatalf("accepted id %q with %d audiences", id, len(aud))
		}
	})
}

// FuzzHandle drives the whole plugin with arbitrary methods, paths,
// queries and bodies: it must never panic or fail with a server error.
func FuzzHandle(f *testing.F) {
	_, der := newCSR(f, workloadID)
	f.Add("POST", "x509", "", der)
	f.Add("POST", "x509", "spiffe_id=spiffe%3A%2F%2Fexample.org%2Fns%2Fprod%2Fsa%2Fweb", pemCSR(der))
	f.Add("POST", "jwt", "", []byte(`{"spiffe_id":"spiffe://example.org/ns/prod/sa/web","audience":["x"]}`))
	f.Add("GET", "bundle", "", []byte(nil))
	f.Add("DELETE", "x509", "a=b", []byte("x"))
	fx := newFixture(f, time.Now(), svid.DefaultConfig())
	f.Fuzz(func(t *testing.T, method, path, query string, body []byte) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		_, err = fx.p.Handle(context.Background(), &plugin.Request{Method: method, Path: []string{path}, Query: q, Body: body, Caller: agent()})
		if status(err) == http.StatusInternalServerError {
			t.Fatalf("server error: %v", err)
		}
	})
}
