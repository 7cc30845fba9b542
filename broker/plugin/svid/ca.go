package svid

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strconv"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/trustgate/trustgate/store"
)

// Kinds of store.Key this plugin keeps. The private halves are sealed; the
// public halves (certificates, SPKI) are in the clear.
const (
	KindRoot         = "svid-root"
	KindIntermediate = "svid-intermediate"
	KindJWT          = "svid-jwt"
)

// backdate is how far before "now" a new key's window and certificate
// start, to absorb clock skew between replicas and relying parties.
const backdate = time.Minute

// series is one rotating kind of key. A key signs during its window
// [NotBefore, NotAfter) and stays stored (and, for roots and JWT keys,
// published) for tail after it, until the last credential it signed has
// expired. Keys are numbered; the successor of key n is n+1, so replicas
// that race to create it collide on the store's (kind, id) key and the
// loser reads the winner's.
type series struct {
	kind   string
	window time.Duration
	tail   time.Duration
	// create makes key seq for the window [notBefore, notAfter).
	create func(seq uint64, notBefore, notAfter, now time.Time) (store.Key, error)
}

func seqID(seq uint64) string { return fmt.Sprintf("%012d", seq) }

func parseSeq(k store.Key) (uint64, error) {
	n, err := strconv.ParseUint(k.ID, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s key id %q is not a sequence number", k.Kind, k.ID)
	}
	return n, nil
}

// current returns the index of the newest key in keys whose window holds
// now, or -1.
func current(keys []store.Key, now time.Time) int {
	cur := -1
	for i, k := range keys {
		if !now.Before(k.NotBefore) && now.Before(k.NotAfter) && (cur < 0 || k.NotBefore.After(keys[cur].NotBefore)) {
			cur = i
		}
	}
	return cur
}

// rotate deletes the series' spent keys, creates the first key or the
// current key's successor when due, and returns the live keys.
func (p *Plugin) rotate(ctx context.Context, s series, now time.Time) ([]store.Key, error) {
	stored, err := p.store.Keys().List(ctx, s.kind)
	if err != nil {
		return nil, fmt.Errorf("list %s keys: %w", s.kind, err)
	}
	var live []store.Key
	var last uint64
	for _, k := range stored {
		seq, err := parseSeq(k)
		if err != nil {
			return nil, err
		}
		if !now.Before(k.NotAfter.Add(s.tail)) {
			if err := p.store.Keys().Delete(ctx, k.Kind, k.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, fmt.Errorf("delete spent %s key %s: %w", s.kind, k.ID, err)
			}
			p.log.Info("svid key retired", "kind", s.kind, "id", k.ID)
			continue
		}
		last = max(last, seq)
		live = append(live, k)
	}
	var seq uint64
	var notBefore time.Time
	switch cur := current(live, now); {
	case cur < 0:
		// First start, or rotation stalled past the current key's end:
		// nothing to overlap with, so the new key signs at once. Its number
		// counts terms since the epoch, so that replicas starting together
		// pick the same one, and a key made after a stall never reuses the
		// number of a spent one.
		seq, notBefore = max(last, uint64(now.Unix()/int64(s.window/time.Second)))+1, now.Add(-backdate)
	case now.Before(live[cur].NotBefore.Add(s.window / 2)):
		return live, nil
	default:
		cs, _ := parseSeq(live[cur])
		if last > cs {
			return live, nil // the successor exists
		}
		seq, notBefore = cs+1, live[cur].NotAfter
	}
	k, err := s.create(seq, notBefore, notBefore.Add(s.window), now)
	if err != nil {
		return nil, fmt.Errorf("create %s key %d: %w", s.kind, seq, err)
	}
	if err := p.store.Keys().Create(ctx, k); err != nil {
		if !errors.Is(err, store.ErrConflict) {
			return nil, fmt.Errorf("store %s key %s: %w", s.kind, k.ID, err)
		}
		// Another replica made this key first: use theirs.
		stored, err := p.store.Keys().List(ctx, s.kind)
		if err != nil {
			return nil, fmt.Errorf("list %s keys: %w", s.kind, err)
		}
		live = live[:0]
		for _, k := range stored {
			if now.Before(k.NotAfter.Add(s.tail)) {
				live = append(live, k)
			}
		}
		return live, nil
	}
	p.log.Info("svid key created", "kind", s.kind, "id", k.ID, "signs_from", k.NotBefore, "signs_until", k.NotAfter)
	return append(live, k), nil
}

// authority is a loaded CA: a root or an intermediate.
type authority struct {
	id                  string
	notBefore, notAfter time.Time // signing window
	cert                *x509.Certificate
	key                 crypto.Signer
}

// jwtKey is a loaded JWT-SVID signing key.
type jwtKey struct {
	kid                 string
	notBefore, notAfter time.Time
	public              crypto.PublicKey
	signer              jose.Signer
}

// state is everything issuance needs, replaced whole on every rotation.
type state struct {
	roots, intermediates []authority
	jwt                  []jwtKey
	bundle               []byte
	sequence             uint64
}

// currentIntermediate returns the intermediate CA that signs at now, from
// the CA state as loaded for now.
func (p *Plugin) currentIntermediate(ctx context.Context, now time.Time) (authority, error) {
	st, err := p.load(ctx, now)
	if err != nil {
		return authority{}, err
	}
	ca, ok := signingAuthority(st.intermediates, now)
	if !ok {
		return authority{}, errors.New("svid: no current intermediate CA (is rotation running?)")
	}
	return ca, nil
}

// signingAuthority returns the newest authority whose window holds now.
func signingAuthority(list []authority, now time.Time) (authority, bool) {
	for i := len(list) - 1; i >= 0; i-- {
		if a := list[i]; !now.Before(a.notBefore) && now.Before(a.notAfter) {
			return a, true
		}
	}
	return authority{}, false
}

// signingJWTKey returns the newest JWT key whose window holds now.
func signingJWTKey(list []jwtKey, now time.Time) (jwtKey, bool) {
	for i := len(list) - 1; i >= 0; i-- {
		if k := list[i]; !now.Before(k.notBefore) && now.Before(k.notAfter) {
			return k, true
		}
	}
	return jwtKey{}, false
}

func keyAAD(kind, id string) []byte { return []byte("trustgate/svid/" + kind + "/" + id) }

func (p *Plugin) sealKey(kind string, seq uint64, priv *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	sealed, err := p.sealer.Seal(der, keyAAD(kind, seqID(seq)))
	if err != nil {
		return nil, fmt.Errorf("seal key: %w", err)
	}
	return sealed, nil
}

func (p *Plugin) openKey(k store.Key) (*ecdsa.PrivateKey, error) {
	der, err := p.sealer.Open(k.Sealed, keyAAD(k.Kind, k.ID))
	if err != nil {
		return nil, fmt.Errorf("%s key %s: %w", k.Kind, k.ID, err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s key %s: %w", k.Kind, k.ID, err)
	}
	ec, ok := priv.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s key %s is a %T, want ECDSA", k.Kind, k.ID, priv)
	}
	return ec, nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// caTemplate is the template of a root or intermediate of the trust domain.
func (p *Plugin) caTemplate(cn string, notAfter, now time.Time) (*x509.Certificate, error) {
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"trustgate"}, CommonName: cn},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		URIs:                  []*url.URL{p.td.ID().URL()},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, nil
}

// roots is the series of self-signed roots. A root's certificate outlives
// its window by one intermediate term and the longest SVID, so that every
// intermediate it signs, and every SVID under those, expires first.
func (p *Plugin) roots() series {
	tail := p.cfg.IntermediateTTL.Duration + p.cfg.MaxX509SVIDTTL.Duration
	return series{kind: KindRoot, window: p.cfg.RootTTL.Duration, tail: tail,
		create: func(seq uint64, notBefore, notAfter, now time.Time) (store.Key, error) {
			priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return store.Key{}, fmt.Errorf("generate key: %w", err)
			}
			tmpl, err := p.caTemplate(fmt.Sprintf("trustgate SVID root %d", seq), notAfter.Add(tail), now)
			if err != nil {
				return store.Key{}, err
			}
			tmpl.MaxPathLen = 1
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
			if err != nil {
				return store.Key{}, fmt.Errorf("self-sign root: %w", err)
			}
			sealed, err := p.sealKey(KindRoot, seq, priv)
			if err != nil {
				return store.Key{}, err
			}
			return store.Key{Kind: KindRoot, ID: seqID(seq), Sealed: sealed, Public: der,
				NotBefore: notBefore, NotAfter: notAfter, CreatedAt: now}, nil
		}}
}

// intermediates is the series of signing CAs, each signed by the root whose
// window holds the intermediate's start. An intermediate's certificate
// outlives its window by the longest SVID.
func (p *Plugin) intermediates(roots []authority) series {
	tail := p.cfg.MaxX509SVIDTTL.Duration
	return series{kind: KindIntermediate, window: p.cfg.IntermediateTTL.Duration, tail: tail,
		create: func(seq uint64, notBefore, notAfter, now time.Time) (store.Key, error) {
			root, ok := signingAuthority(roots, notBefore)
			if !ok {
				if root, ok = signingAuthority(roots, now); !ok {
					return store.Key{}, errors.New("no current root CA")
				}
			}
			priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return store.Key{}, fmt.Errorf("generate key: %w", err)
			}
			end := notAfter.Add(tail)
			if end.After(root.cert.NotAfter) {
				end = root.cert.NotAfter
			}
			tmpl, err := p.caTemplate(fmt.Sprintf("trustgate SVID intermediate %d", seq), end, now)
			if err != nil {
				return store.Key{}, err
			}
			tmpl.MaxPathLen, tmpl.MaxPathLenZero = 0, true
			// Everything below may only name this trust domain.
			tmpl.PermittedURIDomains = []string{p.td.Name()}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, root.cert, &priv.PublicKey, root.key)
			if err != nil {
				return store.Key{}, fmt.Errorf("sign intermediate with root %s: %w", root.id, err)
			}
			sealed, err := p.sealKey(KindIntermediate, seq, priv)
			if err != nil {
				return store.Key{}, err
			}
			return store.Key{Kind: KindIntermediate, ID: seqID(seq), Sealed: sealed, Public: der,
				NotBefore: notBefore, NotAfter: notAfter, CreatedAt: now}, nil
		}}
}

// jwtKeys is the series of JWT-SVID signing keys. A key stays in the bundle
// until the last token it signed has expired.
func (p *Plugin) jwtKeys() series {
	return series{kind: KindJWT, window: p.cfg.JWTKeyTTL.Duration, tail: p.cfg.MaxJWTSVIDTTL.Duration,
		create: func(seq uint64, notBefore, notAfter, now time.Time) (store.Key, error) {
			priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return store.Key{}, fmt.Errorf("generate key: %w", err)
			}
			spki, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
			if err != nil {
				return store.Key{}, fmt.Errorf("encode public key: %w", err)
			}
			sealed, err := p.sealKey(KindJWT, seq, priv)
			if err != nil {
				return store.Key{}, err
			}
			return store.Key{Kind: KindJWT, ID: seqID(seq), Sealed: sealed, Public: spki,
				NotBefore: notBefore, NotAfter: notAfter, CreatedAt: now}, nil
		}}
}

// jwtKeyID is the kid of a JWT key: a digest of its public key, so every
// replica names a key alike.
func jwtKeyID(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:16])
}

// loadAuthorities opens stored CA keys and checks that each private key
// belongs to its certificate.
func (p *Plugin) loadAuthorities(keys []store.Key) ([]authority, error) {
	out := make([]authority, 0, len(keys))
	for _, k := range keys {
		cert, err := x509.ParseCertificate(k.Public)
		if err != nil {
			return nil, fmt.Errorf("%s key %s: certificate: %w", k.Kind, k.ID, err)
		}
		priv, err := p.openKey(k)
		if err != nil {
			return nil, err
		}
		if !priv.PublicKey.Equal(cert.PublicKey) {
			return nil, fmt.Errorf("%s key %s: private key does not match its certificate", k.Kind, k.ID)
		}
		out = append(out, authority{id: k.ID, notBefore: k.NotBefore, notAfter: k.NotAfter, cert: cert, key: priv})
	}
	return out, nil
}

func (p *Plugin) loadJWTKeys(keys []store.Key) ([]jwtKey, error) {
	out := make([]jwtKey, 0, len(keys))
	for _, k := range keys {
		priv, err := p.openKey(k)
		if err != nil {
			return nil, err
		}
		spki, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("%s key %s: %w", k.Kind, k.ID, err)
		}
		kid := jwtKeyID(spki)
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: priv, KeyID: kid}},
			(&jose.SignerOptions{}).WithType("JWT"))
		if err != nil {
			return nil, fmt.Errorf("%s key %s: %w", k.Kind, k.ID, err)
		}
		out = append(out, jwtKey{kid: kid, notBefore: k.NotBefore, notAfter: k.NotAfter, public: &priv.PublicKey, signer: signer})
	}
	return out, nil
}

// seqSpan is the sum of the lowest and highest sequence numbers in keys:
// it grows when a key is added or the oldest is retired.
func seqSpan(keys []store.Key) uint64 {
	var lo, hi uint64
	for i, k := range keys {
		n, _ := parseSeq(k)
		if i == 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
	}
	return lo + hi
}

// Rotate reloads the CAs and JWT keys from the store (so replicas see each
// other's keys), retires spent ones, and creates the first ones or due
// successors. Run calls it periodically; issuance calls it when nothing is
// current.
func (p *Plugin) Rotate(ctx context.Context) error {
	p.rotateMu.Lock()
	defer p.rotateMu.Unlock()
	// Under the store's lock, one replica at a time creates keys: replicas
	// starting in different key terms cannot create two first keys.
	return p.store.Locks().Do(ctx, "svid-keys", p.rotateLocked)
}

func (p *Plugin) rotateLocked(ctx context.Context) error {
	now := p.now()
	rootKeys, err := p.rotate(ctx, p.roots(), now)
	if err != nil {
		return fmt.Errorf("svid: %w", err)
	}
	roots, err := p.loadAuthorities(rootKeys)
	if err != nil {
		return fmt.Errorf("svid: %w", err)
	}
	intKeys, err := p.rotate(ctx, p.intermediates(roots), now)
	if err != nil {
		return fmt.Errorf("svid: %w", err)
	}
	ints, err := p.loadAuthorities(intKeys)
	if err != nil {
		return fmt.Errorf("svid: %w", err)
	}
	jwtStored, err := p.rotate(ctx, p.jwtKeys(), now)
	if err != nil {
		return fmt.Errorf("svid: %w", err)
	}
	jwts, err := p.loadJWTKeys(jwtStored)
	if err != nil {
		return fmt.Errorf("svid: %w", err)
	}
	b := spiffebundle.New(p.td)
	for _, r := range roots {
		b.AddX509Authority(r.cert)
	}
	for _, k := range jwts {
		if err := b.AddJWTAuthority(k.kid, k.public); err != nil {
			return fmt.Errorf("svid: bundle: %w", err)
		}
	}
	seq := seqSpan(rootKeys) + seqSpan(jwtStored)
	b.SetRefreshHint(p.cfg.BundleRefreshHint.Duration)
	b.SetSequenceNumber(seq)
	doc, err := b.Marshal()
	if err != nil {
		return fmt.Errorf("svid: marshal bundle: %w", err)
	}
	p.state.Store(&state{roots: roots, intermediates: ints, jwt: jwts, bundle: doc, sequence: seq})
	return nil
}
