package auth_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	orasregistry "oras.land/oras-go/v2/registry"
	orasauth "oras.land/oras-go/v2/registry/remote/auth"

	"github.com/trustgate/trustgate/client/auth"
	"github.com/trustgate/trustgate/client/auth/internal/registrytest"
)

// BenchmarkRepeatResolve measures a warm repeat tag resolve, side by side
// for trustgate's transport and the three peers, on the compliant registry
// and both misbehaving proxies. It reports HTTP requests per operation next
// to the time.
func BenchmarkRepeatResolve(b *testing.B) {
	targets := []*registrytest.Target{
		registrytest.StartCompliant(b, "compliant", registrytest.Options{}),
		registrytest.StartArtifactory(b, "artifactory-like", registrytest.Options{}),
		registrytest.StartNVCR(b, "nvcr-like", registrytest.Options{}),
	}
	for _, tgt := range targets {
		im, err := registrytest.NewImage(tgt.Name)
		if err != nil {
			b.Fatal(err)
		}
		tr := newSeedTransport(tgt)
		if err := im.Push(context.Background(), newRepo(b, tgt, "app", tr), "v1"); err != nil {
			b.Fatal(err)
		}
	}
	for _, tgt := range targets {
		for _, ck := range clientKinds {
			b.Run(fmt.Sprintf("%s/%s", tgt.Name, ck.name), func(b *testing.B) {
				wire := registrytest.NewWire(&http.Transport{}, tgt)
				d, err := ck.new(tgt, wire)
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				if err := d.resolve(ctx, "app", "v1"); err != nil {
					b.Fatal(err)
				}
				start := wire.Counts()
				b.ResetTimer()
				for b.Loop() {
					if err := d.resolve(ctx, "app", "v1"); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				end := wire.Counts()
				b.ReportMetric(float64(end.Requests-start.Requests)/float64(b.N), "requests/op")
				b.ReportMetric(float64(end.OutOfScope), "out-of-scope-total")
				if ck.name == "trustgate" && end.OutOfScope != 0 {
					b.Fatalf("out-of-scope tokens: %v", wire.Problems())
				}
			})
		}
	}
}

// fakeRegistry answers in memory: 200 with a Bearer token, otherwise a
// compliant challenge; /token hands out a token. It isolates the clients'
// own per-request cost from the network and the registry.
type fakeRegistry struct{}

func (fakeRegistry) RoundTrip(r *http.Request) (*http.Response, error) {
	resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: r}
	switch {
	case r.URL.Path == "/token":
		resp.Body = io.NopCloser(strings.NewReader(`{"token":"abc.def.ghi","expires_in":300}`))
	case r.Header.Get("Authorization") == "":
		resp.StatusCode = http.StatusUnauthorized
		resp.Header.Set("WWW-Authenticate", `Bearer realm="http://reg.test/token",service="reg.test",scope="repository:team/app:pull"`)
	}
	return resp, nil
}

// BenchmarkWarmRoundTrip compares the per-request cost of a warm cache hit,
// trustgate's transport against oras-go's auth.Client (given its scope hint),
// with no network in the way.
func BenchmarkWarmRoundTrip(b *testing.B) {
	const u = "http://reg.test/v2/team/app/manifests/v1"
	b.Run("trustgate", func(b *testing.B) {
		tr := auth.New(auth.WithBase(fakeRegistry{}))
		req, _ := http.NewRequest(http.MethodHead, u, nil)
		for b.Loop() {
			resp, err := tr.RoundTrip(req)
			if err != nil || resp.StatusCode != http.StatusOK {
				b.Fatal(err, resp)
			}
		}
	})
	b.Run("oras-go NewCache", func(b *testing.B) {
		c := &orasauth.Client{Client: &http.Client{Transport: fakeRegistry{}}, Cache: orasauth.NewCache()}
		ref, _ := orasregistry.ParseReference("reg.test/team/app")
		ctx := orasauth.AppendRepositoryScope(context.Background(), ref, orasauth.ActionPull)
		req, _ := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
		for b.Loop() {
			resp, err := c.Do(req)
			if err != nil || resp.StatusCode != http.StatusOK {
				b.Fatal(err, resp)
			}
		}
	})
}
