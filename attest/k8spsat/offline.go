package k8spsat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	// jwksRefresh is how long fetched keys are used before a re-fetch.
	jwksRefresh = 5 * time.Minute
	// jwksMinRefetch bounds re-fetches triggered by unknown key IDs, so
	// made-up key IDs cannot turn callers into a flood on the issuer.
	jwksMinRefetch = 30 * time.Second
	// maxJWKSBytes bounds a fetched key set.
	maxJWKSBytes = 1 << 20
	// clockLeeway tolerates clock skew between broker and API server.
	clockLeeway = time.Minute
)

// tokenAlgorithms are the signature algorithms Kubernetes service-account
// signing keys use. "none" and HMAC are never accepted.
var tokenAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.PS256, jose.PS384, jose.PS512,
}

// psatClaims are a projected service-account token's claims, for example
// {"iss": "https://kubernetes.default.svc", "aud": ["spire-server"],
// "sub": "system:serviceaccount:spire:spire-agent", "exp": ..., "nbf": ...,
// "kubernetes.io": {"namespace": "spire",
// "pod": {"name": "spire-agent-5d84p", "uid": "56857f33-..."},
// "node": {"name": "node-1", "uid": "9c2f..."},
// "serviceaccount": {"name": "spire-agent", "uid": "ca29bd95-..."}}}.
// The node claim appears from Kubernetes 1.30 on.
type psatClaims struct {
	jwt.Claims
	K8s struct {
		Namespace      string     `json:"namespace"`
		Pod            *objectRef `json:"pod"`
		Node           *objectRef `json:"node"`
		ServiceAccount *objectRef `json:"serviceaccount"`
	} `json:"kubernetes.io"`
}

type objectRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// offlineVerifier checks tokens against the issuer's keys.
type offlineVerifier struct {
	issuer string
	keys   *jwksSource
}

// verify checks the token's signature, issuer, audience and validity
// period. Errors are the caller's fault unless they wrap errKeysUnavailable.
func (v *offlineVerifier) verify(ctx context.Context, token string, audience []string, now time.Time) (*psatClaims, error) {
	tok, err := jwt.ParseSigned(token, tokenAlgorithms)
	if err != nil {
		return nil, fmt.Errorf("parse token: %w", err)
	}
	if len(tok.Headers) != 1 {
		return nil, errors.New("token must have exactly one signature")
	}
	candidates, err := v.keys.lookup(ctx, tok.Headers[0].KeyID, now)
	if err != nil {
		return nil, err
	}
	var claims *psatClaims
	for _, k := range candidates {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		c := new(psatClaims)
		if err := tok.Claims(k.Public().Key, c); err == nil {
			claims = c
			break
		}
	}
	if claims == nil {
		return nil, errors.New("token signature does not verify with any of the issuer's keys")
	}
	if claims.Expiry == nil {
		return nil, errors.New("token has no exp claim")
	}
	err = claims.ValidateWithLeeway(jwt.Expected{Issuer: v.issuer, AnyAudience: audience, Time: now}, clockLeeway)
	if err != nil {
		return nil, fmt.Errorf("token claims: %w", err)
	}
	return claims, nil
}

// errKeysUnavailable marks a failure to obtain the issuer's keys: the
// server's problem, not the caller's.
var errKeysUnavailable = errors.New("issuer keys unavailable")

// jwksSource holds an issuer's keys, from a file or fetched from a URL.
type jwksSource struct {
	url        string // empty for a file
	client     *http.Client
	minRefetch time.Duration

	mu          sync.Mutex
	set         jose.JSONWebKeySet
	fetchedAt   time.Time
	attemptedAt time.Time
	lastErr     error
}

func staticJWKS(path string) (*jwksSource, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("jwks_file: %w", err)
	}
	set, err := parseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("jwks_file %s: %w", path, err)
	}
	return &jwksSource{set: set}, nil
}

func remoteJWKS(url string, client *http.Client) *jwksSource {
	return &jwksSource{url: url, client: client, minRefetch: jwksMinRefetch}
}

// parseJWKS decodes a key set and requires at least one usable public key.
func parseJWKS(data []byte) (jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return set, fmt.Errorf("decode JWKS: %w", err)
	}
	if len(set.Keys) == 0 {
		return set, errors.New("JWKS holds no keys")
	}
	for i, k := range set.Keys {
		if !k.Valid() {
			return set, fmt.Errorf("JWKS key %d (kid %q) is not a valid key", i, k.KeyID)
		}
	}
	return set, nil
}

// lookup returns the keys a token with key ID kid may be signed with: the
// one with that ID, or all keys when kid is empty.
func (s *jwksSource) lookup(ctx context.Context, kid string, now time.Time) ([]jose.JSONWebKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.url != "" {
		unknown := kid != "" && len(s.set.Key(kid)) == 0
		due := s.fetchedAt.IsZero() || now.Sub(s.fetchedAt) > jwksRefresh || unknown
		if due && (s.attemptedAt.IsZero() || now.Sub(s.attemptedAt) >= s.minRefetch) {
			s.attemptedAt = now
			set, err := s.fetch(ctx)
			if err == nil {
				s.set, s.fetchedAt, s.lastErr = set, now, nil
			} else {
				// A failed refresh keeps the keys already held.
				s.lastErr = err
			}
		}
		if s.fetchedAt.IsZero() {
			return nil, fmt.Errorf("%w: %v", errKeysUnavailable, s.lastErr)
		}
	}
	if kid == "" {
		return s.set.Keys, nil
	}
	keys := s.set.Key(kid)
	if len(keys) == 0 {
		return nil, fmt.Errorf("token names key %q, which the issuer does not publish", kid)
	}
	return keys, nil
}

func (s *jwksSource) fetch(ctx context.Context) (jose.JSONWebKeySet, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return jose.JSONWebKeySet{}, fmt.Errorf("JWKS request: %w", err)
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	resp, err := s.client.Do(req)
	if err != nil {
		return jose.JSONWebKeySet{}, fmt.Errorf("fetch JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return jose.JSONWebKeySet{}, fmt.Errorf("fetch JWKS %s: status %s", s.url, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return jose.JSONWebKeySet{}, fmt.Errorf("read JWKS: %w", err)
	}
	if len(data) > maxJWKSBytes {
		return jose.JSONWebKeySet{}, fmt.Errorf("JWKS from %s exceeds %d bytes", s.url, maxJWKSBytes)
	}
	return parseJWKS(data)
}
