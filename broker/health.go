package broker

import (
	"context"
	"fmt"
)

// Ready reports nil when the broker can serve: its store answers a read.
// GET /readyz answers with it; GET /healthz only says the process serves.
func (s *Server) Ready(ctx context.Context) error {
	if _, err := s.store.JoinTokens().List(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}
