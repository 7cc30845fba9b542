// Package kbs is a Go client for trustgate's attestation broker, and for
// any server speaking Trustee's KBS protocol 0.4.0: it runs RCAR (POST
// /kbs/v0/auth, POST /kbs/v0/attest) with any evidence provider, keeps the
// session cookie and the attestation token, fetches resources and plugin
// answers, and opens the answers the broker encrypted to the caller's TEE
// key.
//
//	key, _ := kbs.GenerateTEEKey(kbs.KeyEC)
//	c, _ := kbs.New("https://broker:8443", kbs.WithTEEKey(key), kbs.WithTLSConfig(tlsConf))
//	tok, err := c.Attest(ctx, kbs.JoinToken(token))
//	secret, err := c.GetResource(ctx, "default", "key", "1")
//
// Report data is computed with attest/reportdata, the function the broker
// checks it with. Errors from the broker are *Error values decoded from its
// RFC 7807 problem documents.
package kbs

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/trustgate/trustgate/attest/reportdata"
)

// ProtocolVersion is the KBS protocol version the client speaks.
const ProtocolVersion = "0.4.0"

// SessionCookie is the RCAR session cookie's name.
const SessionCookie = "kbs-session-id"

// DefaultTimeout bounds one request (connect, send, read the answer)
// unless WithTimeout says otherwise.
const DefaultTimeout = 30 * time.Second

// maxResponse bounds any answer body the client reads.
const maxResponse = 16 << 20

// Client talks to one broker. It is safe for concurrent use, but Attest
// replaces the session and token that the other calls use.
type Client struct {
	base    *url.URL
	hc      *http.Client
	key     *TEEKey
	hashes  []string
	timeout time.Duration

	mu     sync.Mutex
	cookie string
	token  string
	tee    string
}

// Option configures a Client.
type Option func(*Client) error

// noRedirects stops the client at a redirect: the broker never answers
// one, and following it would send the token and evidence elsewhere. The
// 3xx answer becomes an *Error.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// WithHTTPClient makes the client send its requests with hc, for example
// one whose transport trusts the broker's CA and presents a client
// certificate. hc's cookie jar, if any, is not used, and its redirect
// policy is hc's own (the client's default follows none).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) error {
		if hc == nil {
			return errors.New("nil *http.Client")
		}
		c.hc = hc
		return nil
	}
}

// WithTLSConfig makes the client use a transport (a clone of
// http.DefaultTransport) with this TLS configuration: RootCAs for the
// broker's trust bundle, Certificates or GetClientCertificate for mTLS.
func WithTLSConfig(conf *tls.Config) Option {
	return func(c *Client) error {
		if conf == nil {
			return errors.New("nil *tls.Config")
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = conf.Clone()
		c.hc = &http.Client{Transport: tr, CheckRedirect: noRedirects}
		return nil
	}
}

// WithTransport makes the client send its requests through rt (with no
// redirects followed), for example an *http.Transport with the broker's
// trust bundle and a client certificate, or one that adds tracing.
func WithTransport(rt http.RoundTripper) Option {
	return func(c *Client) error {
		if rt == nil {
			return errors.New("nil http.RoundTripper")
		}
		c.hc = &http.Client{Transport: rt, CheckRedirect: noRedirects}
		return nil
	}
}

// WithTEEKey sets the TEE key attestation binds and answers are encrypted
// to. Without it, New generates an EC P-256 key.
func WithTEEKey(k *TEEKey) Option {
	return func(c *Client) error {
		if k == nil {
			return errors.New("nil TEE key")
		}
		c.key = k
		return nil
	}
}

// WithToken starts the client with an attestation token from an earlier
// Attest (see Session), so that it can fetch without attesting again. The
// token must have been issued for the client's TEE key.
func WithToken(token string) Option {
	return func(c *Client) error {
		c.token = token
		return nil
	}
}

// WithHashAlgorithms sends extra-params.supported-hash-algorithms so
// that the broker picks one of algs (sha256, sha384, sha512) for the
// report data. Without it the broker picks (sha384).
func WithHashAlgorithms(algs ...string) Option {
	return func(c *Client) error {
		if len(algs) == 0 {
			return errors.New("no hash algorithms")
		}
		c.hashes = append([]string(nil), algs...)
		return nil
	}
}

// WithTimeout bounds each request; d must be positive.
func WithTimeout(d time.Duration) Option {
	return func(c *Client) error {
		if d <= 0 {
			return fmt.Errorf("timeout %v: want a positive duration", d)
		}
		c.timeout = d
		return nil
	}
}

// New returns a client for the broker at baseURL (scheme, host and an
// optional path prefix in front of /kbs/v0).
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("kbs: broker URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("kbs: broker URL %q: want http(s)://host[:port][/prefix]", baseURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	c := &Client{base: u, hc: &http.Client{CheckRedirect: noRedirects}, timeout: DefaultTimeout}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, fmt.Errorf("kbs: %w", err)
		}
	}
	if c.key == nil {
		if c.key, err = GenerateTEEKey(KeyEC); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// TEEKey is the client's TEE key.
func (c *Client) TEEKey() *TEEKey { return c.key }

// Token is the attestation token of the last successful Attest (or
// WithToken), or "".
func (c *Client) Token() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

// authRequest is the protocol's Request.
type authRequest struct {
	Version     string `json:"version"`
	TEE         string `json:"tee"`
	ExtraParams any    `json:"extra-params"`
}

// challengeBody is the protocol's Challenge.
type challengeBody struct {
	Nonce       string            `json:"nonce"`
	ExtraParams map[string]string `json:"extra-params"`
}

// attestationBody is the protocol's Attestation.
type attestationBody struct {
	RuntimeData struct {
		Nonce     string          `json:"nonce"`
		TEEPubKey json.RawMessage `json:"tee-pubkey"`
	} `json:"runtime-data"`
	TEEEvidence struct {
		PrimaryEvidence    json.RawMessage `json:"primary_evidence"`
		AdditionalEvidence string          `json:"additional_evidence"`
	} `json:"tee-evidence"`
}

// parseChallenge decodes a Challenge answer.
func parseChallenge(b []byte) (Challenge, error) {
	var ch challengeBody
	if err := json.Unmarshal(b, &ch); err != nil {
		return Challenge{}, fmt.Errorf("kbs: challenge is not the protocol's JSON: %w", err)
	}
	if ch.Nonce == "" {
		return Challenge{}, errors.New("kbs: challenge has no nonce")
	}
	alg := ch.ExtraParams["selected-hash-algorithm"]
	if alg == "" {
		alg = reportdata.SHA384 // Trustee's default when none is named
	}
	return Challenge{Nonce: ch.Nonce, HashAlgorithm: alg, ExtraParams: ch.ExtraParams}, nil
}

// parseToken decodes an attest answer: {"token": "<JWT>"}.
func parseToken(b []byte) (string, error) {
	var out struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return "", fmt.Errorf("kbs: attest answer is not the protocol's JSON: %w", err)
	}
	if strings.Count(out.Token, ".") != 2 {
		return "", errors.New("kbs: attest answer holds no JWT")
	}
	return out.Token, nil
}

// Attest runs RCAR with a: it requests a challenge for a.TEE(), computes
// the report data over the client's TEE key, has a make the evidence, and
// returns the attestation token, which the client then uses.
func (c *Client) Attest(ctx context.Context, a Attester) (string, error) {
	var extra any = ""
	if c.hashes != nil {
		extra = map[string][]string{"supported-hash-algorithms": c.hashes}
	}
	body, err := json.Marshal(authRequest{Version: ProtocolVersion, TEE: a.TEE(), ExtraParams: extra})
	if err != nil {
		return "", fmt.Errorf("kbs: auth request: %w", err)
	}
	resp, err := c.send(ctx, http.MethodPost, "/kbs/v0/auth", nil, "application/json", body, "", "")
	if err != nil {
		return "", fmt.Errorf("kbs: auth: %w", err)
	}
	ch, err := parseChallenge(resp.Body)
	if err != nil {
		return "", err
	}
	cookie := sessionCookie(resp.cookies)
	if cookie == "" {
		return "", fmt.Errorf("kbs: auth answer set no %s cookie", SessionCookie)
	}
	pub := c.key.PublicJWK()
	if ch.ReportData, err = reportdata.Compute(ch.HashAlgorithm, pub, ch.Nonce, ""); err != nil {
		return "", fmt.Errorf("kbs: report data: %w", err)
	}
	ev, err := a.Evidence(ctx, ch)
	if err != nil {
		return "", fmt.Errorf("kbs: %s evidence: %w", a.TEE(), err)
	}
	var att attestationBody
	att.RuntimeData.Nonce, att.RuntimeData.TEEPubKey = ch.Nonce, pub
	att.TEEEvidence.PrimaryEvidence = ev
	if body, err = json.Marshal(att); err != nil {
		return "", fmt.Errorf("kbs: attestation: %w", err)
	}
	resp, err = c.send(ctx, http.MethodPost, "/kbs/v0/attest", nil, "application/json", body, cookie, "")
	if err != nil {
		return "", fmt.Errorf("kbs: attest: %w", err)
	}
	tok, err := parseToken(resp.Body)
	if err != nil {
		return "", err
	}
	if ck := sessionCookie(resp.cookies); ck != "" {
		cookie = ck
	}
	c.mu.Lock()
	c.cookie, c.token, c.tee = cookie, tok, a.TEE()
	c.mu.Unlock()
	return tok, nil
}

// Session is what WriteSession needs to let a later client use this
// client's attestation: the broker URL, the attestor, the token and the
// TEE key.
func (c *Client) Session() Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Session{URL: c.base.String(), TEE: c.tee, Token: c.token, TEEKey: c.key}
}

func sessionCookie(cs []*http.Cookie) string {
	for _, ck := range cs {
		if ck.Name == SessionCookie && ck.Value != "" {
			return ck.Value
		}
	}
	return ""
}

// Request is a plugin request: Method on /kbs/v0/<Plugin>/<Path>?<Query>.
type Request struct {
	// Method is GET, POST, PUT or DELETE; empty means GET.
	Method string
	// Plugin is the plugin's name, e.g. "resource", "nebula-ca", "svid".
	Plugin string
	// Path is the path under the plugin, segments separated by "/", each
	// escaped on the wire, e.g. "credential" or "default/key/1".
	Path string
	// Query is the query string.
	Query url.Values
	// Body is the request body; ContentType its type (default
	// application/octet-stream when Body is not empty).
	Body        []byte
	ContentType string
	// Decrypt opens the answer as a JWE to the TEE key: set it for the
	// methods the plugin encrypts.
	Decrypt bool
}

// Response is a 2xx plugin answer.
type Response struct {
	// Status is the HTTP status code.
	Status int
	// ContentType is the answer's Content-Type.
	ContentType string
	// Body is the answer, decrypted when the request asked.
	Body []byte

	cookies []*http.Cookie
}

// Do sends a plugin request with the attestation token (as a Bearer token
// and in the session cookie) and returns the answer, or an *Error for a
// non-2xx status.
func (c *Client) Do(ctx context.Context, r Request) (*Response, error) {
	if r.Plugin == "" || strings.Contains(r.Plugin, "/") {
		return nil, fmt.Errorf("kbs: plugin name %q", r.Plugin)
	}
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	segs := []string{url.PathEscape(r.Plugin)}
	if r.Path != "" {
		for _, s := range strings.Split(r.Path, "/") {
			segs = append(segs, url.PathEscape(s))
		}
	}
	ct := r.ContentType
	if ct == "" && len(r.Body) > 0 {
		ct = "application/octet-stream"
	}
	c.mu.Lock()
	cookie, tok := c.cookie, c.token
	c.mu.Unlock()
	if tok == "" {
		return nil, errors.New("kbs: no attestation token: Attest first")
	}
	if cookie == "" {
		cookie = tok // the broker's session cookie carries the token after attest
	}
	resp, err := c.send(ctx, method, "/kbs/v0/"+strings.Join(segs, "/"), r.Query, ct, r.Body, cookie, tok)
	if err != nil {
		return nil, fmt.Errorf("kbs: %s %s/%s: %w", method, r.Plugin, r.Path, err)
	}
	if r.Decrypt {
		if resp.Body, err = c.key.Open(resp.Body); err != nil {
			return nil, fmt.Errorf("kbs: %s %s/%s: %w", method, r.Plugin, r.Path, err)
		}
	}
	return resp, nil
}

// GetResource fetches and decrypts the resource
// /kbs/v0/resource/<repository>/<typ>/<tag>.
func (c *Client) GetResource(ctx context.Context, repository, typ, tag string) ([]byte, error) {
	for _, s := range []string{repository, typ, tag} {
		if s == "" || strings.Contains(s, "/") {
			return nil, fmt.Errorf("kbs: resource path %s/%s/%s: want three non-empty segments", repository, typ, tag)
		}
	}
	resp, err := c.Do(ctx, Request{Plugin: "resource", Path: repository + "/" + typ + "/" + tag, Decrypt: true})
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// send makes one request and reads a bounded answer.
func (c *Client) send(ctx context.Context, method, path string, q url.Values, ct string, body []byte, cookie, bearer string) (*Response, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	u := *c.base
	u.Path += path
	u.RawQuery = q.Encode()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	req.Header.Set("Accept", "application/json, application/problem+json, */*")
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: SessionCookie, Value: cookie})
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	if len(b) > maxResponse {
		return nil, fmt.Errorf("answer exceeds %d bytes", maxResponse)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, ParseError(resp.StatusCode, resp.Header, b)
	}
	return &Response{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: b, cookies: resp.Cookies()}, nil
}
