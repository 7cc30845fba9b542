package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/policy"
)

// The --dev policy lets the sample TEE do what the docs show: nebula-ca,
// svid, and pull and push (not delete) on the dev registry.
func TestDevPolicyAllowsWhatTheDocsShow(t *testing.T) {
	cmd := command("server", "--dev", "--listen", "127.0.0.1:0", "--dev-agent-listen", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	var api string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "API:" {
			api = f[1]
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	if api == "" {
		t.Fatal("no API address printed")
	}

	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b, _ := k.PublicKey.Bytes()
	enc := base64.RawURLEncoding.EncodeToString
	pub := map[string]string{"kty": "EC", "crv": "P-256", "alg": "ES256", "x": enc(b[1:33]), "y": enc(b[33:65])}
	c := &rcartest.Client{Base: api, HTTP: http.DefaultClient}
	ch, _, err := c.Auth("sample", "")
	if err != nil {
		t.Fatal(err)
	}
	alg, _ := ch.ExtraParams["selected-hash-algorithm"].(string)
	rd, err := rcartest.ReportData(alg, pub, ch.Nonce, "")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Attest(rcartest.Attestation{
		RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: pub},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: rcartest.SampleEvidence("1", rd)},
	})
	if err != nil {
		t.Fatal(err)
	}

	get := func(path string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, api+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, p := range []string{"/kbs/v0/nebula-ca/ca", "/kbs/v0/svid/bundle"} {
		if st := get(p); st != http.StatusOK {
			t.Errorf("GET %s with the sample TEE's token: %d, want 200", p, st)
		}
	}
	access := func(service string) []string {
		t.Helper()
		q := url.Values{"service": {service}, "scope": {"repository:team/app:pull,push,delete"}}
		req, _ := http.NewRequest(http.MethodGet, api+"/token?"+q.Encode(), nil)
		req.SetBasicAuth("x", tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Token string `json:"token"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("/token for %s: %d %v", service, resp.StatusCode, err)
		}
		parts := strings.Split(out.Token, ".")
		if len(parts) != 3 {
			t.Fatalf("scoped token %q", out.Token)
		}
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var claims struct {
			Access []struct {
				Actions []string `json:"actions"`
			} `json:"access"`
		}
		if err := json.Unmarshal(payload, &claims); err != nil {
			t.Fatal(err)
		}
		var acts []string
		for _, a := range claims.Access {
			acts = append(acts, a.Actions...)
		}
		slices.Sort(acts)
		return acts
	}
	if got := access(policy.DevRegistry); !slices.Equal(got, []string{"pull", "push"}) {
		t.Errorf("dev registry access %v, want [pull push]", got)
	}
}
