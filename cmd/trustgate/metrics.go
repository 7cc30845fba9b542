package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/trustgate/trustgate/serve"
	"github.com/trustgate/trustgate/telemetry"
)

// serveMetrics serves reg's /metrics, and /healthz and /readyz answered by
// ready, on addr in grp until ctx ends; an empty addr serves nothing.
func serveMetrics(ctx context.Context, grp *errgroup.Group, log *slog.Logger, addr string, reg *prometheus.Registry, opts serve.Options, ready func(context.Context) error) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listen: %w", err)
	}
	log.Info("metrics listening", "addr", "http://"+ln.Addr().String()+"/metrics")
	mux := http.NewServeMux()
	mux.Handle("/metrics", telemetry.MetricsHandler(reg))
	serve.HandleHealth(mux, log, ready)
	grp.Go(func() error { return serve.HTTP(ctx, log, "metrics", ln, mux, opts) })
	return nil
}
