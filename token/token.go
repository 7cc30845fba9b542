// Package token issues and verifies the JWTs the broker hands out, and
// keeps the keys that sign them.
//
// An Authority holds ES256 signing keys in the store (kind "jwt-signing"),
// their private halves sealed under the seal key, so that replicas sharing a
// database sign with, and publish, the same keys. Keys rotate with overlap:
//
//   - a key signs from its NotBefore to its NotAfter (Options.KeyLifetime);
//   - its successor is stored, and so published in the JWKS, Prepublish
//     before the current key's NotAfter, and signs from that NotAfter on;
//   - a retired key stays published until MaxTokenTTL after its NotAfter,
//     when the last token it signed has expired, and is then deleted.
//
// Sign takes any JSON claims, so the attestation token (Attestation) and
// registry-style scoped tokens share one key set and one JWKS. Key IDs are
// libtrust fingerprints (KeyID), and a long-lived token CA (kind KindCA)
// certifies every key, so that SignWithChain's tokens carry an x5c chain
// that registries trusting RootCertificates accept across rotations.
package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/trustgate/trustgate/internal/periodic"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
)

// KindSigning is the store.Key kind of token signing keys.
const KindSigning = "jwt-signing"

// Algorithm is the JWS algorithm of every token this package signs.
const Algorithm = jose.ES256

// Options configure an Authority.
type Options struct {
	// Keys is where signing keys persist.
	Keys store.Keys
	// Sealer seals private keys before they reach the store.
	Sealer *seal.Sealer
	// KeyLifetime is how long one key signs. Default 24h.
	KeyLifetime time.Duration
	// Prepublish is how long a key is published before it signs. Default
	// KeyLifetime/4. Relying parties that cache the JWKS for less than this
	// never see a token signed by a key they do not know.
	Prepublish time.Duration
	// MaxTokenTTL is the longest lifetime of any token signed, so the
	// longest a retired key must stay published. Default 1h.
	MaxTokenTTL time.Duration
	// CALifetime is the token CA's lifetime (default ten years). Its
	// successor is published when a fifth of it is left.
	CALifetime time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Log receives rotation events; default discards.
	Log *slog.Logger
	// Locks, when set, serialises key creation across every server
	// sharing the store (Locks.Do), so that replicas never create two
	// different current keys or CAs.
	Locks store.Locks
	// Changes, when set, makes Run reload the keys as soon as another
	// replica stores or deletes one.
	Changes store.Changes
	// Propagation is how long a newly stored key waits before it signs, so
	// that every replica publishes it first: a key created with nothing
	// current to overlap (first start, or after a stall) signs only
	// Propagation after it was stored. Zero (one process) signs at once.
	// Successors are published Prepublish ahead, which must be longer.
	Propagation time.Duration
}

// signingKey is one loaded key.
type signingKey struct {
	id                  string
	notBefore, notAfter time.Time
	signer              jose.Signer
	// chained signs with the x5c header: the key's certificate.
	chained jose.Signer
	public  jose.JSONWebKey
}

// Authority signs tokens with the current key and publishes every key that a
// valid token may carry. It is safe for concurrent use.
type Authority struct {
	opts Options

	rotateMu sync.Mutex // serialises Rotate
	mu       sync.RWMutex
	keys     []signingKey // by NotBefore, oldest first
	jwks     []byte
	pub      map[string]jose.JSONWebKey
	roots    []byte                       // live CA certificates, PEM
	leaves   map[string]*x509.Certificate // by key ID; used under rotateMu
}

// Open loads the signing keys from the store, creating the first one or a
// due successor, and returns an Authority ready to sign.
func Open(ctx context.Context, opts Options) (*Authority, error) {
	if opts.Keys == nil || opts.Sealer == nil {
		return nil, errors.New("token: Options.Keys and Options.Sealer are required")
	}
	if opts.KeyLifetime <= 0 {
		opts.KeyLifetime = 24 * time.Hour
	}
	if opts.Prepublish <= 0 {
		opts.Prepublish = opts.KeyLifetime / 4
	}
	if opts.Prepublish >= opts.KeyLifetime {
		return nil, fmt.Errorf("token: prepublish %v must be shorter than the key lifetime %v", opts.Prepublish, opts.KeyLifetime)
	}
	if opts.Propagation < 0 || (opts.Propagation > 0 && opts.Prepublish <= opts.Propagation) {
		return nil, fmt.Errorf("token: prepublish %v must exceed the propagation delay %v", opts.Prepublish, opts.Propagation)
	}
	if opts.MaxTokenTTL <= 0 {
		opts.MaxTokenTTL = time.Hour
	}
	if opts.CALifetime <= 0 {
		opts.CALifetime = 10 * 365 * 24 * time.Hour
	}
	if opts.CALifetime/5 <= opts.KeyLifetime+opts.MaxTokenTTL {
		return nil, fmt.Errorf("token: CA lifetime %v must exceed five times the key lifetime plus the longest token lifetime", opts.CALifetime)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	a := &Authority{opts: opts, leaves: map[string]*x509.Certificate{}}
	if err := a.Rotate(ctx); err != nil {
		return nil, err
	}
	// A first key signs Propagation after it was stored: wait for it, so
	// that an Authority is ready to sign when Open returns.
	if wait := a.untilSigning(); wait > 0 {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("token: waiting for the first key to propagate: %w", context.Cause(ctx))
		case <-time.After(wait):
		}
	}
	return a, nil
}

// untilSigning is how long until a loaded key signs: 0 when one does now,
// or when none ever will.
func (a *Authority) untilSigning() time.Duration {
	now := a.opts.Now()
	a.mu.RLock()
	defer a.mu.RUnlock()
	var wait time.Duration
	for _, k := range a.keys {
		switch {
		case !now.Before(k.notBefore) && now.Before(k.notAfter):
			return 0
		case now.Before(k.notBefore) && (wait == 0 || k.notBefore.Sub(now) < wait):
			wait = k.notBefore.Sub(now)
		}
	}
	return wait
}

// RotateInterval is how often Run calls Rotate: often enough that a
// successor is always published well before it signs.
func (a *Authority) RotateInterval() time.Duration {
	return max(a.opts.Prepublish/8, time.Second)
}

// Run calls Rotate every RotateInterval until ctx ends. A failed rotation is
// logged and retried at the next tick; the current key keeps signing.
func (a *Authority) Run(ctx context.Context) {
	var wake <-chan struct{}
	if a.opts.Changes != nil {
		var cancel func()
		wake, cancel = store.Wake(a.opts.Changes, store.TopicKeys)
		defer cancel()
	}
	periodic.RunWake(ctx, a.RotateInterval(), 30*time.Second, a.opts.Log, "token key rotation", wake, a.Rotate)
}

// lockName is the Locks name under which keys are created.
const lockName = "token-keys"

// Rotate reloads the keys from the store (so replicas see each other's
// keys), deletes keys whose last token has expired, and creates the first
// key or the current key's successor when due.
func (a *Authority) Rotate(ctx context.Context) error {
	a.rotateMu.Lock()
	defer a.rotateMu.Unlock()
	if a.opts.Locks == nil {
		return a.rotate(ctx)
	}
	return a.opts.Locks.Do(ctx, lockName, a.rotate)
}

// rotate is Rotate under the locks.
func (a *Authority) rotate(ctx context.Context) error {
	now := a.opts.Now()
	cas, err := a.ensureCA(ctx, now)
	if err != nil {
		return err
	}
	stored, err := a.opts.Keys.List(ctx, KindSigning)
	if err != nil {
		return fmt.Errorf("token: load keys: %w", err)
	}
	var live []store.Key
	for _, k := range stored {
		if !now.Before(k.NotAfter.Add(a.opts.MaxTokenTTL)) {
			if err := a.opts.Keys.Delete(ctx, k.Kind, k.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("token: delete retired key %s: %w", k.ID, err)
			}
			a.opts.Log.Info("token signing key unpublished", "kid", k.ID)
			continue
		}
		live = append(live, k)
	}
	var cur *store.Key
	pending := false
	for i := range live {
		if !now.Before(live[i].NotBefore) && now.Before(live[i].NotAfter) {
			cur = &live[i]
		}
		pending = pending || now.Before(live[i].NotBefore)
	}
	switch {
	case cur == nil && pending:
		// A replica stored the next key, which signs once published.
	case cur == nil:
		// First start, or rotation stalled past the current key's end:
		// there is nothing to overlap with, so the new key signs as soon
		// as every replica publishes it.
		k, err := a.create(ctx, now, now.Add(a.opts.Propagation))
		if err != nil {
			return err
		}
		live = append(live, k)
	case !now.Before(cur.NotAfter.Add(-a.opts.Prepublish)):
		hasSuccessor := false
		for _, k := range live {
			if k.NotBefore.After(cur.NotBefore) {
				hasSuccessor = true
			}
		}
		if !hasSuccessor {
			k, err := a.create(ctx, now, cur.NotAfter)
			if err != nil {
				return err
			}
			live = append(live, k)
		}
	}
	return a.load(cas, live)
}

func (a *Authority) create(ctx context.Context, now, notBefore time.Time) (store.Key, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return store.Key{}, fmt.Errorf("token: generate key: %w", err)
	}
	// The key ID is the key's libtrust fingerprint, so that distribution
	// v2.x also finds the key by "kid" among its rootcertbundle's keys.
	id, err := KeyID(&priv.PublicKey)
	if err != nil {
		return store.Key{}, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return store.Key{}, fmt.Errorf("token: encode key: %w", err)
	}
	sealed, err := a.opts.Sealer.Seal(der, aad(id))
	if err != nil {
		return store.Key{}, fmt.Errorf("token: seal key: %w", err)
	}
	pub, err := jose.JSONWebKey{Key: &priv.PublicKey, KeyID: id, Algorithm: string(Algorithm), Use: "sig"}.MarshalJSON()
	if err != nil {
		return store.Key{}, fmt.Errorf("token: encode public key: %w", err)
	}
	k := store.Key{Kind: KindSigning, ID: id, Sealed: sealed, Public: pub,
		NotBefore: notBefore, NotAfter: notBefore.Add(a.opts.KeyLifetime), CreatedAt: now}
	if err := a.opts.Keys.Create(ctx, k); err != nil {
		return store.Key{}, fmt.Errorf("token: store key: %w", err)
	}
	a.opts.Log.Info("token signing key published", "kid", id, "signs_from", k.NotBefore, "signs_until", k.NotAfter)
	return k, nil
}

func aad(id string) []byte { return []byte(KindSigning + "/" + id) }

// load replaces the in-memory key set and certifies each key.
func (a *Authority) load(storedCAs, stored []store.Key) error {
	cas, err := a.loadCAs(storedCAs)
	if err != nil {
		return err
	}
	leaves := make(map[string]*x509.Certificate, len(stored))
	keys := make([]signingKey, 0, len(stored))
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	pub := make(map[string]jose.JSONWebKey, len(stored))
	for _, k := range stored {
		der, err := a.opts.Sealer.Open(k.Sealed, aad(k.ID))
		if err != nil {
			return fmt.Errorf("token: key %s: %w", k.ID, err)
		}
		priv, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return fmt.Errorf("token: key %s: %w", k.ID, err)
		}
		ec, ok := priv.(*ecdsa.PrivateKey)
		if !ok {
			return fmt.Errorf("token: key %s is a %T, want ECDSA P-256", k.ID, priv)
		}
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: Algorithm, Key: jose.JSONWebKey{Key: ec, KeyID: k.ID}},
			(&jose.SignerOptions{}).WithType("JWT"))
		if err != nil {
			return fmt.Errorf("token: key %s: %w", k.ID, err)
		}
		cert, err := a.leafCert(cas, k, &ec.PublicKey)
		if err != nil {
			return err
		}
		leaves[k.ID] = cert
		chained, err := jose.NewSigner(jose.SigningKey{Algorithm: Algorithm, Key: jose.JSONWebKey{Key: ec, KeyID: k.ID}},
			(&jose.SignerOptions{}).WithType("JWT").WithHeader("x5c", []string{base64.StdEncoding.EncodeToString(cert.Raw)}))
		if err != nil {
			return fmt.Errorf("token: key %s: %w", k.ID, err)
		}
		jwk := jose.JSONWebKey{Key: &ec.PublicKey, KeyID: k.ID, Algorithm: string(Algorithm), Use: "sig"}
		keys = append(keys, signingKey{id: k.ID, notBefore: k.NotBefore, notAfter: k.NotAfter, signer: signer, chained: chained, public: jwk})
		set.Keys = append(set.Keys, jwk)
		pub[k.ID] = jwk
	}
	doc, err := json.Marshal(set)
	if err != nil {
		return fmt.Errorf("token: encode JWKS: %w", err)
	}
	a.leaves = leaves
	a.mu.Lock()
	a.keys, a.jwks, a.pub, a.roots = keys, doc, pub, encodeRoots(cas)
	a.mu.Unlock()
	return nil
}

// ErrNoSigningKey means no loaded key is inside its signing window, which
// happens only when rotation has stalled.
var ErrNoSigningKey = errors.New("token: no signing key is current (is key rotation running?)")

// Sign returns a compact JWS over claims (any value that marshals to a JSON
// object) signed with the current key, whose header names the key by "kid".
func (a *Authority) Sign(claims any) (string, error) {
	return a.sign(claims, false)
}

// SignWithChain is Sign with an "x5c" header too: the signing key's
// certificate, issued by a CA of RootCertificates. Distribution v2.x and
// Harbor trust such a token through auth.token.rootcertbundle, across key
// rotations. A registry that has only a JWKS (distribution v3 without
// rootcertbundle) refuses it: it checks x5c first, against no roots.
func (a *Authority) SignWithChain(claims any) (string, error) {
	return a.sign(claims, true)
}

func (a *Authority) sign(claims any, chain bool) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("token: encode claims: %w", err)
	}
	now := a.opts.Now()
	a.mu.RLock()
	var signer jose.Signer
	for i := len(a.keys) - 1; i >= 0; i-- {
		if k := a.keys[i]; !now.Before(k.notBefore) && now.Before(k.notAfter) {
			signer = k.signer
			if chain {
				signer = k.chained
			}
			break
		}
	}
	a.mu.RUnlock()
	if signer == nil {
		return "", ErrNoSigningKey
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("token: sign: %w", err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("token: serialize: %w", err)
	}
	return s, nil
}

// JWKS returns the published key set as JSON.
func (a *Authority) JWKS() []byte {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.jwks
}

// ServeHTTP serves the JWKS (GET /.well-known/jwks.json).
func (a *Authority) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/jwk-set+json")
	// Shorter than Prepublish, so caches learn a key before it signs.
	w.Header().Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(a.opts.Prepublish.Seconds()/2)))
	_, _ = w.Write(a.JWKS())
}

// Verify checks a token signed by this Authority: its signature under a
// published key, its issuer (when issuer is not empty) and its time claims.
// It decodes the registered claims into the returned jwt.Claims and every
// claim into each of out.
func (a *Authority) Verify(raw, issuer string, out ...any) (jwt.Claims, error) {
	a.mu.RLock()
	pub := a.pub
	a.mu.RUnlock()
	return VerifyWith(raw, func(kid string) (jose.JSONWebKey, bool) {
		k, ok := pub[kid]
		return k, ok
	}, jwt.Expected{Issuer: issuer, Time: a.opts.Now()}, out...)
}

// VerifyWith verifies a compact JWS signed with ES256 under the key that
// lookup returns for its kid, then validates its registered claims against
// want. A token without exp is rejected.
func VerifyWith(raw string, lookup func(kid string) (jose.JSONWebKey, bool), want jwt.Expected, out ...any) (jwt.Claims, error) {
	var std jwt.Claims
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{Algorithm})
	if err != nil {
		return std, fmt.Errorf("token: parse: %w", err)
	}
	if len(tok.Headers) != 1 {
		return std, errors.New("token: want exactly one signature")
	}
	key, ok := lookup(tok.Headers[0].KeyID)
	if !ok {
		return std, fmt.Errorf("%w %q", ErrUnknownKey, tok.Headers[0].KeyID)
	}
	if err := tok.Claims(key.Key, append([]any{&std}, out...)...); err != nil {
		return std, fmt.Errorf("token: signature: %w", err)
	}
	if std.Expiry == nil {
		return std, errors.New("token: no exp claim")
	}
	if err := std.ValidateWithLeeway(want, 0); err != nil {
		return std, fmt.Errorf("token: claims: %w", err)
	}
	return std, nil
}

// MaxTokenTTL is the longest lifetime a token signed by this Authority may
// have: a retired key stays published this long after it stops signing.
func (a *Authority) MaxTokenTTL() time.Duration { return a.opts.MaxTokenTTL }
