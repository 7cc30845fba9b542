// Package serve runs trustgate's network servers with the limits every one of
// them needs: header and idle deadlines, and a graceful shutdown bounded in
// time when the context ends.
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Options bound an HTTP server's timing.
type Options struct {
	// ReadHeaderTimeout bounds how long a client may take to send headers.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a response.
	WriteTimeout time.Duration
	// IdleTimeout bounds a keep-alive connection's idle time.
	IdleTimeout time.Duration
	// ShutdownGrace bounds the graceful shutdown; connections still open
	// after it are closed.
	ShutdownGrace time.Duration
	// OnShutdown, when set, is called as the graceful shutdown begins: it
	// ends requests that would otherwise hold the shutdown for its whole
	// grace, such as long polls.
	OnShutdown func()
}

// DefaultOptions are the limits used when a field is zero.
var DefaultOptions = Options{
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       30 * time.Second,
	WriteTimeout:      30 * time.Second,
	IdleTimeout:       2 * time.Minute,
	ShutdownGrace:     10 * time.Second,
}

func (o Options) withDefaults() Options {
	d := DefaultOptions
	if o.ReadHeaderTimeout > 0 {
		d.ReadHeaderTimeout = o.ReadHeaderTimeout
	}
	if o.ReadTimeout > 0 {
		d.ReadTimeout = o.ReadTimeout
	}
	if o.WriteTimeout > 0 {
		d.WriteTimeout = o.WriteTimeout
	}
	if o.IdleTimeout > 0 {
		d.IdleTimeout = o.IdleTimeout
	}
	if o.ShutdownGrace > 0 {
		d.ShutdownGrace = o.ShutdownGrace
	}
	d.OnShutdown = o.OnShutdown
	return d
}

// HTTP serves h on ln until ctx ends, then shuts down gracefully within
// opts.ShutdownGrace. It returns nil after a clean shutdown.
func HTTP(ctx context.Context, log *slog.Logger, name string, ln net.Listener, h http.Handler, opts Options) error {
	opts = opts.withDefaults()
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		ReadTimeout:       opts.ReadTimeout,
		WriteTimeout:      opts.WriteTimeout,
		IdleTimeout:       opts.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if opts.OnShutdown != nil {
		srv.RegisterOnShutdown(opts.OnShutdown)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s server: %w", name, err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "server", name, "grace", opts.ShutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), opts.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("%s server: graceful shutdown: %w", name, err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s server: %w", name, err)
	}
	return nil
}
