package broker

import (
	"context"
	"encoding/json"
	"net/http"
	"time"
)

// LeaderMessage is logged when this replica takes over the background work
// that one replica at a time does (the store's lease).
const LeaderMessage = "this replica now runs the background work"

// readyTimeout bounds one readiness check's store ping.
const readyTimeout = 2 * time.Second

// Ready reports whether this server can serve: its store answers. A load
// balancer or Kubernetes readiness probe takes a replica out of rotation
// while it cannot reach the database, and back in once its pool reconnects
// by itself.
func (s *Server) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	return s.store.Ping(ctx)
}

// readyz serves GET /readyz: 200 when Ready, else 503.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if err := s.Ready(r.Context()); err != nil {
		s.log.Warn("not ready: store", "err", err)
		writeProblem(w, http.StatusServiceUnavailable, ProblemInternal, "store unavailable")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"status": "ready"})
}
