// Package k8spsat is SPIRE's k8s_psat node attestor: a node agent proves
// which Kubernetes pod, service account and node it runs as with a
// projected service-account token.
//
// In TokenReview mode the token is verified by the cluster's API server
// (authentication.k8s.io/v1 TokenReview, with audiences), the service
// account is checked against an allow list, the token's pod is fetched and
// its UID compared, and the pod's node is fetched. In offline mode the token
// is verified against the service-account issuer's JWKS, and pod and node
// come from the token's own kubernetes.io claims. Agent IDs are SPIRE's
// spiffe://<td>/spire/agent/k8s_psat/<cluster>/<node-uid> and selectors
// are SPIRE's k8s_psat:* set. docs/attestor-k8s_psat.md is the operator's
// reference.
package k8spsat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/store"
)

// Name is the attestor's name in the RCAR "tee" field and the selector type.
const Name = "k8s_psat"

// Keys of a TokenReview's status.user.extra for pod-bound tokens.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
)

const serviceAccountPrefix = "system:serviceaccount:"

// Evidence is the JSON the caller sends as tee-evidence.
type Evidence struct {
	// Cluster names the configured cluster the token comes from.
	Cluster string `json:"cluster"`
	// Token is the projected service-account token (a JWT).
	Token string `json:"token"`
}

// ParseEvidence decodes tee-evidence strictly: unknown fields, trailing
// data and missing fields are errors wrapping attest.ErrRejected.
func ParseEvidence(raw []byte) (Evidence, error) {
	var ev Evidence
	if len(bytes.TrimSpace(raw)) == 0 {
		return ev, reject("evidence is empty")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return Evidence{}, reject("decode evidence: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Evidence{}, reject("evidence has data after the JSON object")
	}
	switch {
	case ev.Cluster == "":
		return Evidence{}, reject("evidence has no cluster")
	case ev.Token == "":
		return Evidence{}, reject("evidence has no token")
	}
	return ev, nil
}

// Attestor verifies k8s_psat evidence. It is safe for concurrent use.
type Attestor struct {
	clusters map[string]*cluster
	td       spiffeid.TrustDomain
	log      *slog.Logger
}

var _ attest.Attestor = (*Attestor)(nil)

// New validates cfg, builds one Kubernetes client (or JWKS source) per
// cluster and returns the attestor for trust domain td. It makes no
// network calls. A nil log discards logs.
func New(cfg Config, td spiffeid.TrustDomain, log *slog.Logger) (*Attestor, error) {
	if td.IsZero() {
		return nil, errors.New("k8s_psat: trust domain is empty")
	}
	clusters, err := cfg.build()
	if err != nil {
		return nil, fmt.Errorf("k8s_psat: invalid configuration: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Attestor{clusters: clusters, td: td, log: log.With("attestor", Name)}, nil
}

// Name returns "k8s_psat".
func (a *Attestor) Name() string { return Name }

// Attest verifies the token in evidence and returns the agent's SPIFFE ID
// and selectors. The challenge is not part of the token: the RCAR session
// and its report data bind the exchange, and projected tokens are short-
// lived and audience-bound.
func (a *Attestor) Attest(ctx context.Context, ch attest.Challenge, evidence json.RawMessage) (attest.Result, error) {
	ev, err := ParseEvidence(evidence)
	if err != nil {
		return attest.Result{}, err
	}
	cl := a.clusters[ev.Cluster]
	if cl == nil {
		return attest.Result{}, reject("cluster %q is not configured", ev.Cluster)
	}
	var res attest.Result
	if cl.offline != nil {
		res, err = a.attestOffline(ctx, cl, ev.Token)
	} else {
		res, err = a.attestOnline(ctx, cl, ev.Token)
	}
	if err != nil {
		a.log.Debug("attestation failed", "peer", ch.Peer, "cluster", cl.name, "err", err)
		return attest.Result{}, err
	}
	a.log.Debug("attested", "peer", ch.Peer, "cluster", cl.name, "spiffe_id", res.SPIFFEID)
	return res, nil
}

// agent is what a verified token says about its bearer.
type agent struct {
	namespace, serviceAccount string
	podName, podUID           string
	nodeName, nodeUID, nodeIP string
	podLabels, nodeLabels     map[string]string
}

func (a *Attestor) attestOnline(ctx context.Context, cl *cluster, token string) (attest.Result, error) {
	review, err := a.review(ctx, cl, token)
	if err != nil {
		return attest.Result{}, err
	}
	ag := agent{}
	ag.namespace, ag.serviceAccount, err = serviceAccount(review.User.Username)
	if err != nil {
		return attest.Result{}, err
	}
	if err := cl.checkAllowed(ag.namespace, ag.serviceAccount); err != nil {
		return attest.Result{}, err
	}
	if ag.podName, err = singleExtra(review.User.Extra, extraPodName); err != nil {
		return attest.Result{}, err
	}
	if ag.podUID, err = singleExtra(review.User.Extra, extraPodUID); err != nil {
		return attest.Result{}, err
	}

	pod, err := get(ctx, cl, "pod "+ag.namespace+"/"+ag.podName, func(ctx context.Context) (*podObject, error) {
		return cl.client.getPod(ctx, ag.namespace, ag.podName)
	})
	if err != nil {
		return attest.Result{}, err
	}
	if pod.Metadata.UID != ag.podUID {
		return attest.Result{}, reject("pod %s/%s has UID %q but the token is bound to pod UID %q", ag.namespace, ag.podName, pod.Metadata.UID, ag.podUID)
	}
	ag.nodeName = pod.Spec.NodeName
	if ag.nodeName == "" {
		return attest.Result{}, reject("pod %s/%s is not scheduled on a node", ag.namespace, ag.podName)
	}
	node, err := get(ctx, cl, "node "+ag.nodeName, func(ctx context.Context) (*nodeObject, error) {
		return cl.client.getNode(ctx, ag.nodeName)
	})
	if err != nil {
		return attest.Result{}, err
	}
	ag.nodeUID = node.Metadata.UID
	if ag.nodeUID == "" {
		return attest.Result{}, fmt.Errorf("k8s_psat: cluster %q: node %q has no UID in the API server's answer", cl.name, ag.nodeName)
	}
	ag.nodeIP = pod.Status.HostIP
	ag.podLabels, ag.nodeLabels = pod.Metadata.Labels, node.Metadata.Labels
	return a.result(cl, ag)
}

// review asks the API server whether token is valid for the cluster's
// audience.
func (a *Attestor) review(ctx context.Context, cl *cluster, token string) (tokenReviewStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	tr, err := cl.client.createTokenReview(ctx, token, cl.audience)
	if err != nil {
		return tokenReviewStatus{}, fmt.Errorf("k8s_psat: cluster %q: TokenReview: %w", cl.name, err)
	}
	st := tr.Status
	// An invalid token comes back unauthenticated, usually with an error
	// string; that is the caller's fault, not the API server's.
	if !st.Authenticated {
		if st.Error != "" {
			return st, reject("cluster %q: token not authenticated: %s", cl.name, st.Error)
		}
		return st, reject("cluster %q: token not authenticated", cl.name)
	}
	if st.Error != "" {
		return st, fmt.Errorf("k8s_psat: cluster %q: TokenReview reports an error for an authenticated token: %s", cl.name, st.Error)
	}
	// An audience-aware authenticator names the audiences it matched; an
	// empty intersection means the token was not meant for us (or the
	// authenticator ignored the audiences we asked for).
	if len(cl.audience) > 0 && !slices.ContainsFunc(st.Audiences, func(s string) bool { return slices.Contains(cl.audience, s) }) {
		return st, reject("cluster %q: token audiences %q do not include any of %q", cl.name, st.Audiences, cl.audience)
	}
	return st, nil
}

// get runs one API read with the cluster's timeout, turning "not found"
// into a rejection and anything else into a server error.
func get[T any](ctx context.Context, cl *cluster, what string, f func(context.Context) (*T, error)) (*T, error) {
	ctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	v, err := f(ctx)
	switch {
	case isNotFound(err):
		return nil, reject("cluster %q: %s not found", cl.name, what)
	case err != nil:
		return nil, fmt.Errorf("k8s_psat: cluster %q: get %s: %w", cl.name, what, err)
	case v == nil:
		return nil, fmt.Errorf("k8s_psat: cluster %q: get %s returned nothing", cl.name, what)
	}
	return v, nil
}

func (a *Attestor) attestOffline(ctx context.Context, cl *cluster, token string) (attest.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	claims, err := cl.offline.verify(ctx, token, cl.audience, time.Now())
	if errors.Is(err, errKeysUnavailable) {
		return attest.Result{}, fmt.Errorf("k8s_psat: cluster %q: %w", cl.name, err)
	}
	if err != nil {
		return attest.Result{}, reject("cluster %q: %v", cl.name, err)
	}
	ag := agent{namespace: claims.K8s.Namespace}
	if sa := claims.K8s.ServiceAccount; sa != nil {
		ag.serviceAccount = sa.Name
	}
	ns, name, err := serviceAccount(claims.Subject)
	if err != nil {
		return attest.Result{}, err
	}
	if ns != ag.namespace || name != ag.serviceAccount {
		return attest.Result{}, reject("token subject %q disagrees with its kubernetes.io claims (%s:%s)", claims.Subject, ag.namespace, ag.serviceAccount)
	}
	if err := cl.checkAllowed(ag.namespace, ag.serviceAccount); err != nil {
		return attest.Result{}, err
	}
	pod := claims.K8s.Pod
	if pod == nil || pod.Name == "" || pod.UID == "" {
		return attest.Result{}, reject("token is not bound to a pod (no kubernetes.io.pod name and uid)")
	}
	ag.podName, ag.podUID = pod.Name, pod.UID
	if node := claims.K8s.Node; node != nil {
		ag.nodeName, ag.nodeUID = node.Name, node.UID
	}
	if ag.nodeUID == "" && !cl.usePodUID {
		return attest.Result{}, reject("token has no kubernetes.io.node uid (Kubernetes 1.30 or later adds it), which the agent ID needs; or set use_pod_uid_for_agent_id")
	}
	return a.result(cl, ag)
}

// result builds the agent ID and SPIRE's selectors.
func (a *Attestor) result(cl *cluster, ag agent) (attest.Result, error) {
	segments := []string{"spire", "agent", Name, cl.name, ag.nodeUID}
	if cl.usePodUID {
		segments = []string{"spire", "agent", Name, cl.name, "pod", ag.podUID}
	}
	id, err := spiffeid.FromSegments(a.td, segments...)
	if err != nil {
		return attest.Result{}, reject("agent ID from %q: %v", strings.Join(segments, "/"), err)
	}
	var sel []store.Selector
	add := func(kind string, values ...string) {
		sel = append(sel, store.Selector{Type: Name, Value: kind + ":" + strings.Join(values, ":")})
	}
	add("cluster", cl.name)
	add("agent_ns", ag.namespace)
	add("agent_sa", ag.serviceAccount)
	add("agent_pod_name", ag.podName)
	add("agent_pod_uid", ag.podUID)
	if ag.nodeIP != "" {
		add("agent_node_ip", ag.nodeIP)
	}
	if ag.nodeName != "" {
		add("agent_node_name", ag.nodeName)
	}
	if ag.nodeUID != "" {
		add("agent_node_uid", ag.nodeUID)
	}
	for _, k := range sortedKeys(ag.nodeLabels) {
		if cl.nodeLabelKeys[k] {
			add("agent_node_label", k, ag.nodeLabels[k])
		}
	}
	for _, k := range sortedKeys(ag.podLabels) {
		if cl.podLabelKeys[k] {
			add("agent_pod_label", k, ag.podLabels[k])
		}
	}
	return attest.Result{SPIFFEID: id.String(), Selectors: sel}, nil
}

func (cl *cluster) checkAllowed(namespace, name string) error {
	if !cl.allowed[namespace+":"+name] {
		return reject("cluster %q: service account %s:%s is not in service_account_allow_list", cl.name, namespace, name)
	}
	return nil
}

// serviceAccount splits "system:serviceaccount:<namespace>:<name>".
func serviceAccount(username string) (namespace, name string, err error) {
	rest, ok := strings.CutPrefix(username, serviceAccountPrefix)
	if !ok {
		return "", "", reject("token user %q is not a service account", username)
	}
	namespace, name, ok = strings.Cut(rest, ":")
	if !ok || namespace == "" || name == "" || strings.Contains(name, ":") {
		return "", "", reject("token user %q is not %s<namespace>:<name>", username, serviceAccountPrefix)
	}
	return namespace, name, nil
}

// singleExtra returns the one value of a TokenReview user extra.
func singleExtra(extra map[string][]string, key string) (string, error) {
	v := extra[key]
	if len(v) != 1 || v[0] == "" {
		return "", reject("token review has %d values for %s, want one non-empty value (is the token a projected, pod-bound token?)", len(v), key)
	}
	return v[0], nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func reject(format string, args ...any) error {
	return fmt.Errorf("%w: k8s_psat: %s", attest.ErrRejected, fmt.Sprintf(format, args...))
}
