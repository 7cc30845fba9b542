// Package registrytest runs real container registries for tests: in-process
// distribution/distribution v3 apps with token auth, a token server that
// signs distribution-format JWTs with a JWKS key, and two misbehaving proxies
// modelled on JFrog Artifactory and nvcr.io.
package registrytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Access is one entry of a distribution token's "access" claim.
type Access struct {
	Type    string   `json:"type"`
	Class   string   `json:"class,omitempty"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// Claims is the claim set of a distribution registry token.
type Claims struct {
	Issuer     string   `json:"iss"`
	Subject    string   `json:"sub"`
	Audience   string   `json:"aud"`
	Expiration int64    `json:"exp"`
	NotBefore  int64    `json:"nbf"`
	IssuedAt   int64    `json:"iat"`
	JWTID      string   `json:"jti"`
	Access     []Access `json:"access"`
}

// TokenServer issues registry tokens (GET with Basic credentials, and the
// OAuth2 POST password and refresh_token grants when POST is set).
type TokenServer struct {
	// Issuer and Service go into iss and aud; Service is also the default
	// when a request names none.
	Issuer, Service string
	// Username and Password are the only credentials accepted.
	Username, Password string
	// RefreshToken is accepted by the refresh_token grant when non-empty.
	RefreshToken string
	// ExpiresIn is the token lifetime (default 60 s).
	ExpiresIn time.Duration
	// POST enables the OAuth2 endpoint; without it POST answers 404.
	POST bool
	// RejectAll makes every request fail with 401, like a realm that needs
	// credentials the client does not have.
	RejectAll bool

	key   *ecdsa.PrivateKey
	keyID string

	mu      sync.Mutex
	expiry  map[string]time.Time
	fetches int
}

// NewTokenServer returns a token server with a fresh P-256 signing key.
func NewTokenServer(issuer, service, user, pass string) (*TokenServer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate signing key: %w", err)
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("generate key id: %w", err)
	}
	return &TokenServer{Issuer: issuer, Service: service, Username: user, Password: pass,
		key: k, keyID: hex.EncodeToString(id[:]), expiry: map[string]time.Time{}}, nil
}

// JWKS returns the public key set for the registry's auth.token.jwks file.
func (s *TokenServer) JWKS() ([]byte, error) {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &s.key.PublicKey, KeyID: s.keyID, Algorithm: string(jose.ES256), Use: "sig"}}}
	b, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("marshal jwks: %w", err)
	}
	return b, nil
}

// Fetches returns how many tokens the server has issued.
func (s *TokenServer) Fetches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetches
}

// Expired reports whether token was issued here and its precise lifetime
// (ExpiresIn, not rounded to JWT seconds) has passed.
func (s *TokenServer) Expired(token string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.expiry[token]
	return ok && !now.Before(exp)
}

func (s *TokenServer) lifetime() time.Duration {
	if s.ExpiresIn > 0 {
		return s.ExpiresIn
	}
	return 60 * time.Second
}

func eq(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// ServeHTTP implements the token endpoint.
func (s *TokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.RejectAll {
		w.Header().Set("WWW-Authenticate", `Basic realm="token"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
		return
	}
	var service string
	var scopes []string
	switch r.Method {
	case http.MethodGet:
		u, p, ok := r.BasicAuth()
		if !ok || !eq(u, s.Username) || !eq(p, s.Password) {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		service = r.URL.Query().Get("service")
		for _, sc := range r.URL.Query()["scope"] {
			scopes = append(scopes, strings.Fields(sc)...)
		}
	case http.MethodPost:
		if !s.POST {
			http.NotFound(w, r)
			return
		}
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		switch r.PostForm.Get("grant_type") {
		case "password":
			if !eq(r.PostForm.Get("username"), s.Username) || !eq(r.PostForm.Get("password"), s.Password) {
				http.Error(w, `{"error":"invalid_grant"}`, http.StatusUnauthorized)
				return
			}
		case "refresh_token":
			if s.RefreshToken == "" || !eq(r.PostForm.Get("refresh_token"), s.RefreshToken) {
				http.Error(w, `{"error":"invalid_grant"}`, http.StatusUnauthorized)
				return
			}
		default:
			http.Error(w, `{"error":"unsupported_grant_type"}`, http.StatusBadRequest)
			return
		}
		if r.PostForm.Get("client_id") == "" {
			http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
			return
		}
		service = r.PostForm.Get("service")
		scopes = strings.Fields(r.PostForm.Get("scope"))
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if service == "" {
		service = s.Service
	}
	if service != s.Service {
		http.Error(w, `{"errors":[{"code":"DENIED","message":"unknown service"}]}`, http.StatusBadRequest)
		return
	}
	access, err := grants(scopes)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	token, issued, err := s.sign(access)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token": token, "access_token": token,
		"expires_in": int(s.lifetime().Seconds()), "issued_at": issued.UTC().Format(time.RFC3339Nano),
	})
}

// grants turns requested scopes into an access claim, granting everything
// asked (the server's own policy is not what these tests are about).
func grants(scopes []string) ([]Access, error) {
	var out []Access
	for _, sc := range scopes {
		first, last := strings.Index(sc, ":"), strings.LastIndex(sc, ":")
		if first < 0 || first == last {
			return nil, fmt.Errorf("bad scope %q", sc)
		}
		typ, class := sc[:first], ""
		if i := strings.Index(typ, "("); i >= 0 && strings.HasSuffix(typ, ")") {
			typ, class = typ[:i], typ[i+1:len(typ)-1]
		}
		out = append(out, Access{Type: typ, Class: class, Name: sc[first+1 : last], Actions: strings.Split(sc[last+1:], ",")})
	}
	return out, nil
}

func (s *TokenServer) sign(access []Access) (string, time.Time, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", s.keyID))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("signer: %w", err)
	}
	now := time.Now()
	var jti [12]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", time.Time{}, fmt.Errorf("jti: %w", err)
	}
	exp := now.Add(s.lifetime())
	c := Claims{Issuer: s.Issuer, Subject: s.Username, Audience: s.Service,
		Expiration: exp.Unix() + 1, NotBefore: now.Unix() - 1, IssuedAt: now.Unix(),
		JWTID: hex.EncodeToString(jti[:]), Access: access}
	if c.Access == nil {
		c.Access = []Access{}
	}
	tok, err := jwt.Signed(signer).Claims(c).Serialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign: %w", err)
	}
	s.mu.Lock()
	s.expiry[tok] = exp
	s.fetches++
	s.mu.Unlock()
	return tok, now, nil
}

// ParseClaims decodes a token's claims without verifying it (for wire-side
// inspection in tests; the registry does the verifying).
func ParseClaims(token string) (Claims, error) {
	t, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return Claims{}, fmt.Errorf("parse token: %w", err)
	}
	var c Claims
	if err := t.UnsafeClaimsWithoutVerification(&c); err != nil {
		return Claims{}, fmt.Errorf("token claims: %w", err)
	}
	return c, nil
}
