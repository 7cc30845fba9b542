package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// DefaultExpiresIn is the token lifetime assumed when a token response has no
// expires_in, as the token spec prescribes.
const DefaultExpiresIn = 60 * time.Second

// maxExpiresIn bounds expires_in so that absurd values cannot overflow.
const maxExpiresIn = 366 * 24 * time.Hour

// maxTokenResponse bounds the size of a token response body.
const maxTokenResponse = 1 << 20

// TokenResponse is a decoded token endpoint answer (token spec, "Token
// Response Fields"; OAuth2 spec, "Token Response Fields").
type TokenResponse struct {
	// Token is the bearer token (from "token", or "access_token" when
	// "token" is absent).
	Token string
	// ExpiresIn is the lifetime; DefaultExpiresIn when the server gave none.
	ExpiresIn time.Duration
	// IssuedAt is when the server issued the token; zero when absent.
	IssuedAt time.Time
	// RefreshToken is an OAuth2 refresh token, if the server issued one.
	RefreshToken string
}

// ErrInvalidTokenResponse reports a token endpoint answer that cannot be used.
var ErrInvalidTokenResponse = errors.New("invalid token response")

// DecodeTokenResponse decodes and checks a token endpoint's JSON answer. The
// token must be usable as an HTTP header value (printable ASCII, no spaces).
func DecodeTokenResponse(body []byte) (TokenResponse, error) {
	if len(body) > maxTokenResponse {
		return TokenResponse{}, fmt.Errorf("%w: larger than %d bytes", ErrInvalidTokenResponse, maxTokenResponse)
	}
	var raw struct {
		Token        string   `json:"token"`
		AccessToken  string   `json:"access_token"`
		ExpiresIn    *float64 `json:"expires_in"`
		IssuedAt     string   `json:"issued_at"`
		RefreshToken string   `json:"refresh_token"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raw); err != nil {
		// Errors name a position or a type, never the body's content.
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return TokenResponse{}, fmt.Errorf("%w: malformed JSON at byte %d", ErrInvalidTokenResponse, syn.Offset)
		case errors.As(err, &typ):
			return TokenResponse{}, fmt.Errorf("%w: %s is a JSON %s", ErrInvalidTokenResponse, typ.Field, typ.Value)
		}
		return TokenResponse{}, fmt.Errorf("%w: malformed JSON", ErrInvalidTokenResponse)
	}
	tr := TokenResponse{Token: raw.Token, RefreshToken: raw.RefreshToken, ExpiresIn: DefaultExpiresIn}
	if tr.Token == "" {
		tr.Token = raw.AccessToken
	}
	if tr.Token == "" {
		return TokenResponse{}, fmt.Errorf("%w: no token or access_token", ErrInvalidTokenResponse)
	}
	if !isHeaderToken(tr.Token) {
		return TokenResponse{}, fmt.Errorf("%w: token holds bytes not allowed in a header", ErrInvalidTokenResponse)
	}
	if tr.RefreshToken != "" && !isHeaderToken(tr.RefreshToken) {
		return TokenResponse{}, fmt.Errorf("%w: refresh_token holds bytes not allowed in a form", ErrInvalidTokenResponse)
	}
	if raw.ExpiresIn != nil {
		secs := *raw.ExpiresIn
		switch {
		case secs < 0:
			return TokenResponse{}, fmt.Errorf("%w: negative expires_in %v", ErrInvalidTokenResponse, secs)
		case secs > maxExpiresIn.Seconds():
			tr.ExpiresIn = maxExpiresIn
		case secs > 0:
			tr.ExpiresIn = time.Duration(secs * float64(time.Second))
		}
	}
	if raw.IssuedAt != "" {
		t, err := time.Parse(time.RFC3339, raw.IssuedAt)
		if err != nil {
			return TokenResponse{}, fmt.Errorf("%w: issued_at is not an RFC 3339 time", ErrInvalidTokenResponse)
		}
		tr.IssuedAt = t
	}
	return tr, nil
}

// Expiry returns when a token fetched at (local) time fetched stops being
// valid: expires_in after the fetch, or after issued_at when the server says
// it issued the token earlier than that (a cached token). A server clock that
// runs ahead never extends the lifetime.
func (tr TokenResponse) Expiry(fetched time.Time) time.Time {
	exp := fetched.Add(tr.ExpiresIn)
	if !tr.IssuedAt.IsZero() {
		if byIssue := tr.IssuedAt.Add(tr.ExpiresIn); byIssue.Before(exp) {
			exp = byIssue
		}
	}
	return exp
}

// isHeaderToken reports whether s is non-empty printable ASCII without
// spaces, safe to place after "Bearer ".
func isHeaderToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}
