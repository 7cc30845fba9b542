package agentapi

import (
	"errors"
	"testing"

	"github.com/trustgate/trustgate/agentapi/wire"
)

// FuzzRequestBodies feeds arbitrary bytes to the agent API's body decoding
// and the wait parameter parser: no panic, strict decoding, and a wait
// that is never out of bounds.
func FuzzRequestBodies(f *testing.F) {
	f.Add([]byte(`{"requests":[{"entry_id":"e","csr":"AAAA"}]}`), "30s")
	f.Add([]byte(`{"csr":"MIIB"}`), "60")
	f.Add([]byte(`{"entry_id":"e","audience":["a","b"]}`), "61s")
	f.Add([]byte(`{"spiffe_id":"spiffe://td/spire/agent/x"} {}`), "-1s")
	f.Add([]byte(`{"requests":null,"extra":1}`), "1e9")
	f.Fuzz(func(t *testing.T, body []byte, wait string) {
		var x wire.X509Request
		var s wire.SVIDRequest
		var j wire.JWTRequest
		var e wire.EvictRequest
		for _, v := range []any{&x, &s, &j, &e} {
			if err := decodeJSON(body, v); err != nil {
				var p *Problem
				if !errors.As(err, &p) || p.Status != 400 {
					t.Fatalf("decode error is not a 400 problem: %v", err)
				}
			}
		}
		d, err := parseWait(wait)
		if err == nil && (d < 0 || d > wire.MaxWait) {
			t.Fatalf("wait %q parsed to %s", wait, d)
		}
		if err == nil && wait == "" && d != 0 {
			t.Fatalf("empty wait is %s", d)
		}
	})
}
