package auth_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/trustgate/trustgate/client/auth"
	"github.com/trustgate/trustgate/client/auth/internal/registrytest"
)

func creds(targets ...*registrytest.Target) auth.CredentialFunc {
	return func(_ context.Context, host string) (auth.Credential, error) {
		for _, t := range targets {
			if t.Host() == host {
				return auth.Credential{Username: registrytest.User, Password: registrytest.Password}, nil
			}
		}
		return auth.Credential{}, nil
	}
}

func newRepo(t testing.TB, tgt *registrytest.Target, repo string, rt http.RoundTripper) *remote.Repository {
	t.Helper()
	r, err := remote.NewRepository(tgt.Host() + "/" + tgt.Repo(repo))
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true
	r.Client = &http.Client{Transport: rt}
	return r
}

// TestPushPullThroughAllRegistries pushes an image through each of the three
// front doors with the transport, pulls it back byte for byte, copies it to
// another repository, and checks on the wire that no token went out of scope
// and that repeats cost one request.
func TestPushPullThroughAllRegistries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	targets := []*registrytest.Target{
		registrytest.StartCompliant(t, "compliant", registrytest.Options{}),
		registrytest.StartArtifactory(t, "artifactory", registrytest.Options{}),
		registrytest.StartNVCR(t, "nvcr", registrytest.Options{}),
	}
	for _, tgt := range targets {
		t.Run(tgt.Name, func(t *testing.T) {
			wire := registrytest.NewWire(http.DefaultTransport, tgt)
			tr := auth.New(auth.WithBase(wire), auth.WithCredentials(creds(tgt)))
			im, err := registrytest.NewImage(tgt.Name)
			if err != nil {
				t.Fatal(err)
			}
			src := newRepo(t, tgt, "team/app", tr)
			if err := im.Push(ctx, src, "v1"); err != nil {
				t.Fatalf("push: %v", err)
			}
			desc, rc, err := src.FetchReference(ctx, "v1")
			if err != nil {
				t.Fatalf("pull manifest: %v", err)
			}
			got, err := content.ReadAll(rc, desc)
			rc.Close()
			if err != nil || !bytes.Equal(got, im.Manifest) {
				t.Fatalf("manifest round trip: err=%v equal=%v", err, bytes.Equal(got, im.Manifest))
			}
			dst := newRepo(t, tgt, "team/copy", tr)
			if _, err := oras.Copy(ctx, src, "v1", dst, "latest", oras.DefaultCopyOptions); err != nil {
				t.Fatalf("copy: %v", err)
			}
			_, rc2, err := dst.FetchReference(ctx, "latest")
			if err != nil {
				t.Fatalf("pull copy: %v", err)
			}
			b, _ := io.ReadAll(rc2)
			rc2.Close()
			if !bytes.Equal(b, im.Manifest) {
				t.Fatal("copied manifest differs")
			}
			// Repeat: one request each, whatever the server's challenge says.
			before := wire.Counts()
			for range 10 {
				if _, err := src.Resolve(ctx, "v1"); err != nil {
					t.Fatal(err)
				}
			}
			after := wire.Counts()
			if n := after.Requests - before.Requests; n != 10 {
				t.Errorf("10 repeat resolves took %d requests, want 10", n)
			}
			if after.OutOfScope != 0 {
				t.Errorf("out-of-scope tokens: %v", wire.Problems())
			}
			t.Logf("%s: %+v", tgt.Name, after)
		})
	}
}
