package broker

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/trustgate/trustgate/agentapi/wire"
)

// AdminClient calls the admin API, as `trustgate entry`, `jointoken` and
// `policy` do: through the local admin socket without a token when Socket
// is set, or at Server with the bearer Token.
type AdminClient struct {
	// Socket is the broker's admin socket; when set, Server and Token are
	// not used.
	Socket string
	// Server is the broker's base URL, e.g. http://127.0.0.1:8080.
	Server string
	// Token is the admin bearer token.
	Token string
	// HTTP is the client to use; nil means one with a 30 s timeout (over
	// Socket when that is set).
	HTTP *http.Client
}

// socketClient is an HTTP client whose every connection goes to the unix
// socket at path.
func socketClient(path string) *http.Client {
	d := net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// GetPolicy returns the resource policy in force and its revision.
func (c *AdminClient) GetPolicy(ctx context.Context) (string, int64, error) {
	var text string
	var rev int64
	err := c.roundTrip(ctx, http.MethodGet, "/kbs/v0/resource-policy", nil, func(resp *http.Response, data []byte) error {
		b, err := decodeBase64URL(string(data))
		if err != nil {
			return fmt.Errorf("decode policy: %w", err)
		}
		text = string(b)
		rev, _ = strconv.ParseInt(resp.Header.Get("Trustgate-Policy-Revision"), 10, 64)
		return nil
	})
	return text, rev, err
}

// SetPolicy puts text in force and returns its revision. A text that does
// not compile is refused with its line and column.
func (c *AdminClient) SetPolicy(ctx context.Context, text string) (int64, error) {
	var out struct {
		Revision int64 `json:"revision"`
	}
	err := c.do(ctx, http.MethodPost, "/kbs/v0/resource-policy", map[string]string{"policy": base64.RawURLEncoding.EncodeToString([]byte(text))}, &out)
	return out.Revision, err
}

// CreateEntry creates e and returns the stored entry.
func (c *AdminClient) CreateEntry(ctx context.Context, e Entry) (Entry, error) {
	var out Entry
	return out, c.do(ctx, http.MethodPost, "/admin/v1/entries", e, &out)
}

// ListEntries lists entries, filtered by parent and SPIFFE ID when set.
func (c *AdminClient) ListEntries(ctx context.Context, parentID, spiffeID string) ([]Entry, error) {
	q := url.Values{}
	if parentID != "" {
		q.Set("parent_id", parentID)
	}
	if spiffeID != "" {
		q.Set("spiffe_id", spiffeID)
	}
	var out EntryList
	err := c.do(ctx, http.MethodGet, "/admin/v1/entries?"+q.Encode(), nil, &out)
	return out.Entries, err
}

// DeleteEntry deletes the entry with the given ID.
func (c *AdminClient) DeleteEntry(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/admin/v1/entries/"+url.PathEscape(id), nil, nil)
}

// CreateJoinToken creates a join token.
func (c *AdminClient) CreateJoinToken(ctx context.Context, req JoinTokenRequest) (JoinTokenResponse, error) {
	var out JoinTokenResponse
	return out, c.do(ctx, http.MethodPost, "/admin/v1/join-tokens", req, &out)
}

func (c *AdminClient) do(ctx context.Context, method, path string, in, out any) error {
	return c.roundTrip(ctx, method, path, in, func(_ *http.Response, data []byte) error {
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
		return nil
	})
}

// roundTrip sends in as JSON and hands a successful answer to read.
func (c *AdminClient) roundTrip(ctx context.Context, method, path string, in any, read func(*http.Response, []byte) error) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	base := strings.TrimRight(c.Server, "/")
	if c.Socket != "" {
		// The host is a placeholder: every connection goes to the socket.
		base = "http://admin.sock"
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return fmt.Errorf("admin request: %w", err)
	}
	if c.Socket == "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	switch {
	case hc != nil:
	case c.Socket != "":
		hc = socketClient(c.Socket)
	default:
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var p Problem
		if json.Unmarshal(data, &p) == nil && p.Detail != "" {
			return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, p.Detail)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	return read(resp, data)
}

// ListAgents lists the attested agents (GET /admin/v1/agents).
func (c *AdminClient) ListAgents(ctx context.Context) ([]wire.Agent, error) {
	var out wire.AgentList
	err := c.do(ctx, http.MethodGet, wire.PathAdminAgents, nil, &out)
	return out.Agents, err
}

// EvictAgent evicts an agent (POST /admin/v1/agents/evict): it gets
// nothing more from the broker.
func (c *AdminClient) EvictAgent(ctx context.Context, spiffeID string) (wire.Agent, error) {
	var out wire.Agent
	err := c.do(ctx, http.MethodPost, wire.PathAdminEvict, wire.EvictRequest{SPIFFEID: spiffeID}, &out)
	return out, err
}
