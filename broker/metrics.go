package broker

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Attestation results, the "result" label of
// trustgate_broker_attestations_total.
const (
	attestOK       = "ok"       // a token was issued
	attestRejected = "rejected" // evidence, nonce or session refused (401)
	attestInvalid  = "invalid"  // a malformed request (4xx but 401)
	attestError    = "error"    // the broker failed (5xx)
)

// serverMetrics are the broker's request metrics. Every series whose
// labels are known at start-up is registered at zero, so that dashboards
// and alerts see them before the first event.
type serverMetrics struct {
	attestations *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	rateLimited  *prometheus.CounterVec
	attestors    map[string]bool
	plugins      map[string]bool
}

func newServerMetrics(reg prometheus.Registerer, attestors []string, plugins map[string]bool) (*serverMetrics, error) {
	m := &serverMetrics{
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "trustgate", Subsystem: "broker", Name: "attestations_total",
			Help: "POST /kbs/v0/attest by attestor (the session's tee; \"unknown\" before a session is found) and result (ok, rejected, invalid, error).",
		}, []string{"attestor", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "trustgate", Subsystem: "broker", Name: "request_duration_seconds",
			Help:    "Time to answer an API request, by route (the mux pattern, or /kbs/v0/<plugin>/ for plugins).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "trustgate", Subsystem: "broker", Name: "rate_limited_total",
			Help: "Requests refused with 429, by route group (rcar: auth and attest; token: /token; agent: POST /agent/v1/svid) and limit (client or global).",
		}, []string{"group", "limit"}),
		attestors: map[string]bool{},
		plugins:   plugins,
	}
	for _, a := range append([]string{"unknown"}, attestors...) {
		m.attestors[a] = true
		for _, r := range []string{attestOK, attestRejected, attestInvalid, attestError} {
			m.attestations.WithLabelValues(a, r)
		}
	}
	for _, g := range []string{"rcar", "token", "agent"} {
		for _, l := range []string{"client", "global"} {
			m.rateLimited.WithLabelValues(g, l)
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.attestations, m.latency, m.rateLimited} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("broker: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// attestorKey carries the session's attestor out of the attest handler.
type attestorKey struct{}

// noteAttestor records which attestor the session of an attest request
// named, for its metric.
func noteAttestor(r *http.Request, name string) {
	if p, ok := r.Context().Value(attestorKey{}).(*string); ok {
		*p = name
	}
}

// countAttestations wraps the attest handler to count its outcomes.
func (m *serverMetrics) countAttestations(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := "unknown"
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h(rec, r.WithContext(context.WithValue(r.Context(), attestorKey{}, &name)))
		if !m.attestors[name] {
			name = "unknown"
		}
		result := attestOK
		switch s := rec.status; {
		case s == http.StatusUnauthorized:
			result = attestRejected
		case s >= 500:
			result = attestError
		case s >= 400:
			result = attestInvalid
		}
		m.attestations.WithLabelValues(name, result).Inc()
	}
}

// observe records one request's latency under its route.
func (m *serverMetrics) observe(r *http.Request, plugin string, took time.Duration) {
	route := r.Pattern
	switch {
	case plugin != "" && m.plugins[plugin]:
		route = "/kbs/v0/" + plugin + "/"
	case plugin != "":
		route = "/kbs/v0/unknown/"
	case route == "" || route == "/":
		route = "other"
	}
	m.latency.WithLabelValues(route).Observe(took.Seconds())
}

// statusRecorder remembers the status code written through it.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// limitGroup names a limiter for the rate_limited_total metric.
func (s *Server) limitGroup(l *limiter) string {
	switch l {
	case s.tokenLimit:
		return "token"
	case s.agentLimit:
		return "agent"
	}
	return "rcar"
}

// pluginOf returns the plugin name of a /kbs/v0/<plugin>/ path that is not
// a reserved name, or "".
func pluginOf(escapedPath string) string {
	rest, ok := strings.CutPrefix(escapedPath, "/kbs/v0/")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, "/")
	for _, n := range ReservedNames {
		if n == name {
			return ""
		}
	}
	return name
}
