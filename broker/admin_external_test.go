package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/rcartest"
)

func signWith(t *testing.T, key *ecdsa.PrivateKey, claims map[string]any) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAdminAuth(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	iat := time.Now().Unix()
	exp := time.Now().Add(time.Hour).Unix()
	for name, tc := range map[string]struct {
		token  string
		status int
	}{
		"none":          {"", 401},
		"garbage":       {"not-a-jwt", 401},
		"other key":     {signWith(t, other, map[string]any{"role": "admin", "exp": exp}), 401},
		"no exp":        {signWith(t, h.adminKey, map[string]any{"role": "admin"}), 401},
		"expired":       {signWith(t, h.adminKey, map[string]any{"role": "admin", "exp": time.Now().Add(-time.Hour).Unix()}), 401},
		"not admin":     {signWith(t, h.adminKey, map[string]any{"role": "viewer", "exp": exp, "iat": iat}), 403},
		"no role":       {signWith(t, h.adminKey, map[string]any{"exp": exp, "iat": iat}), 403},
		"no iat":        {signWith(t, h.adminKey, map[string]any{"role": "admin", "exp": exp}), 401},
		"over max ttl":  {signWith(t, h.adminKey, map[string]any{"role": "admin", "exp": time.Now().Add(2 * time.Hour).Unix(), "iat": iat}), 401},
		"future iat":    {signWith(t, h.adminKey, map[string]any{"role": "admin", "exp": time.Now().Add(3 * time.Hour).Unix(), "iat": time.Now().Add(2 * time.Hour).Unix()}), 401},
		"admin":         {h.adminToken(t), 200},
		"role as array": {signWith(t, h.adminKey, map[string]any{"role": []string{"admin"}, "exp": exp}), 401},
	} {
		req, _ := http.NewRequest(http.MethodGet, h.http.URL+"/admin/v1/entries", nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := h.http.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", name, resp.StatusCode, tc.status)
		}
	}
}

// TestEntriesAndNodeAliases: entries made through the admin API become
// node aliases of an attested node whose selectors include theirs.
func TestEntriesAndNodeAliases(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	ac := &broker.AdminClient{Server: h.http.URL, Token: h.adminToken(t), HTTP: h.http.Client()}
	server := "spiffe://example.org/spire/server"
	match, err := ac.CreateEntry(ctx, broker.Entry{SPIFFEID: "spiffe://example.org/alias/svn1", ParentID: server, Selectors: []broker.Selector{{Type: "sample", Value: "svn:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ac.CreateEntry(ctx, broker.Entry{SPIFFEID: "spiffe://example.org/alias/both", ParentID: server,
		Selectors: []broker.Selector{{Type: "sample", Value: "svn:1"}, {Type: "sample", Value: "svn:2"}}}); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]broker.Entry{
		"foreign td":   {SPIFFEID: "spiffe://other.org/x", ParentID: server, Selectors: []broker.Selector{{Type: "a", Value: "b"}}},
		"no selectors": {SPIFFEID: "spiffe://example.org/x", ParentID: server},
		"bad id":       {SPIFFEID: "http://x", ParentID: server, Selectors: []broker.Selector{{Type: "a", Value: "b"}}},
		"colon type":   {SPIFFEID: "spiffe://example.org/x", ParentID: server, Selectors: []broker.Selector{{Type: "a:b", Value: "c"}}},
	} {
		if _, err := ac.CreateEntry(ctx, bad); err == nil || !strings.Contains(err.Error(), "400") {
			t.Errorf("%s: %v", name, err)
		}
	}
	list, err := ac.ListEntries(ctx, server, "")
	if err != nil || len(list) != 2 {
		t.Fatalf("list: %d %v", len(list), err)
	}
	c := h.client()
	ch, _, err := c.Auth("sample", "")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Attest(sampleAttestation(t, ch, teeKey(t)))
	if err != nil {
		t.Fatal(err)
	}
	claims, _ := rcartest.Claims(tok)
	aliases, _ := claims["aliases"].([]any)
	if len(aliases) != 1 || aliases[0] != "spiffe://example.org/alias/svn1" {
		t.Fatalf("aliases %v: want only the entry whose selectors are a subset", aliases)
	}
	if err := ac.DeleteEntry(ctx, match.ID); err != nil {
		t.Fatal(err)
	}
	if err := ac.DeleteEntry(ctx, match.ID); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := ac.CreateJoinToken(ctx, broker.JoinTokenRequest{TTL: 10 * 24 * 3600}); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("join token beyond max ttl: %v", err)
	}
}

// TestSecretsSealedOutsideDatabase: the database file holds neither the
// seal key nor any private signing key in the clear, so a copy of the
// database alone yields no secret.
func TestSecretsSealedOutsideDatabase(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ks, err := h.st.Keys().List(context.Background(), "jwt-signing")
	if err != nil || len(ks) == 0 {
		t.Fatal(ks, err)
	}
	checkDatabaseHoldsNoSecret(t, h, ks[0].Sealed)
}
