package nebulaca

import (
	"bytes"
	"crypto/ecdh"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/slackhq/nebula/cert"

	"github.com/trustgate/trustgate/broker/plugin"
)

const (
	// maxField bounds a name or a group, in bytes.
	maxField = 255
	// maxList bounds how many addresses, groups or subnets one request
	// may list.
	maxList = 64
	// maxKeyBody bounds a POST body.
	maxKeyBody = 16 << 10
)

// params are a credential request's query parameters, checked for syntax
// but not yet against a CA.
type params struct {
	name     string
	ips      []ipSpec
	groups   []string
	subnets  []netip.Prefix
	duration time.Duration // 0: the configured default
	version  cert.Version  // 0: the configured default
}

// ipSpec is an overlay address with its prefix length, or bits -1 when the
// request gave a bare address and the CA's network supplies the length.
type ipSpec struct {
	addr netip.Addr
	bits int
}

func (s ipSpec) String() string {
	if s.bits < 0 {
		return s.addr.String()
	}
	return netip.PrefixFrom(s.addr, s.bits).String()
}

func badRequest(format string, args ...any) error {
	return plugin.Errorf(http.StatusBadRequest, format, args...)
}

// parseQuery parses the query of a credential request:
//
//	name      required  the certificate's name (1 to 255 printable bytes)
//	ip        required  overlay address(es), comma-separated, each
//	                    "addr/bits" or a bare address inside a CA network
//	groups    optional  comma-separated group names
//	subnets   optional  comma-separated unsafe networks the node routes
//	duration  optional  lifetime, a Go duration such as "8760h"
//	version   optional  certificate format, 1 or 2
//
// An unknown or repeated parameter is refused, so that what the policy saw
// is exactly what is signed.
func parseQuery(q url.Values) (params, error) {
	var p params
	for k, v := range q {
		if len(v) != 1 {
			return p, badRequest("query parameter %q is given %d times: give it once (lists are comma-separated)", k, len(v))
		}
		switch k {
		case "name", "ip", "groups", "subnets", "duration", "version":
		default:
			return p, badRequest("unknown query parameter %q: want name, ip, groups, subnets, duration or version", k)
		}
	}
	p.name = q.Get("name")
	if err := checkName(p.name); err != nil {
		return p, err
	}
	ipList, err := splitList("ip", q.Get("ip"))
	if err != nil {
		return p, err
	}
	if len(ipList) == 0 {
		return p, badRequest("ip is required: the node's overlay address, such as ip=10.42.0.5/16")
	}
	for _, s := range ipList {
		spec, err := parseIP(s)
		if err != nil {
			return p, err
		}
		for _, o := range p.ips {
			if o.addr == spec.addr {
				return p, badRequest("ip %s is listed twice", spec.addr)
			}
		}
		p.ips = append(p.ips, spec)
	}
	if p.groups, err = splitList("groups", q.Get("groups")); err != nil {
		return p, err
	}
	for i, g := range p.groups {
		if err := checkGroupName(g); err != nil {
			return p, badRequest("groups: %v", err)
		}
		for _, o := range p.groups[:i] {
			if o == g {
				return p, badRequest("groups: %q is listed twice", g)
			}
		}
	}
	subnets, err := splitList("subnets", q.Get("subnets"))
	if err != nil {
		return p, err
	}
	for _, s := range subnets {
		n, err := netip.ParsePrefix(s)
		if err != nil {
			return p, badRequest("subnets: %q is not a network in CIDR notation such as 192.168.1.0/24", s)
		}
		if n.Addr().Is4In6() {
			return p, badRequest("subnets: %s is an IPv4-mapped IPv6 network: write it as IPv4", s)
		}
		for _, o := range p.subnets {
			if o == n {
				return p, badRequest("subnets: %s is listed twice", s)
			}
		}
		p.subnets = append(p.subnets, n)
	}
	if d := q.Get("duration"); d != "" {
		v, err := time.ParseDuration(d)
		if err != nil || v <= 0 {
			return p, badRequest("duration %q: want a positive duration such as 720h or 8760h0m0s", d)
		}
		p.duration = v
	}
	switch v := q.Get("version"); v {
	case "":
	case "1":
		p.version = cert.Version1
	case "2":
		p.version = cert.Version2
	default:
		return p, badRequest("version %q: want 1 or 2", v)
	}
	return p, nil
}

func checkName(name string) error {
	if name == "" {
		return badRequest("name is required: the node's name, usually its host or pod name")
	}
	if len(name) > maxField {
		return badRequest("name is %d bytes: at most %d", len(name), maxField)
	}
	if !utf8.ValidString(name) {
		return badRequest("name is not valid UTF-8")
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return badRequest("name %q holds a non-printable character", name)
		}
	}
	return nil
}

// splitList splits a comma-separated value, trimming spaces and dropping
// empty items.
func splitList(key, v string) ([]string, error) {
	if v == "" {
		return nil, nil
	}
	var out []string
	for item := range strings.SplitSeq(v, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		if len(out) == maxList {
			return nil, badRequest("%s lists more than %d items", key, maxList)
		}
		out = append(out, item)
	}
	return out, nil
}

func parseIP(s string) (ipSpec, error) {
	var spec ipSpec
	if strings.Contains(s, "/") {
		n, err := netip.ParsePrefix(s)
		if err != nil {
			return spec, badRequest("ip %q is not an address with a prefix length, such as 10.42.0.5/16", s)
		}
		spec = ipSpec{addr: n.Addr(), bits: n.Bits()}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return spec, badRequest("ip %q is not an IP address, such as 10.42.0.5/16", s)
		}
		if a.Zone() != "" {
			return spec, badRequest("ip %q has a zone, which overlay addresses cannot have", s)
		}
		spec = ipSpec{addr: a, bits: -1}
	}
	if spec.addr.Is4In6() {
		return spec, badRequest("ip %q is an IPv4-mapped IPv6 address: write it as IPv4", s)
	}
	if spec.addr.IsUnspecified() {
		return spec, badRequest("ip %q is the unspecified address", s)
	}
	if spec.addr.IsMulticast() {
		return spec, badRequest("ip %q is a multicast address", s)
	}
	return spec, nil
}

// keyRequest is the body of POST credential.
type keyRequest struct {
	// PublicKey is the node's public key in nebula PEM ("NEBULA X25519
	// PUBLIC KEY" or "NEBULA P256 PUBLIC KEY"), as nebula-cert keygen
	// writes it.
	PublicKey string `json:"public_key"`
}

// publicKey is a node public key in nebula's raw encoding.
type publicKey struct {
	curve cert.Curve
	raw   []byte
}

// parseKeyRequest parses a POST credential body: one JSON object with
// exactly the field public_key. Other fields are refused, so that nothing
// the policy cannot see in the query shapes the certificate.
func parseKeyRequest(body []byte) (*publicKey, error) {
	if len(body) > maxKeyBody {
		return nil, plugin.Errorf(http.StatusRequestEntityTooLarge, "body is %d bytes: at most %d", len(body), maxKeyBody)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var kr keyRequest
	if err := dec.Decode(&kr); err != nil {
		return nil, badRequest("body: want {\"public_key\": \"<nebula PEM public key>\"}: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, badRequest("body: unexpected data after the JSON object")
	}
	if kr.PublicKey == "" {
		return nil, badRequest("body: public_key is required: the node's public key in nebula PEM, as nebula-cert keygen writes it")
	}
	raw, rest, curve, err := cert.UnmarshalPublicKeyFromPEM([]byte(kr.PublicKey))
	if err != nil {
		return nil, badRequest("public_key: %v", err)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, badRequest("public_key: unexpected data after the PEM block")
	}
	switch curve {
	case cert.Curve_CURVE25519:
		_, err = ecdh.X25519().NewPublicKey(raw)
	case cert.Curve_P256:
		_, err = ecdh.P256().NewPublicKey(raw)
	default:
		err = fmt.Errorf("unsupported curve %v", curve)
	}
	if err != nil {
		return nil, badRequest("public_key: invalid %v key: %v", curve, err)
	}
	return &publicKey{curve: curve, raw: raw}, nil
}
