package k8spsat

import (
	"context"
	"errors"
	"testing"

	"github.com/trustgate/trustgate/attest"
)

// FuzzParseEvidence checks that the decoder never panics and that what it
// accepts has both fields.
func FuzzParseEvidence(f *testing.F) {
	f.Add([]byte(`{"cluster":"prod","token":"eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}`))
	f.Add([]byte(`{"cluster":"","token":null}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"cluster":"a","token":"b"}{}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := ParseEvidence(raw)
		if err != nil {
			if !errors.Is(err, attest.ErrRejected) {
				t.Fatalf("error %v does not wrap ErrRejected", err)
			}
			return
		}
		if ev.Cluster == "" || ev.Token == "" {
			t.Fatalf("accepted evidence with a missing field: %+v", ev)
		}
	})
}

// FuzzOfflineToken feeds arbitrary tokens, seeded with a valid one, to the
// offline verifier: no panics, every failure is a rejection, and only a
// token carrying the signed claims is accepted.
func FuzzOfflineToken(f *testing.F) {
	k := newSigningKey(f, "k1")
	a := mustNew(f, Config{Clusters: map[string]ClusterConfig{"edge": offlineCluster(f, k)}})
	good := sign(f, k, psatClaimsFor())
	f.Add(good)
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
	f.Add("")
	f.Fuzz(func(t *testing.T, token string) {
		res, err := a.Attest(context.Background(), ch, evidence("edge", token))
		if err != nil {
			if !errors.Is(err, attest.ErrRejected) {
				t.Fatalf("error %v does not wrap ErrRejected", err)
			}
			return
		}
		if res.SPIFFEID != "spiffe://example.org/spire/agent/k8s_psat/edge/node-uid-a" {
			t.Fatalf("accepted token %q as %s", token, res.SPIFFEID)
		}
	})
}
