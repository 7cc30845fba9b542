// Package wire holds the request and response bodies of the broker's agent
// API (issue 13), shared by the broker (broker/agentapi) and the node agent.
// It has no behaviour: structs and constants only.
//
// Every body is JSON. Binary values ([]byte fields: CSRs, certificates,
// public keys) are standard base64 of DER, as encoding/json writes []byte.
// Times are Unix seconds. Errors are RFC 7807 problem JSON, as on the rest
// of the broker.
//
// Authentication: PathSVID takes either the attestation token of an RCAR
// node attestation (Authorization: Bearer) or mTLS with the agent's current
// X.509-SVID; every other agent endpoint takes mTLS with the agent SVID only.
// An unknown or evicted agent gets 403 everywhere.
package wire

import "time"

// Agent API paths, served by the broker over HTTPS.
const (
	// PathSVID issues or renews the agent's own X.509-SVID (POST, SVIDRequest
	// -> SVIDResponse).
	PathSVID = "/agent/v1/svid"
	// PathEntries lists the entries the agent is authorized for, with long
	// poll (GET ?revision=<n>&wait=<duration> -> Entries).
	PathEntries = "/agent/v1/entries"
	// PathX509 signs workload X.509-SVIDs in a batch (POST, X509Request ->
	// X509Response).
	PathX509 = "/agent/v1/x509"
	// PathJWT signs one workload JWT-SVID (POST, JWTRequest -> JWTResponse).
	PathJWT = "/agent/v1/jwt"
	// PathBundle returns the trust domain's bundle (GET -> Bundle).
	PathBundle = "/agent/v1/bundle"

	// PathAdminAgents lists attested agents (GET -> AgentList), admin only.
	PathAdminAgents = "/admin/v1/agents"
	// PathAdminEvict evicts an agent (POST, EvictRequest -> Agent), admin
	// only.
	PathAdminEvict = "/admin/v1/agents/evict"
)

// Query parameters of PathEntries.
const (
	// QueryRevision is the revision the agent already has; when it is the
	// current one, the broker holds the request until the agent's
	// authorized set changes or QueryWait passes.
	QueryRevision = "revision"
	// QueryWait is how long the broker may hold the request, a Go duration
	// ("30s"); at most MaxWait, 0 or absent means answer at once.
	QueryWait = "wait"
)

// Limits.
const (
	// MaxWait bounds a long poll's wait.
	MaxWait = 60 * time.Second
	// MaxX509Requests bounds the CSRs of one X509Request.
	MaxX509Requests = 500
	// MaxAudiences bounds the audience of a JWTRequest.
	MaxAudiences = 16
)

// SVIDRequest is the body of POST PathSVID.
type SVIDRequest struct {
	// CSR is a PKCS#10 request, DER. Only its key is used: the broker sets
	// the SPIFFE ID (the agent ID the attestation proved) itself.
	CSR []byte `json:"csr"`
}

// SVIDResponse is the answer of POST PathSVID.
type SVIDResponse struct {
	// SPIFFEID is the agent ID the SVID carries.
	SPIFFEID string `json:"spiffe_id"`
	// Chain is the leaf then the intermediates, DER each. The root is in
	// the bundle.
	Chain [][]byte `json:"chain"`
	// ExpiresAt is the leaf's NotAfter.
	ExpiresAt int64 `json:"expires_at"`
}

// Selector is one SPIRE selector, e.g. {"type": "unix", "value": "uid:1000"}.
type Selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// Entry is a registration entry, as on the broker's admin API. TTLs are
// seconds; 0 means the broker's default.
type Entry struct {
	ID          string     `json:"id"`
	SPIFFEID    string     `json:"spiffe_id"`
	ParentID    string     `json:"parent_id"`
	Selectors   []Selector `json:"selectors"`
	X509SVIDTTL int64      `json:"x509_svid_ttl,omitempty"`
	JWTSVIDTTL  int64      `json:"jwt_svid_ttl,omitempty"`
	DNSNames    []string   `json:"dns_names,omitempty"`
	CreatedAt   int64      `json:"created_at,omitempty"`
}

// Entries is the answer of GET PathEntries.
type Entries struct {
	// Revision names this state of the agent's entries; pass it back as
	// QueryRevision to wait for the next change. It only grows.
	Revision int64 `json:"revision"`
	// Entries is every entry the agent is authorized for (parent = its ID
	// or one of its node aliases), ordered by ID.
	Entries []Entry `json:"entries"`
}

// X509Request is the body of POST PathX509.
type X509Request struct {
	// Requests holds 1 to MaxX509Requests CSRs.
	Requests []X509CSR `json:"requests"`
}

// X509CSR asks for one X.509-SVID.
type X509CSR struct {
	// EntryID names the authorized entry whose SPIFFE ID the SVID carries.
	EntryID string `json:"entry_id"`
	// CSR is a PKCS#10 request, DER. Its URI SAN, if any, must equal the
	// entry's SPIFFE ID.
	CSR []byte `json:"csr"`
}

// X509Response is the answer of POST PathX509.
type X509Response struct {
	// Results are in request order, one per X509CSR.
	Results []X509Result `json:"results"`
}

// X509Result is the outcome of one X509CSR: Chain and ExpiresAt, or Error.
type X509Result struct {
	EntryID string `json:"entry_id"`
	// Chain is the leaf then the intermediates, DER each.
	Chain [][]byte `json:"chain,omitempty"`
	// ExpiresAt is the leaf's NotAfter.
	ExpiresAt int64 `json:"expires_at,omitempty"`
	// Error says why this one was refused (unauthorized entry, bad CSR);
	// empty on success.
	Error string `json:"error,omitempty"`
}

// JWTRequest is the body of POST PathJWT.
type JWTRequest struct {
	// EntryID names the authorized entry whose SPIFFE ID is the subject.
	EntryID string `json:"entry_id"`
	// Audience is 1 to MaxAudiences values.
	Audience []string `json:"audience"`
}

// JWTResponse is the answer of POST PathJWT.
type JWTResponse struct {
	// Token is the JWT-SVID, a compact JWS.
	Token string `json:"token"`
	// ExpiresAt is the token's "exp".
	ExpiresAt int64 `json:"expires_at"`
}

// Bundle is the answer of GET PathBundle.
type Bundle struct {
	// TrustDomain is the trust domain's name, e.g. "example.org".
	TrustDomain string `json:"trust_domain"`
	// X509Authorities are the root CA certificates, DER each.
	X509Authorities [][]byte `json:"x509_authorities"`
	// JWTAuthorities maps each key ID to its PKIX public key, DER.
	JWTAuthorities map[string][]byte `json:"jwt_authorities"`
	// RefreshHintSeconds is how often to fetch the bundle again.
	RefreshHintSeconds int64 `json:"refresh_hint_seconds"`
	// Sequence grows whenever the bundle changes.
	Sequence uint64 `json:"sequence"`
}

// Agent is one attested agent on the admin API.
type Agent struct {
	// SPIFFEID is the agent ID.
	SPIFFEID string `json:"spiffe_id"`
	// Attestor is the node attestor that proved it (join_token, x509pop...).
	Attestor string `json:"attestor"`
	// Selectors are the node selectors the attestation produced.
	Selectors []Selector `json:"selectors"`
	// SerialNumber is the current agent SVID's serial, decimal.
	SerialNumber string `json:"serial_number,omitempty"`
	// ExpiresAt is the current agent SVID's NotAfter.
	ExpiresAt int64 `json:"expires_at"`
	// Evicted is true once an admin evicted the agent: it gets nothing more.
	Evicted bool `json:"evicted"`
	// CreatedAt and UpdatedAt are when the agent first attested and when
	// its record last changed.
	CreatedAt int64 `json:"created_at"`
	UpdatedAt int64 `json:"updated_at"`
}

// AgentList is the answer of GET PathAdminAgents.
type AgentList struct {
	Agents []Agent `json:"agents"`
}

// EvictRequest is the body of POST PathAdminEvict.
type EvictRequest struct {
	// SPIFFEID is the agent to evict.
	SPIFFEID string `json:"spiffe_id"`
}
