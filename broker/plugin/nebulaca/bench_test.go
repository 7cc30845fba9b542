package nebulaca

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/trustgate/trustgate/broker/plugin"
)

const clients = 64

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creds/s")
}

// parallel64 runs body on 64 goroutines whatever GOMAXPROCS is.
func parallel64(b *testing.B, body func(pb *testing.PB)) {
	b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.RunParallel(body)
}

// BenchmarkIssue times Nebula credential issuance (a new key pair and its
// certificate) natively, directly and over loopback HTTP with 64 clients,
// and, side by side, Trustee's way: one nebula-cert sign process per
// credential writing files into a temporary directory that are then read.
// Compare creds/s: native/http-64 against trustee-fork/64 is the headline
// ratio.
func BenchmarkIssue(b *testing.B) {
	p := newPlugin(b, testConfig(), nil, nil)
	const q = "name=pod-1&ip=10.42.3.4/16&groups=web"
	req := &plugin.Request{Method: http.MethodGet, Path: []string{"credential"}, Query: query(q)}

	b.Run("native/direct", func(b *testing.B) {
		ctx := context.Background()
		for b.Loop() {
			if _, err := p.Handle(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b)
	})

	b.Run("native/http-64", func(b *testing.B) {
		srv := httptest.NewServer(serve(p))
		defer srv.Close()
		client := newHTTPClient()
		url := srv.URL + "/kbs/v0/nebula-ca/credential?" + q
		var failed atomic.Int64
		b.ResetTimer()
		parallel64(b, func(pb *testing.PB) {
			for pb.Next() {
				resp, err := client.Get(url)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		})
		if n := failed.Load(); n > 0 {
			b.Fatalf("%d requests failed", n)
		}
		reportRate(b)
	})

	bin, err := exec.LookPath("nebula-cert")
	if err != nil {
		b.Log("nebula-cert is not on PATH, so the fork side is skipped; install it with: go install github.com/slackhq/nebula/cmd/nebula-cert@v1.11.1")
		return
	}
	dir := b.TempDir()
	caCrt, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if out, err := exec.Command(bin, "ca", "-name", "bench", "-networks", "10.42.0.0/16", "-out-crt", caCrt, "-out-key", caKey).CombinedOutput(); err != nil {
		b.Fatalf("nebula-cert ca: %v: %s", err, out)
	}
	var seq atomic.Int64
	fork := func() error {
		work, err := os.MkdirTemp(dir, "cred")
		if err != nil {
			return err
		}
		defer os.RemoveAll(work)
		crt, key := filepath.Join(work, "node.crt"), filepath.Join(work, "node.key")
		out, err := exec.Command(bin, "sign", "-ca-crt", caCrt, "-ca-key", caKey, "-name", "pod-1",
			"-ip", "10.42.3.4/16", "-groups", "web", "-out-crt", crt, "-out-key", key).CombinedOutput()
		if err != nil {
			return fmt.Errorf("nebula-cert sign: %v: %s", err, out)
		}
		for _, f := range []string{crt, key, caCrt} {
			if _, err := os.ReadFile(f); err != nil {
				return err
			}
		}
		seq.Add(1)
		return nil
	}
	b.Run("trustee-fork/direct", func(b *testing.B) {
		for b.Loop() {
			if err := fork(); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b)
	})
	b.Run("trustee-fork/64", func(b *testing.B) {
		var failed atomic.Int64
		parallel64(b, func(pb *testing.PB) {
			for pb.Next() {
				if err := fork(); err != nil {
					failed.Add(1)
				}
			}
		})
		if n := failed.Load(); n > 0 {
			b.Fatalf("%d forks failed", n)
		}
		reportRate(b)
	})
}
