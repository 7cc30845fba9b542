package broker

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// AdminRole is the "role" claim value the admin API requires.
const AdminRole = "admin"

// AdminClockSkew is the leeway allowed between the clocks of the admin
// token's signer and the broker: a token is refused once it has been
// expired for longer than this, and a token issued up to this far in the
// future is accepted.
const AdminClockSkew = 30 * time.Second

// DefaultAdminMaxTokenTTL is the longest admin token lifetime ("exp" -
// "iat") accepted when admin.max_token_ttl is not set.
const DefaultAdminMaxTokenTTL = time.Hour

// adminAlgs are the JWS algorithms admin tokens may use.
var adminAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.EdDSA, jose.RS256, jose.PS256}

// AdminVerifier checks admin API bearer tokens: signed by a configured key,
// unexpired, with role "admin". It is safe for concurrent use.
type AdminVerifier struct {
	audience string
	maxTTL   time.Duration
	now      func() time.Time
	// single is the key of public_key_file, used whatever the token's kid.
	single crypto.PublicKey
	// jwks is a fixed key set (jwks_file) or the cached one of jwksURL.
	mu       sync.Mutex
	jwks     *jose.JSONWebKeySet
	jwksURL  string
	fetched  time.Time
	client   *http.Client
	log      *slog.Logger
	cacheFor time.Duration
}

// NewAdminVerifier returns a verifier for cfg. client fetches jwks_url,
// which must be https, and follows only https redirects (nil means a
// client with a 10 s timeout); now is the clock (nil means time.Now).
func NewAdminVerifier(cfg AdminConfig, client *http.Client, now func() time.Time, log *slog.Logger) (*AdminVerifier, error) {
	if now == nil {
		now = time.Now
	}
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	client = httpsOnly(client)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	v := &AdminVerifier{audience: cfg.Audience, maxTTL: cfg.MaxTokenTTL.Duration, now: now, client: client, log: log, cacheFor: 5 * time.Minute}
	if v.maxTTL <= 0 {
		v.maxTTL = DefaultAdminMaxTokenTTL
	}
	switch {
	case cfg.PublicKeyFile != "":
		data, err := os.ReadFile(cfg.PublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("admin.public_key_file: %w (create it with `trustgate admin key create --config FILE`, or leave it empty to administer only through admin.socket_path)", err)
		}
		k, err := ParsePublicKeyPEM(data)
		if err != nil {
			return nil, fmt.Errorf("admin public key %s: %w", cfg.PublicKeyFile, err)
		}
		v.single = k
	case cfg.JWKSFile != "":
		data, err := os.ReadFile(cfg.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("admin.jwks_file: %w (create it with `trustgate admin key create --config FILE`)", err)
		}
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(data, &set); err != nil {
			return nil, fmt.Errorf("admin JWKS %s: %w", cfg.JWKSFile, err)
		}
		v.jwks = &set
	case cfg.JWKSURL != "":
		if u, err := url.Parse(cfg.JWKSURL); err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, errors.New("admin: jwks_url must be an https:// URL")
		}
		v.jwksURL = cfg.JWKSURL
	case cfg.SocketPath != "":
		// Only the admin socket admits administrators: every token is
		// refused (see errNoAdminKey).
	default:
		return nil, errors.New("admin: set one of public_key_file, jwks_file and jwks_url, or socket_path")
	}
	return v, nil
}

// httpsOnly returns a copy of c that refuses to follow a redirect to
// anything but https, so that admin keys never arrive in cleartext.
func httpsOnly(c *http.Client) *http.Client {
	out := *c
	next := c.CheckRedirect
	out.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.URL.Scheme != "https" {
			return fmt.Errorf("admin JWKS: refusing redirect to %s: not https", req.URL.Redacted())
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("admin JWKS: stopped after 10 redirects")
		}
		return nil
	}
	return &out
}

// ParsePublicKeyPEM parses a PEM "PUBLIC KEY" block (ECDSA, Ed25519 or RSA).
func ParsePublicKeyPEM(data []byte) (crypto.PublicKey, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PUBLIC KEY" {
		return nil, errors.New("want a PEM \"PUBLIC KEY\" block")
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	switch k.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey, *rsa.PublicKey:
		return k, nil
	default:
		return nil, fmt.Errorf("unsupported public key type %T", k)
	}
}

// adminClaims are the claims an admin token must carry.
type adminClaims struct {
	Role string `json:"role"`
}

// errAdminRole is a valid token without the admin role (403).
var errAdminRole = errors.New("token does not carry role \"admin\"")

// errNoAdminKey refuses tokens on a broker that trusts no admin key.
var errNoAdminKey = errors.New("this broker trusts no admin token key: administer it through its admin socket, or configure admin.public_key_file (`trustgate admin key create`)")

// Verify checks an admin bearer token and returns its subject.
func (v *AdminVerifier) Verify(ctx context.Context, raw string) (string, error) {
	tok, err := jwt.ParseSigned(raw, adminAlgs)
	if err != nil {
		return "", fmt.Errorf("parse token: %w", err)
	}
	if len(tok.Headers) != 1 {
		return "", errors.New("want exactly one signature")
	}
	key, err := v.key(ctx, tok.Headers[0].KeyID)
	if err != nil {
		return "", err
	}
	var std jwt.Claims
	var ac adminClaims
	if err := tok.Claims(key, &std, &ac); err != nil {
		return "", fmt.Errorf("signature: %w", err)
	}
	if std.Expiry == nil {
		return "", errors.New("token has no exp")
	}
	if std.IssuedAt == nil {
		return "", errors.New("token has no iat: its lifetime cannot be checked")
	}
	now := v.now()
	want := jwt.Expected{Time: now}
	if v.audience != "" {
		want.AnyAudience = jwt.Audience{v.audience}
	}
	if err := std.ValidateWithLeeway(want, AdminClockSkew); err != nil {
		return "", fmt.Errorf("claims: %w", err)
	}
	// The lifetime is capped as written, and as measured from now, so
	// that an iat set in the future cannot stretch it.
	exp := std.Expiry.Time()
	if life := exp.Sub(std.IssuedAt.Time()); life > v.maxTTL {
		return "", fmt.Errorf("token lifetime %v exceeds admin.max_token_ttl (%v): mint a shorter one with `trustgate admin token --ttl`", life, v.maxTTL)
	}
	if exp.Sub(now) > v.maxTTL+AdminClockSkew {
		return "", fmt.Errorf("token expires in %v, beyond admin.max_token_ttl (%v)", exp.Sub(now).Round(time.Second), v.maxTTL)
	}
	if ac.Role != AdminRole {
		return std.Subject, errAdminRole
	}
	return std.Subject, nil
}

func (v *AdminVerifier) key(ctx context.Context, kid string) (any, error) {
	if v.single != nil {
		return v.single, nil
	}
	if v.jwks == nil && v.jwksURL == "" {
		return nil, errNoAdminKey
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.jwksURL != "" && (v.jwks == nil || v.now().Sub(v.fetched) > v.cacheFor) {
		// Refresh no more often than every few seconds, so that tokens
		// with unknown kids cannot turn into a fetch per request.
		if v.now().Sub(v.fetched) > 5*time.Second {
			if err := v.fetch(ctx); err != nil {
				v.log.Warn("admin JWKS fetch", "url", v.jwksURL, "err", err)
			}
		}
	}
	if v.jwks == nil {
		return nil, errors.New("admin JWKS unavailable")
	}
	keys := v.jwks.Key(kid)
	if len(keys) == 0 {
		return nil, fmt.Errorf("unknown key id %q", kid)
	}
	return keys[0].Key, nil
}

func (v *AdminVerifier) fetch(ctx context.Context) error {
	v.fetched = v.now()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.jwksURL, nil)
	if err != nil {
		return err
	}
	resp, err := v.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return fmt.Errorf("decode JWKS: %w", err)
	}
	v.jwks = &set
	return nil
}

// admin wraps an admin handler with bearer-token authentication. Requests
// that came through the admin socket (AdminSocketHandler) need no token.
func (s *Server) admin(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if peer, ok := localAdmin(r.Context()); ok {
			s.log.Info("admin request", "method", r.Method, "path", r.URL.Path, "sub", "local", "peer", peer)
			h(w, r)
			return
		}
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || raw == "" {
			s.log.Info("admin request refused", "method", r.Method, "path", r.URL.Path, "peer", r.RemoteAddr, "reason", "no bearer token")
			w.Header().Set("WWW-Authenticate", `Bearer realm="trustgate-admin"`)
			writeProblem(w, http.StatusUnauthorized, ProblemAdminAccess, "admin access denied for endpoint "+r.URL.Path+": no bearer token")
			return
		}
		sub, err := s.opts.Admin.Verify(r.Context(), strings.TrimSpace(raw))
		if err != nil {
			s.log.Warn("admin request refused", "method", r.Method, "path", r.URL.Path, "peer", r.RemoteAddr, "reason", err.Error())
		}
		if errors.Is(err, errAdminRole) {
			writeProblem(w, http.StatusForbidden, ProblemAdminAccess, "admin access denied for endpoint "+r.URL.Path+": "+err.Error())
			return
		}
		if err != nil {
			s.log.Warn("admin token refused", "path", r.URL.Path, "peer", r.RemoteAddr, "reason", err)
			w.Header().Set("WWW-Authenticate", `Bearer realm="trustgate-admin", error="invalid_token"`)
			writeProblem(w, http.StatusUnauthorized, ProblemAdminAccess, "admin access denied for endpoint "+r.URL.Path+": "+err.Error())
			return
		}
		s.log.Info("admin request", "method", r.Method, "path", r.URL.Path, "sub", sub, "peer", r.RemoteAddr)
		h(w, r)
	})
}
