package tlsclient_test

import (
	"bytes"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/tlsclient"
)

func TestConfig(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	get := func(o tlsclient.Options) error {
		hc, err := tlsclient.HTTPClient(o)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Get(srv.URL)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(tlsclient.Options{TrustBundlePath: bundle}); err != nil {
		t.Fatalf("with the bundle: %v", err)
	}
	if err := get(tlsclient.Options{}); err == nil {
		t.Fatal("system roots accepted the test server")
	}
	var logs bytes.Buffer
	if err := get(tlsclient.Options{InsecureBootstrap: true, Log: slog.New(slog.NewTextHandler(&logs, nil))}); err != nil {
		t.Fatalf("insecure bootstrap: %v", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "INSECURE BOOTSTRAP") {
		t.Fatalf("insecure bootstrap not logged loudly: %q", logs.String())
	}
	// The test server's certificate is no SVID: verifying by SPIFFE ID fails.
	id := spiffeid.RequireFromString("spiffe://example.org/spire/server")
	if err := get(tlsclient.Options{TrustBundlePath: bundle, ServerID: id}); err == nil {
		t.Fatal("a certificate without the SPIFFE ID passed")
	}
	for _, o := range []tlsclient.Options{
		{TrustBundlePath: bundle, InsecureBootstrap: true},
		{ServerID: id},
		{TrustBundlePath: filepath.Join(t.TempDir(), "missing.pem")},
	} {
		if _, err := tlsclient.Config(o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}
