package k8spsat

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
	"os"
	"strings"
)

// maxAPIResponse bounds an API server answer; pods and nodes are far
// smaller.
const maxAPIResponse = 8 << 20

// apiClient is the little of the Kubernetes API the attestor uses
// (TokenReview create, pod get, node get), as JSON over HTTPS. It is not
// client-go: every process of the single trustgate binary, node agents
// included, would map and initialize client-go's hundreds of API types,
// the largest share of the binary, for three requests made by the broker.
type apiClient struct {
	server *url.URL
	http   *http.Client
	// token returns the bearer credential for a request; nil means none
	// (a client certificate or plugin authenticates the broker).
	token func() (string, error)
	// plugin is the kubeconfig's credential plugin, or nil.
	plugin *execPlugin
}

// newAPIClient returns a client of the API server at server (https),
// verified and authenticated by tlsConf, with token (or nil) as the bearer
// credential.
func newAPIClient(server string, tlsConf *tls.Config, token func() (string, error)) (*apiClient, error) {
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("API server %q: want an https URL, such as \"https://kubernetes.default.svc\"", server)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = tlsConf
	return &apiClient{server: u, http: &http.Client{Transport: t}, token: token}, nil
}

// tokenFile returns a credential read from path on every request, so a
// rotated token (a projected service-account token) is used at once.
func tokenFile(path string) func() (string, error) {
	return func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("read bearer token: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("bearer token file %s is empty", path)
		}
		return tok, nil
	}
}

// apiStatusError is an API server's refusal: its HTTP status and the
// message of its Status object.
type apiStatusError struct {
	Code    int
	Reason  string
	Message string
}

func (e *apiStatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("API server answered %d %s", e.Code, http.StatusText(e.Code))
	}
	return fmt.Sprintf("API server answered %d: %s", e.Code, e.Message)
}

// isNotFound reports whether err is the API server's 404.
func isNotFound(err error) bool {
	var se *apiStatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// do sends in (nil: no body) to the path made of segments and decodes a
// 2xx answer into out. A segment may not hold a slash or be "." or "..":
// names never do. A credential plugin's credential that the API server
// refuses (401) is replaced once, as client-go does, and the request sent
// again with the new one.
func (c *apiClient) do(ctx context.Context, method string, in, out any, segments ...string) error {
	for _, s := range segments {
		if s == "" || s == "." || s == ".." || strings.Contains(s, "/") {
			return fmt.Errorf("invalid name %q in an API path", s)
		}
	}
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = b
	}
	u := *c.server
	u.Path += "/" + strings.Join(segments, "/")
	var cred *execCredential
	if c.plugin != nil {
		var err error
		if cred, err = c.plugin.credential(ctx); err != nil {
			return err
		}
	}
	status, data, err := c.send(ctx, method, u.String(), body, cred)
	if err == nil && status == http.StatusUnauthorized && cred != nil {
		if cred, err = c.plugin.refused(ctx, cred); err != nil {
			return fmt.Errorf("API server refused the credential plugin's credential (401), and running it again failed: %w", err)
		}
		status, data, err = c.send(ctx, method, u.String(), body, cred)
	}
	if err != nil {
		return err
	}
	if status < 200 || status > 299 {
		se := &apiStatusError{Code: status}
		var st struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		}
		if json.Unmarshal(data, &st) == nil {
			se.Reason, se.Message = st.Reason, st.Message
		}
		return se
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}

// send makes one request, authenticated by cred (a credential plugin's)
// or else by c.token, and returns the answer's status and body.
func (c *apiClient) send(ctx context.Context, method, target string, body []byte, cred *execCredential) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, r)
	if err != nil {
		return 0, nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "trustgate-k8s_psat")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.http
	switch {
	case cred != nil:
		if cred.token != "" {
			req.Header.Set("Authorization", "Bearer "+cred.token)
		}
		if cred.transport != nil {
			withCert := *c.http
			withCert.Transport = cred.transport
			hc = &withCert
		}
	case c.token != nil:
		tok, err := c.token()
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIResponse+1))
	if err != nil {
		return 0, nil, fmt.Errorf("read answer: %w", err)
	}
	if len(data) > maxAPIResponse {
		return 0, nil, fmt.Errorf("answer is larger than %d bytes", maxAPIResponse)
	}
	return resp.StatusCode, data, nil
}

// The fields of authentication.k8s.io/v1 TokenReview, core/v1 Pod and
// core/v1 Node that the attestor reads.
type (
	tokenReview struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Spec       tokenReviewSpec   `json:"spec"`
		Status     tokenReviewStatus `json:"status,omitzero"`
	}
	tokenReviewSpec struct {
		Token     string   `json:"token"`
		Audiences []string `json:"audiences,omitempty"`
	}
	tokenReviewStatus struct {
		Authenticated bool     `json:"authenticated"`
		User          userInfo `json:"user"`
		Audiences     []string `json:"audiences"`
		Error         string   `json:"error"`
	}
	userInfo struct {
		Username string              `json:"username"`
		Extra    map[string][]string `json:"extra"`
	}
	objectMeta struct {
		Name   string            `json:"name"`
		UID    string            `json:"uid"`
		Labels map[string]string `json:"labels"`
	}
	podObject struct {
		Metadata objectMeta `json:"metadata"`
		Spec     struct {
			NodeName string `json:"nodeName"`
		} `json:"spec"`
		Status struct {
			HostIP string `json:"hostIP"`
		} `json:"status"`
	}
	nodeObject struct {
		Metadata objectMeta `json:"metadata"`
	}
)

// createTokenReview asks the API server to review token for audiences.
func (c *apiClient) createTokenReview(ctx context.Context, token string, audiences []string) (*tokenReview, error) {
	in := tokenReview{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview", Spec: tokenReviewSpec{Token: token, Audiences: audiences}}
	var out tokenReview
	if err := c.do(ctx, http.MethodPost, &in, &out, "apis", "authentication.k8s.io", "v1", "tokenreviews"); err != nil {
		return nil, err
	}
	return &out, nil
}

// getPod reads pod namespace/name.
func (c *apiClient) getPod(ctx context.Context, namespace, name string) (*podObject, error) {
	var out podObject
	if err := c.do(ctx, http.MethodGet, nil, &out, "api", "v1", "namespaces", namespace, "pods", name); err != nil {
		return nil, err
	}
	return &out, nil
}

// getNode reads node name.
func (c *apiClient) getNode(ctx context.Context, name string) (*nodeObject, error) {
	var out nodeObject
	if err := c.do(ctx, http.MethodGet, nil, &out, "api", "v1", "nodes", name); err != nil {
		return nil, err
	}
	return &out, nil
}
