package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// ErrTokenEndpoint reports a token endpoint that refused or failed a request.
var ErrTokenEndpoint = errors.New("token endpoint error")

// tokenRequest is everything needed to fetch one token.
type tokenRequest struct {
	registry *url.URL // the registry URL that sent the challenge
	realm    *url.URL // validated
	service  string
	scopes   []string // cleaned
}

// fetch obtains a token from the realm. With a refresh token, or with
// WithOAuth2 and a username and password, it POSTs an OAuth2 grant and falls
// back to GET when the endpoint answers 404; otherwise it GETs with Basic
// credentials (or anonymously).
func (t *Transport) fetch(ctx context.Context, tr tokenRequest) (TokenResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, t.tokenTimeout)
	defer cancel()
	cred, err := t.credential(ctx, tr.registry.Host)
	if err != nil {
		return TokenResponse{}, err
	}
	oauth := cred.RefreshToken != "" || (t.oauth2 && cred.Username != "" && cred.Password != "")
	if oauth && !t.noPOST(tr.realm) {
		resp, err := t.postToken(ctx, tr, cred)
		if !errors.Is(err, errPOSTNotFound) {
			return resp, err
		}
		t.markNoPOST(tr.realm)
		t.log.DebugContext(ctx, "token endpoint has no OAuth2 POST; falling back to GET", "realm", tr.realm.Redacted())
	}
	return t.getToken(ctx, tr, cred)
}

var errPOSTNotFound = errors.New("OAuth2 POST not found")

func (t *Transport) getToken(ctx context.Context, tr tokenRequest, cred Credential) (TokenResponse, error) {
	u := *tr.realm
	q := u.Query()
	if tr.service != "" {
		q.Set("service", tr.service)
	}
	for _, s := range tr.scopes {
		q.Add("scope", s)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return TokenResponse{}, fmt.Errorf("build token request: %w", err)
	}
	if cred.Username != "" || cred.Password != "" {
		req.SetBasicAuth(cred.Username, cred.Password)
	}
	resp, err := t.sendToken(req, tr.registry)
	if err != nil {
		return TokenResponse{}, err
	}
	return readTokenResponse(resp)
}

func (t *Transport) postToken(ctx context.Context, tr tokenRequest, cred Credential) (TokenResponse, error) {
	form := url.Values{}
	if cred.RefreshToken != "" {
		form.Set("grant_type", "refresh_token")
		form.Set("refresh_token", cred.RefreshToken)
	} else {
		form.Set("grant_type", "password")
		form.Set("username", cred.Username)
		form.Set("password", cred.Password)
	}
	form.Set("service", tr.service)
	form.Set("client_id", t.clientID)
	if len(tr.scopes) > 0 {
		form.Set("scope", strings.Join(tr.scopes, " "))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tr.realm.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return TokenResponse{}, fmt.Errorf("build token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := t.sendToken(req, tr.registry)
	if err != nil {
		return TokenResponse{}, err
	}
	if resp.StatusCode == http.StatusNotFound {
		drainClose(resp.Body)
		return TokenResponse{}, errPOSTNotFound
	}
	return readTokenResponse(resp)
}

// sendToken sends a token request; every redirect hop is held to the realm
// rules, its connections to the address rule of realmGuard, and once the chain has left the realm's origin no later hop
// carries the credentials, not even one back to the realm.
func (t *Transport) sendToken(req *http.Request, registry *url.URL) (*http.Response, error) {
	req = req.WithContext(context.WithValue(req.Context(), registryKey{}, registry))
	rt, precheck := t.base, false
	if !isPrivateHost(registry.Hostname()) {
		rt = t.guarded
		if rt == nil {
			rt, precheck = t.base, true
		}
	}
	if precheck {
		if err := t.guard.check(req.Context(), req.URL.Hostname(), registry); err != nil {
			return nil, err
		}
	}
	client := &http.Client{
		Transport: rt,
		CheckRedirect: func(next *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("token request: too many redirects")
			}
			if err := checkRealmURL(next.URL, registry); err != nil {
				return fmt.Errorf("token request redirect: %w", err)
			}
			if precheck {
				if err := t.guard.check(next.Context(), next.URL.Hostname(), registry); err != nil {
					return fmt.Errorf("token request redirect: %w", err)
				}
			}
			if leftOrigin(via[0].URL, append(urlsOf(via[1:]), next.URL)) {
				next.Header.Del("Authorization")
			}
			return nil
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %w", ErrTokenEndpoint, req.Method, req.URL.Redacted(), err)
	}
	return resp, nil
}

func urlsOf(reqs []*http.Request) []*url.URL {
	out := make([]*url.URL, len(reqs))
	for i, r := range reqs {
		out[i] = r.URL
	}
	return out
}

func readTokenResponse(resp *http.Response) (TokenResponse, error) {
	defer drainClose(resp.Body)
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse+1))
	if err != nil {
		return TokenResponse{}, fmt.Errorf("%w: read %s: %w", ErrTokenEndpoint, resp.Request.URL.Redacted(), err)
	}
	// Neither the body nor the server's reason phrase is quoted in an
	// error: a token endpoint may echo the credentials it refused, or
	// internal details.
	if resp.StatusCode != http.StatusOK {
		return TokenResponse{}, fmt.Errorf("%w: %s %s: status %d %s", ErrTokenEndpoint, resp.Request.Method,
			resp.Request.URL.Redacted(), resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	tr, err := DecodeTokenResponse(body)
	if err != nil {
		return TokenResponse{}, fmt.Errorf("%s %s: %w", resp.Request.Method, resp.Request.URL.Redacted(), err)
	}
	return tr, nil
}

// drainClose reads a little of an unwanted body so the connection can be
// reused, then closes it.
func drainClose(rc io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rc, 64<<10))
	_ = rc.Close()
}

func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(canonicalHostPort(a), canonicalHostPort(b))
}

// canonicalHostPort returns host:port with the scheme's default port filled in.
func canonicalHostPort(u *url.URL) string {
	host, port := u.Hostname(), u.Port()
	if port == "" {
		switch strings.ToLower(u.Scheme) {
		case "https":
			port = "443"
		case "http":
			port = "80"
		}
	}
	if strings.Contains(host, ":") {
		return "[" + strings.ToLower(host) + "]:" + port
	}
	return strings.ToLower(host) + ":" + port
}
