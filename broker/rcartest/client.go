// Package rcartest is an RCAR client written only from Trustee's protocol
// document (kbs/docs/kbs_attestation_protocol.md), sharing no types or code
// with the broker, so that tests of the broker check it against the
// protocol rather than against itself. Its JCS encoder is its own too.
package rcartest

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Request is the protocol's Request payload.
type Request struct {
	Version     string `json:"version"`
	TEE         string `json:"tee"`
	ExtraParams any    `json:"extra-params"`
}

// Challenge is the protocol's Challenge payload.
type Challenge struct {
	Nonce       string         `json:"nonce"`
	ExtraParams map[string]any `json:"extra-params"`
}

// RuntimeData is the protocol's runtime-data.
type RuntimeData struct {
	Nonce     string            `json:"nonce"`
	TEEPubKey map[string]string `json:"tee-pubkey"`
}

// TEEEvidence is the protocol's composite tee-evidence.
type TEEEvidence struct {
	PrimaryEvidence    any    `json:"primary_evidence"`
	AdditionalEvidence string `json:"additional_evidence"`
}

// Attestation is the protocol's Attestation payload.
type Attestation struct {
	RuntimeData RuntimeData `json:"runtime-data"`
	TEEEvidence TEEEvidence `json:"tee-evidence"`
}

// ErrorInformation is the error body Trustee returns.
type ErrorInformation struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}

// StatusError is a non-200 answer.
type StatusError struct {
	Status int
	Info   ErrorInformation
	CT     string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("status %d: %s: %s", e.Status, e.Info.Type, e.Info.Detail)
}

// Client runs RCAR against one server.
type Client struct {
	Base   string
	HTTP   *http.Client
	Cookie string // kbs-session-id value from the last auth
}

func (c *Client) post(path string, body any, out any) (*http.Response, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	return c.PostRaw(path, b, out)
}

// PostRaw posts body as is, with the session cookie, and decodes a 200
// answer into out or returns a *StatusError.
func (c *Client) PostRaw(path string, b []byte, out any) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, c.Base+path, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.Cookie != "" {
		req.Header.Set("Cookie", "kbs-session-id="+c.Cookie)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		se := &StatusError{Status: resp.StatusCode, CT: resp.Header.Get("Content-Type")}
		if err := json.Unmarshal(data, &se.Info); err != nil {
			return nil, fmt.Errorf("status %d with a body that is not ErrorInformation: %q", resp.StatusCode, data)
		}
		return resp, se
	}
	return resp, json.Unmarshal(data, out)
}

// Auth sends a Request and keeps the session cookie.
func (c *Client) Auth(tee string, extra any) (Challenge, *http.Cookie, error) {
	var ch Challenge
	resp, err := c.post("/kbs/v0/auth", Request{Version: "0.4.0", TEE: tee, ExtraParams: extra}, &ch)
	if err != nil {
		return ch, nil, err
	}
	for _, ck := range resp.Cookies() {
		if ck.Name == "kbs-session-id" {
			c.Cookie = ck.Value
			return ch, ck, nil
		}
	}
	return ch, nil, fmt.Errorf("no kbs-session-id cookie set")
}

// Attest sends an Attestation and returns the token.
func (c *Client) Attest(a Attestation) (string, error) {
	var out struct {
		Token string `json:"token"`
	}
	_, err := c.post("/kbs/v0/attest", a, &out)
	return out.Token, err
}

// ReportData is the digest the protocol binds: hashAlg over the JCS form of
// {tee-pubkey, nonce, additional-evidence}.
func ReportData(hashAlg string, pub map[string]string, nonce, additional string) ([]byte, error) {
	canon := JCS(map[string]any{"tee-pubkey": toAny(pub), "nonce": nonce, "additional-evidence": additional})
	switch hashAlg {
	case "sha256":
		s := sha256.Sum256(canon)
		return s[:], nil
	case "sha384":
		s := sha512.Sum384(canon)
		return s[:], nil
	case "sha512":
		s := sha512.Sum512(canon)
		return s[:], nil
	}
	return nil, fmt.Errorf("hash %q", hashAlg)
}

func toAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// SampleEvidence is Trustee's sample TEE evidence for report data rd.
func SampleEvidence(svn string, rd []byte) map[string]string {
	return map[string]string{"svn": svn, "report_data": base64.StdEncoding.EncodeToString(rd)}
}

// JCS encodes v (maps with string keys, strings, integers, bools, nil) in
// RFC 8785 form. Keys sort by UTF-16 code units; for the ASCII keys this
// client uses, that is byte order.
func JCS(v any) []byte {
	var b bytes.Buffer
	jcs(&b, v)
	return b.Bytes()
}

func jcs(b *bytes.Buffer, v any) {
	switch t := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			jcsString(b, k)
			b.WriteByte(':')
			jcs(b, t[k])
		}
		b.WriteByte('}')
	case string:
		jcsString(b, t)
	case int:
		b.WriteString(strconv.Itoa(t))
	case bool:
		b.WriteString(strconv.FormatBool(t))
	case nil:
		b.WriteString("null")
	default:
		panic(fmt.Sprintf("rcartest.JCS: unsupported %T", v))
	}
}

func jcsString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20:
			fmt.Fprintf(b, `\u%04x`, r)
		default:
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
	b.WriteByte('"')
}

// Claims decodes a JWT's payload without verifying it.
func Claims(tok string) (map[string]any, error) {
	p := strings.Split(tok, ".")
	if len(p) != 3 {
		return nil, fmt.Errorf("not a compact JWS")
	}
	raw, err := base64.RawURLEncoding.DecodeString(p[1])
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(raw, &m)
}
