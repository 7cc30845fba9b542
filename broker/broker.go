// Package broker is trustgate's attestation broker: the HTTP API that
// callers attest to and get identities, tokens and resources from.
package broker

import (
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/trustgate/trustgate/store"
)

// Server is the broker's HTTP API.
type Server struct {
	store store.Store
	log   *slog.Logger
	mux   *http.ServeMux
}

// New returns a broker serving from st.
func New(st store.Store, log *slog.Logger) *Server {
	s := &Server{store: st, log: log, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /healthz", s.healthz)
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	// A read proves the store answers.
	if _, err := s.store.JoinTokens().List(r.Context()); err != nil {
		s.log.Error("health check: store", "err", err)
		http.Error(w, "store unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"status": "ok"})
}
