package nripolicy

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// Subject is a plugin as the gateway knows it.
type Subject struct {
	// Plugin is the name it registered under, "<index>-<name>".
	Plugin string
	// Role is the role its key maps to.
	Role string
	// Fingerprint identifies its key; empty for a plugin without one.
	Fingerprint string
	// Policy is its role's policy.
	Policy *Policy
}

// UpstreamRole is the role in audit records of plugins that reached the
// runtime without coming through the gateway.
const UpstreamRole = "(upstream)"

// UnauthenticatedRole is the role in audit records of a connection refused
// before its key mapped to a role.
const UnauthenticatedRole = "(unauthenticated)"

// Decision is one audited verdict on one field.
type Decision struct {
	Subject Subject
	// Event is "create", "update", "unsolicited-update", "register" or
	// "handshake".
	Event     string
	Pod       string // namespace/name
	Container string // ID
	// Field and Key name what was changed, e.g. "Mounts" and "/data".
	Field, Key string
	Allowed    bool
	Reason     string
}

// Audit writes one structured record per decision and counts decisions per
// role and verdict.
type Audit struct {
	log       *slog.Logger
	decisions *prometheus.CounterVec
}

// NewAudit returns an Audit logging to log and registering its counter on
// reg (which may be nil).
func NewAudit(log *slog.Logger, reg prometheus.Registerer) (*Audit, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "trustgate_nri_decisions_total",
		Help: "NRI mutation policy decisions, by plugin role and verdict.",
	}, []string{"role", "verdict"})
	if reg != nil {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register audit metrics: %w", err)
		}
	}
	return &Audit{log: log, decisions: c}, nil
}

// Init registers the decision counter at zero for each role and verdict,
// so that dashboards and alerts see every series from the start.
func (a *Audit) Init(roles ...string) {
	for _, r := range roles {
		a.decisions.WithLabelValues(r, "allow")
		a.decisions.WithLabelValues(r, "deny")
	}
}

// Record audits one decision.
func (a *Audit) Record(ctx context.Context, d Decision) {
	verdict := "deny"
	if d.Allowed {
		verdict = "allow"
	}
	a.decisions.WithLabelValues(d.Subject.Role, verdict).Inc()
	lv := slog.LevelInfo
	if !d.Allowed {
		lv = slog.LevelWarn
	}
	a.log.LogAttrs(ctx, lv, "nri policy decision",
		slog.String("audit", "nri"),
		slog.String("verdict", verdict),
		slog.String("plugin", d.Subject.Plugin),
		slog.String("key_fingerprint", d.Subject.Fingerprint),
		slog.String("role", d.Subject.Role),
		slog.String("event", d.Event),
		slog.String("pod", d.Pod),
		slog.String("container", d.Container),
		slog.String("field", d.Field),
		slog.String("key", d.Key),
		slog.String("reason", d.Reason),
	)
}
