package serve

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"
)

// ReadyTimeout bounds one readiness check.
const ReadyTimeout = 2 * time.Second

// Healthz answers liveness probes: 200 {"status":"ok"} while the process
// serves HTTP at all.
func Healthz(w http.ResponseWriter, _ *http.Request) {
	writeStatus(w, http.StatusOK, map[string]string{"status": "ok"})
}

// Readyz answers readiness probes: 200 {"status":"ready"} when ready
// returns nil within ReadyTimeout, else 503 with the reason. A failed check
// is logged at WARN.
func Readyz(log *slog.Logger, ready func(context.Context) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
		defer cancel()
		if err := ready(ctx); err != nil {
			log.Warn("not ready", "reason", err.Error())
			writeStatus(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
			return
		}
		writeStatus(w, http.StatusOK, map[string]string{"status": "ready"})
	}
}

// HandleHealth registers GET /healthz and GET /readyz on mux.
func HandleHealth(mux *http.ServeMux, log *slog.Logger, ready func(context.Context) error) {
	mux.HandleFunc("GET /healthz", Healthz)
	mux.Handle("GET /readyz", Readyz(log, ready))
}

func writeStatus(w http.ResponseWriter, status int, body map[string]string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
