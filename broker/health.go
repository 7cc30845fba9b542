package broker

import (
	"context"
	"fmt"
	"time"
)

// readyTimeout bounds one readiness check's store ping.
const readyTimeout = 2 * time.Second

// Ready reports nil when the broker can serve: its store answers a ping.
// GET /readyz answers with it, so that a load balancer or Kubernetes takes a
// replica out of rotation while it cannot reach the database, and back in
// once its pool reconnects by itself; GET /healthz only says the process
// serves.
func (s *Server) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}
