// Package dockerregistry runs Debian's docker-registry (distribution
// v2.8, the line most registries and Harbor run) as a real process on
// loopback, configured for token authentication through
// auth.token.rootcertbundle, for tests. CI installs the package (.ci/run);
// without the binary, tests skip.
package dockerregistry

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/trustgate/trustgate/internal/syncbuf"
)

// Binary is the registry executable Debian's docker-registry package
// installs.
const Binary = "docker-registry"

// Config is the registry's auth.token block.
type Config struct {
	// Realm is the token endpoint named in challenges.
	Realm string
	// Service is the registry's service name, the accepted audience.
	Service string
	// Issuer is the accepted "iss".
	Issuer string
	// RootCertBundle is the PEM file content of auth.token.rootcertbundle.
	RootCertBundle []byte
}

// Registry is a running registry.
type Registry struct {
	// URL is its base URL, http://127.0.0.1:port.
	URL string
	// Host is its host:port.
	Host string
}

// Start runs the registry with filesystem storage in a temporary
// directory until the test ends, and waits until it answers. It skips the
// test when the binary is not installed.
func Start(tb testing.TB, c Config) *Registry {
	tb.Helper()
	bin, err := exec.LookPath(Binary)
	if err != nil {
		tb.Skipf("%s is not installed (apt-get install docker-registry; .ci/run installs it)", Binary)
	}
	dir := tb.TempDir()
	bundle := filepath.Join(dir, "rootcertbundle.pem")
	if err := os.WriteFile(bundle, c.RootCertBundle, 0o600); err != nil {
		tb.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	host := l.Addr().String()
	_ = l.Close()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
http:
  addr: %q
  secret: dockerregistry-test-secret
auth:
  token:
    realm: %q
    service: %q
    issuer: %q
    rootcertbundle: %q
`, filepath.Join(dir, "data"), host, c.Realm, c.Service, c.Issuer, bundle)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		tb.Fatal(err)
	}
	var out syncbuf.Buffer
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", Binary, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	r := &Registry{URL: "http://" + host, Host: host}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.URL+"/v2/", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return r
			}
		}
		select {
		case err := <-exited:
			tb.Fatalf("%s exited: %v\n%s", Binary, err, out.String())
		case <-ctx.Done():
			tb.Fatalf("%s did not answer on %s: %s", Binary, host, out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
