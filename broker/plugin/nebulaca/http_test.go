package nebulaca

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/trustgate/trustgate/broker/plugin"
)

// serve is a minimal stand-in for the broker's plugin router: it maps
// /kbs/v0/<name>/<path...> to Handle, limits the body, and answers plugin
// errors with their status. It does no authentication, policy or JWE.
func serve(p plugin.Plugin) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/kbs/v0/"+p.Name()+"/")
		if !ok {
			http.NotFound(w, r)
			return
		}
		if p.Access(r.Method) == plugin.Denied {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		resp, err := p.Handle(r.Context(), &plugin.Request{
			Method: r.Method, Path: strings.Split(rest, "/"), Query: r.URL.Query(), Body: body,
		})
		var pe *plugin.Error
		switch {
		case errors.As(err, &pe):
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(pe.Status)
			_ = json.NewEncoder(w).Encode(map[string]any{"status": pe.Status, "detail": pe.Detail})
			return
		case err != nil:
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", resp.ContentType)
		if resp.Status != 0 {
			w.WriteHeader(resp.Status)
		}
		_, _ = w.Write(resp.Body)
	})
}

func newHTTPClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: 128, ResponseHeaderTimeout: 10 * time.Second,
	}}
}

// TestHTTP goes through HTTP as a Trustee client would: the answer's
// fields are JSON arrays of numbers holding PEM, decoded here into []int
// the way serde decodes Vec<u8>; errors are 400s with the reason.
func TestHTTP(t *testing.T) {
	c := newClock()
	p := newPlugin(t, testConfig(), nil, c)
	srv := httptest.NewServer(serve(p))
	defer srv.Close()
	client := newHTTPClient()

	resp, err := client.Get(srv.URL + "/kbs/v0/nebula-ca/credential?name=podA&ip=10.42.8.7/21")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var serde struct {
		NodeCrt []int `json:"node_crt"`
		NodeKey []int `json:"node_key"`
		CACrt   []int `json:"ca_crt"`
	}
	dec := json.NewDecoder(resp.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&serde); err != nil {
		t.Fatal(err)
	}
	toBytes := func(v []int) []byte {
		b := make([]byte, len(v))
		for i, x := range v {
			b[i] = byte(x)
		}
		return b
	}
	crtPEM, keyPEM := toBytes(serde.NodeCrt), toBytes(serde.NodeKey)
	if !strings.HasPrefix(string(crtPEM), "-----BEGIN NEBULA CERTIFICATE V2-----\n") ||
		!strings.HasPrefix(string(keyPEM), "-----BEGIN NEBULA X25519 PRIVATE KEY-----\n") {
		t.Fatalf("not nebula PEM:\n%s\n%s", crtPEM, keyPEM)
	}
	verify(t, toBytes(serde.CACrt), crtPEM, c.Now())

	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/kbs/v0/nebula-ca/credential?name=podA&ip=10.9.8.7/21", 400},
		{"GET", "/kbs/v0/nebula-ca/credential?name=podA&ip=1.2", 400},
		{"GET", "/kbs/v0/nebula-ca/nothing", 404},
		{"DELETE", "/kbs/v0/nebula-ca/credential", 405},
		{"GET", "/kbs/v0/nebula-ca/ca", 200},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.status)
		}
	}
}
