package broker

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustgate/trustgate/client/auth"
)

// auditor writes one record per plugin request decision and counts them.
type auditor struct {
	log      *slog.Logger
	requests *prometheus.CounterVec
	tokens   *prometheus.CounterVec
	plugins  map[string]bool
}

func newAuditor(log *slog.Logger, reg prometheus.Registerer, plugins map[string]bool) (*auditor, error) {
	a := &auditor{log: log, plugins: plugins,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "trustgate", Subsystem: "broker", Name: "plugin_requests_total",
			Help: "Requests to /kbs/v0 plugins by plugin, method and verdict (allowed, admin, denied, unauthenticated, invalid, error).",
		}, []string{"plugin", "method", "verdict"}),
	}
	a.tokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "trustgate", Subsystem: "broker", Name: "token_requests_total",
		Help: "Token service requests (/token) by verdict (granted, partial, none, unauthenticated, invalid, error).",
	}, []string{"verdict"})
	if reg != nil {
		for _, c := range []prometheus.Collector{a.requests, a.tokens} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("broker: register metrics: %w", err)
			}
		}
	}
	return a, nil
}

// recordToken writes the audit record of one token service request: who,
// for which service, the scopes requested and granted, and the verdict.
func (a *auditor) recordToken(r *http.Request, o *tokenOutcome, took time.Duration) {
	a.tokens.WithLabelValues(o.verdict).Inc()
	level := slog.LevelInfo
	if o.err != nil {
		level = slog.LevelError
	}
	ctx := context.Background()
	if !a.log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 12)
	if c := o.caller; c != nil {
		attrs = append(attrs, slog.String("spiffe_id", c.caller.SPIFFEID), slog.String("credential", c.kind.String()))
	}
	requested := make([]string, len(o.requested))
	for i, sc := range o.requested {
		requested[i] = sc.String()
	}
	granted := make([]string, len(o.granted))
	for i, g := range o.granted {
		granted[i] = auth.Scope{Type: g.Type, Class: g.Class, Name: g.Name, Actions: g.Actions}.String()
	}
	attrs = append(attrs,
		slog.String("service", o.service),
		slog.Any("requested", requested),
		slog.Any("granted", granted),
		slog.String("verdict", o.verdict),
		slog.Int("status", o.status),
		slog.String("peer", r.RemoteAddr),
		slog.Duration("took", took),
	)
	if o.verdict == TokenVerdictGranted || o.verdict == TokenVerdictPartial || o.verdict == TokenVerdictNone {
		attrs = append(attrs, slog.Int64("policy_revision", o.revision))
	}
	if o.err != nil {
		attrs = append(attrs, slog.String("err", o.err.Error()))
	}
	a.log.LogAttrs(ctx, level, "token request", attrs...)
}

// record writes the audit record of one plugin request: who (the SPIFFE ID
// of an attested caller, the subject of an admin), what (plugin, method,
// path), the verdict and the policy's reason.
func (a *auditor) record(r *http.Request, o *outcome, took time.Duration) {
	plugin := o.plugin
	if !a.plugins[plugin] {
		plugin = "unknown" // keeps label values to the registered names
	}
	method := o.method
	if !strings.Contains("GET POST PUT DELETE", method) || method == "" {
		method = "other"
	}
	a.requests.WithLabelValues(plugin, method, o.verdict).Inc()
	level := slog.LevelInfo
	if o.err != nil {
		level = slog.LevelError
	}
	ctx := context.Background()
	if !a.log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 12)
	if c := o.caller; c != nil {
		if c.Admin {
			attrs = append(attrs, slog.String("admin", c.Subject))
		} else {
			attrs = append(attrs, slog.String("spiffe_id", c.SPIFFEID), slog.String("tee", c.TEE))
		}
	}
	attrs = append(attrs,
		slog.String("plugin", o.plugin),
		slog.String("method", o.method),
		slog.String("path", strings.Join(o.path, "/")),
		slog.String("verdict", o.verdict),
		slog.Int("status", o.status),
		slog.String("peer", r.RemoteAddr),
		slog.Duration("took", took),
	)
	if o.reason != "" {
		attrs = append(attrs, slog.String("reason", o.reason))
	}
	if o.verdict == VerdictAllowed || o.verdict == VerdictDenied {
		attrs = append(attrs, slog.Int64("policy_revision", o.revision))
	}
	if o.err != nil {
		attrs = append(attrs, slog.String("err", o.err.Error()))
	}
	a.log.LogAttrs(ctx, level, "plugin request", attrs...)
}
