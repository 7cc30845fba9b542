package nebulaca

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/slackhq/nebula/cert"

	"github.com/trustgate/trustgate/internal/periodic"
	"github.com/trustgate/trustgate/store"
)

// Kind is the store.Key kind under which the plugin keeps its CAs. A key's
// ID is its generation, zero-padded ("00000000", "00000001", ...), so two
// replicas that rotate at once both try to create the same ID and the store
// lets exactly one win. Sealed holds the CA's private key in nebula PEM,
// sealed with the associated data "nebula-ca/<id>"; Public holds the CA
// certificate in PEM; NotBefore is when the CA starts signing and NotAfter
// when its certificate expires.
const Kind = "nebula-ca"

// authority is one loaded CA.
type authority struct {
	id          string
	gen         int
	crt         cert.Certificate
	key         []byte
	pem         []byte
	fingerprint string
	signFrom    time.Time
}

// state is what requests read: the CAs in ca_crt and the one that signs.
type state struct {
	cas    []*authority // unexpired, oldest generation first
	signer *authority
	bundle []byte // PEM of cas
	// next is the first moment after the load at which the state changes
	// (a successor starts signing, a CA expires, or rotation is due).
	next time.Time
}

// maxRetries bounds how often Rotate starts over after losing a race with
// another replica for a generation's ID.
const maxRetries = 3

// Rotate reloads the CAs from the store (so replicas see each other's), deletes
// expired ones, and creates the first CA or the newest CA's successor when
// due. Requests call it by themselves when the state is due to change; Run
// calls it periodically as well.
func (p *Plugin) Rotate(ctx context.Context) error {
	p.rotateMu.Lock()
	defer p.rotateMu.Unlock()
	// Under the store's lock, one replica at a time creates CAs.
	return p.locks.Do(ctx, "nebula-ca", p.rotateLocked)
}

// RefreshInterval is how often Run calls Rotate.
const RefreshInterval = time.Minute

// Run calls Rotate every RefreshInterval until ctx ends, so the plugin sees
// CAs other replicas created and rotates even when no request arrives. A
// failed rotation is logged and retried at the next tick; the current CA
// keeps signing while it is valid.
func (p *Plugin) Run(ctx context.Context) {
	wake, cancel := store.Wake(p.changes, store.TopicKeys)
	defer cancel()
	periodic.RunWake(ctx, RefreshInterval, 30*time.Second, p.log, "nebula-ca rotation", wake, p.Rotate)
}

func (p *Plugin) rotateLocked(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := p.rotateOnce(ctx)
		if errors.Is(err, store.ErrConflict) && attempt < maxRetries {
			// Another replica stored this generation first: use theirs.
			p.log.Debug("nebula-ca generation created by another replica, reloading")
			continue
		}
		return err
	}
}

func (p *Plugin) rotateOnce(ctx context.Context) error {
	now := p.now()
	stored, err := p.keys.List(ctx, Kind)
	if err != nil {
		return fmt.Errorf("nebula-ca: load CAs: %w", err)
	}
	type genKey struct {
		gen int
		k   store.Key
	}
	all := make([]genKey, 0, len(stored))
	for _, k := range stored {
		gen, err := strconv.Atoi(k.ID)
		if err != nil || gen < 0 || k.ID != genID(gen) {
			return fmt.Errorf("nebula-ca: stored CA has ID %q, want a generation number such as %q", k.ID, genID(0))
		}
		all = append(all, genKey{gen, k})
	}
	slices.SortFunc(all, func(a, b genKey) int { return a.gen - b.gen })
	var live []store.Key
	for i, g := range all {
		if now.Before(g.k.NotAfter) {
			live = append(live, g.k)
			continue
		}
		// Node certificates cannot outlive their CA, so an expired CA
		// is of no further use. The newest generation stays, expired,
		// as the marker from which the next generation is numbered.
		if i == len(all)-1 {
			continue
		}
		if err := p.keys.Delete(ctx, Kind, g.k.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("nebula-ca: delete expired CA %s: %w", g.k.ID, err)
		}
		p.log.Info("nebula-ca expired CA deleted", "generation", g.k.ID)
	}
	if len(live) == 0 {
		var k store.Key
		switch {
		case len(all) == 0 && p.cfg.ImportCACert != "":
			k, err = p.importCA(ctx, now)
		case len(all) == 0:
			k, err = p.generate(ctx, 0, now, now)
		default:
			// Rotation stalled past the newest CA's end: nothing to
			// overlap with, so the new CA signs at once.
			k, err = p.generate(ctx, all[len(all)-1].gen+1, now, now)
		}
		if err != nil {
			return err
		}
		live = append(live, k)
	}
	newest := live[len(live)-1]
	if rb := p.cfg.RotateBefore.Duration; rb > 0 && !now.Before(newest.NotAfter.Add(-rb)) {
		// Number past every stored generation, expired ones included.
		next, _ := strconv.Atoi(newest.ID)
		if len(all) > 0 {
			next = max(next, all[len(all)-1].gen)
		}
		k, err := p.generate(ctx, next+1, now, minTime(now.Add(p.cfg.Prepublish.Duration), newest.NotAfter))
		if err != nil {
			return err
		}
		live = append(live, k)
	}
	return p.load(live, now)
}

func genID(gen int) string { return fmt.Sprintf("%08d", gen) }

func aad(id string) []byte { return []byte(Kind + "/" + id) }

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// parseCurve maps the configuration's curve names to nebula's.
func parseCurve(s string) (cert.Curve, error) {
	switch s {
	case "25519":
		return cert.Curve_CURVE25519, nil
	case "P256":
		return cert.Curve_P256, nil
	}
	return 0, fmt.Errorf("unknown curve %q", s)
}

// newSigningKey returns a CA key pair in nebula's raw encoding: an Ed25519
// or an ECDSA P-256 key.
func newSigningKey(curve cert.Curve) (pub, priv []byte, err error) {
	switch curve {
	case cert.Curve_CURVE25519:
		pk, sk, err := ed25519.GenerateKey(rand.Reader)
		return pk, sk, err
	case cert.Curve_P256:
		sk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		pub, err := sk.PublicKey.Bytes()
		if err != nil {
			return nil, nil, err
		}
		priv, err := sk.Bytes()
		return pub, priv, err
	}
	return nil, nil, fmt.Errorf("unknown curve %v", curve)
}

// generate creates and stores generation gen, valid for CAValidity from
// now, signing from signFrom.
func (p *Plugin) generate(ctx context.Context, gen int, now, signFrom time.Time) (store.Key, error) {
	pub, priv, err := newSigningKey(p.curve)
	if err != nil {
		return store.Key{}, fmt.Errorf("nebula-ca: generate CA key: %w", err)
	}
	start := now.Truncate(time.Second)
	t := &cert.TBSCertificate{
		Version:        cert.Version(p.cfg.CAVersion),
		Name:           p.cfg.CAName,
		Networks:       slices.Clone(p.caNets),
		UnsafeNetworks: slices.Clone(p.caUnsafe),
		Groups:         slices.Clone(p.cfg.CAGroups),
		IsCA:           true,
		NotBefore:      start,
		NotAfter:       start.Add(p.cfg.CAValidity.Duration),
		PublicKey:      pub,
		Curve:          p.curve,
	}
	c, err := t.Sign(nil, p.curve, priv)
	if err != nil {
		return store.Key{}, fmt.Errorf("nebula-ca: self-sign CA: %w", err)
	}
	k, err := p.storeCA(ctx, gen, c, priv, now, signFrom)
	if err != nil {
		return store.Key{}, err
	}
	p.log.Info("nebula-ca CA created", "generation", k.ID, "fingerprint", fingerprint(c),
		"signs_from", k.NotBefore, "expires", k.NotAfter)
	return k, nil
}

// importCA stores the configured CA files as generation 0.
func (p *Plugin) importCA(ctx context.Context, now time.Time) (store.Key, error) {
	crtPEM, err := os.ReadFile(p.cfg.ImportCACert)
	if err != nil {
		return store.Key{}, fmt.Errorf("nebula-ca: import CA: %w", err)
	}
	keyPEM, err := os.ReadFile(p.cfg.ImportCAKey)
	if err != nil {
		return store.Key{}, fmt.Errorf("nebula-ca: import CA: %w", err)
	}
	c, key, err := parseCA(crtPEM, keyPEM)
	if err != nil {
		return store.Key{}, fmt.Errorf("nebula-ca: import CA from %s and %s: %w", p.cfg.ImportCACert, p.cfg.ImportCAKey, err)
	}
	if c.Expired(now) {
		return store.Key{}, fmt.Errorf("nebula-ca: import CA from %s: it is valid from %v to %v, not now", p.cfg.ImportCACert, c.NotBefore(), c.NotAfter())
	}
	k, err := p.storeCA(ctx, 0, c, key, now, now)
	if err != nil {
		return store.Key{}, err
	}
	p.log.Info("nebula-ca CA imported", "generation", k.ID, "fingerprint", fingerprint(c),
		"file", p.cfg.ImportCACert, "expires", k.NotAfter)
	return k, nil
}

// parseCA parses a CA certificate and its private key, both nebula PEM, and
// checks that they belong together.
func parseCA(crtPEM, keyPEM []byte) (cert.Certificate, []byte, error) {
	c, _, err := cert.UnmarshalCertificateFromPEM(crtPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate: %w", err)
	}
	if !c.IsCA() {
		return nil, nil, errors.New("certificate is not a CA")
	}
	if !c.CheckSignature(c.PublicKey()) {
		return nil, nil, errors.New("CA certificate is not self-signed")
	}
	key, _, curve, err := cert.UnmarshalSigningPrivateKeyFromPEM(keyPEM)
	if errors.Is(err, cert.ErrPrivateKeyEncrypted) {
		return nil, nil, errors.New("private key is encrypted: write it unencrypted (the store seals it)")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("private key: %w", err)
	}
	if err := c.VerifyPrivateKey(curve, key); err != nil {
		return nil, nil, fmt.Errorf("private key does not match the certificate: %w", err)
	}
	return c, key, nil
}

// storeCA seals key and stores c as generation gen.
func (p *Plugin) storeCA(ctx context.Context, gen int, c cert.Certificate, key []byte, now, signFrom time.Time) (store.Key, error) {
	id := genID(gen)
	crtPEM, err := c.MarshalPEM()
	if err != nil {
		return store.Key{}, fmt.Errorf("nebula-ca: encode CA: %w", err)
	}
	sealed, err := p.sealer.Seal(cert.MarshalSigningPrivateKeyToPEM(c.Curve(), key), aad(id))
	if err != nil {
		return store.Key{}, fmt.Errorf("nebula-ca: seal CA key: %w", err)
	}
	k := store.Key{Kind: Kind, ID: id, Sealed: sealed, Public: crtPEM,
		NotBefore: signFrom, NotAfter: c.NotAfter(), CreatedAt: now}
	if err := p.keys.Create(ctx, k); err != nil {
		return store.Key{}, fmt.Errorf("nebula-ca: store CA %s: %w", id, err)
	}
	return k, nil
}

// load replaces the in-memory state with the stored CAs in live (all
// unexpired at now, oldest generation first).
func (p *Plugin) load(live []store.Key, now time.Time) error {
	s := &state{}
	for _, k := range live {
		keyPEM, err := p.sealer.Open(k.Sealed, aad(k.ID))
		if err != nil {
			return fmt.Errorf("nebula-ca: CA %s: %w", k.ID, err)
		}
		c, key, err := parseCA(k.Public, keyPEM)
		if err != nil {
			return fmt.Errorf("nebula-ca: CA %s: %w", k.ID, err)
		}
		gen, _ := strconv.Atoi(k.ID)
		a := &authority{id: k.ID, gen: gen, crt: c, key: key, pem: k.Public, fingerprint: fingerprint(c), signFrom: k.NotBefore}
		s.cas = append(s.cas, a)
		s.bundle = append(s.bundle, k.Public...)
		if !now.Before(a.signFrom) {
			s.signer = a
		}
	}
	if s.signer == nil {
		return errors.New("nebula-ca: no CA may sign yet (every stored CA is prepublished)")
	}
	s.next = s.signer.crt.NotAfter()
	for _, a := range s.cas {
		s.next = minTime(s.next, a.crt.NotAfter())
		if a.signFrom.After(now) {
			s.next = minTime(s.next, a.signFrom)
		}
	}
	if rb := p.cfg.RotateBefore.Duration; rb > 0 {
		if due := s.cas[len(s.cas)-1].crt.NotAfter().Add(-rb); due.After(now) {
			s.next = minTime(s.next, due)
		}
	}
	if old := p.state.Load(); old == nil || old.signer.id != s.signer.id {
		p.log.Info("nebula-ca signing CA", "generation", s.signer.id, "fingerprint", s.signer.fingerprint,
			"expires", s.signer.crt.NotAfter(), "published", len(s.cas))
	}
	p.state.Store(s)
	return nil
}

func fingerprint(c cert.Certificate) string {
	fp, err := c.Fingerprint()
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return fp
}
