package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/trustgate/trustgate/agentapi/wire"
)

// AdminClient calls the admin API, as `trustgate entry` and
// `trustgate jointoken` do.
type AdminClient struct {
	// Server is the broker's base URL, e.g. http://127.0.0.1:8080.
	Server string
	// Token is the admin bearer token.
	Token string
	// HTTP is the client to use; nil means one with a 30 s timeout.
	HTTP *http.Client
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
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.Server, "/")+path, body)
	if err != nil {
		return fmt.Errorf("admin request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
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
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
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
