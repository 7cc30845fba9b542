package nebulaca

import (
	"crypto/ecdh"
	"crypto/rand"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"filippo.io/edwards25519"
	"github.com/slackhq/nebula/cert"
)

// issue checks prm against the signing CA and the configuration and signs
// a node certificate, for pub when given and else for a new key pair whose
// private half is returned too.
func (p *Plugin) issue(s *state, now time.Time, prm params, pub *publicKey) (*Credential, error) {
	ca := s.signer
	t, err := p.template(ca, now, prm)
	if err != nil {
		return nil, err
	}
	var nodeKey []byte
	if pub != nil {
		if pub.curve != ca.crt.Curve() {
			return nil, badRequest("public_key is a %v key, but the CA signs %v keys", pub.curve, ca.crt.Curve())
		}
		t.PublicKey = pub.raw
	} else {
		var priv []byte
		t.PublicKey, priv, err = newNodeKey(ca.crt.Curve())
		if err != nil {
			return nil, fmt.Errorf("nebula-ca: generate node key: %w", err)
		}
		nodeKey = cert.MarshalPrivateKeyToPEM(ca.crt.Curve(), priv)
	}
	c, err := t.Sign(ca.crt, ca.crt.Curve(), ca.key)
	if err != nil {
		// template checked everything the caller controls, so this is
		// most likely a fault here; say what nebula refused.
		return nil, fmt.Errorf("nebula-ca: sign %q with CA %s: %w", prm.name, ca.id, err)
	}
	crtPEM, err := c.MarshalPEM()
	if err != nil {
		return nil, fmt.Errorf("nebula-ca: encode certificate: %w", err)
	}
	return &Credential{NodeCrt: crtPEM, NodeKey: nodeKey, CACrt: s.bundle}, nil
}

// template checks prm against the signing CA's constraints and the
// configuration, and returns the certificate to sign, without its key.
func (p *Plugin) template(ca *authority, now time.Time, prm params) (*cert.TBSCertificate, error) {
	version := prm.version
	if version == 0 {
		version = cert.Version(p.cfg.DefaultVersion)
	}
	if version == 0 {
		version = ca.crt.Version()
	}

	caNets := ca.crt.Networks()
	nets := make([]netip.Prefix, 0, len(prm.ips))
	for _, ip := range prm.ips {
		bits := ip.bits
		inside := len(caNets) == 0
		for _, n := range caNets {
			if n.Contains(ip.addr) && (bits < 0 || n.Bits() <= bits) {
				inside = true
				if bits < 0 {
					bits = n.Bits()
				}
				break
			}
		}
		if !inside {
			return nil, badRequest("ip %s is outside the CA's networks %s", ip, joinPrefixes(caNets))
		}
		if bits < 0 {
			return nil, badRequest("ip %s needs a prefix length, such as %s/24: the CA does not limit networks, so it cannot supply one", ip, ip)
		}
		nets = append(nets, netip.PrefixFrom(ip.addr, bits))
	}
	if version == cert.Version1 {
		if len(nets) != 1 || !nets[0].Addr().Is4() {
			return nil, badRequest("ip: a version 1 certificate holds exactly one IPv4 address (ask for version=2 for IPv6 or several addresses)")
		}
		for _, n := range prm.subnets {
			if !n.Addr().Is4() {
				return nil, badRequest("subnets: %s is IPv6, which a version 1 certificate cannot hold (ask for version=2)", n)
			}
		}
	} else {
		for _, n := range prm.subnets {
			if !slices.ContainsFunc(nets, func(a netip.Prefix) bool { return a.Addr().Is4() == n.Addr().Is4() }) {
				return nil, badRequest("subnets: %s needs an ip of the same family in the certificate", n)
			}
		}
	}

	caUnsafe := ca.crt.UnsafeNetworks()
	if len(caUnsafe) > 0 {
		for _, n := range prm.subnets {
			if !slices.ContainsFunc(caUnsafe, func(c netip.Prefix) bool { return c.Contains(n.Addr()) && c.Bits() <= n.Bits() }) {
				return nil, badRequest("subnets: %s is outside the CA's unsafe networks %s", n, joinPrefixes(caUnsafe))
			}
		}
	}

	caGroups := ca.crt.Groups()
	for _, g := range prm.groups {
		if len(caGroups) > 0 && !slices.Contains(caGroups, g) {
			return nil, badRequest("groups: the CA does not allow group %q (it allows %s)", g, strings.Join(caGroups, ","))
		}
		if len(p.cfg.AllowedGroups) > 0 && !slices.Contains(p.cfg.AllowedGroups, g) {
			return nil, badRequest("groups: group %q is not allowed (allowed: %s)", g, strings.Join(p.cfg.AllowedGroups, ","))
		}
	}

	notBefore := now.Truncate(time.Second)
	if notBefore.Before(ca.crt.NotBefore()) {
		notBefore = ca.crt.NotBefore()
	}
	// A node certificate ends at least a second before its CA, as
	// nebula-cert's default does.
	latest := ca.crt.NotAfter().Add(-time.Second)
	var notAfter time.Time
	if prm.duration == 0 {
		notAfter = minTime(notBefore.Add(p.cfg.DefaultDuration.Duration), latest)
	} else {
		if prm.duration > p.cfg.MaxDuration.Duration {
			return nil, badRequest("duration %v is longer than the maximum, %v", prm.duration, p.cfg.MaxDuration.Duration)
		}
		notAfter = notBefore.Add(prm.duration)
		if notAfter.After(latest) {
			return nil, badRequest("duration %v would outlive the signing CA, which expires at %s: ask for at most %v",
				prm.duration, ca.crt.NotAfter().UTC().Format(time.RFC3339), latest.Sub(notBefore))
		}
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("nebula-ca: signing CA %s expires at %v, too soon to sign", ca.id, ca.crt.NotAfter())
	}
	return &cert.TBSCertificate{
		Version:        version,
		Name:           prm.name,
		Networks:       nets,
		UnsafeNetworks: prm.subnets,
		Groups:         prm.groups,
		NotBefore:      notBefore,
		NotAfter:       notAfter,
		Curve:          ca.crt.Curve(),
	}, nil
}

// newNodeKey returns a node's Diffie-Hellman key pair in nebula's raw
// encoding: X25519 or P-256.
//
// The X25519 public key is computed as the Montgomery form of the Edwards
// point [k]B, which equals X25519(k, 9) for the clamped scalar k (RFC 7748
// section 4.1's birational map) and uses edwards25519's precomputed
// fixed-base table: about three times faster than the variable-base ladder
// that crypto/ecdh runs, and key generation is the larger half of issuing.
// TestNodeKeyMatchesX25519 checks it against crypto/ecdh.
func newNodeKey(curve cert.Curve) (pub, priv []byte, err error) {
	if curve == cert.Curve_P256 {
		k, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		return k.PublicKey().Bytes(), k.Bytes(), nil
	}
	priv = make([]byte, 32)
	if _, err := rand.Read(priv); err != nil {
		return nil, nil, err
	}
	s, err := edwards25519.NewScalar().SetBytesWithClamping(priv)
	if err != nil {
		return nil, nil, err
	}
	return new(edwards25519.Point).ScalarBaseMult(s).BytesMontgomery(), priv, nil
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
