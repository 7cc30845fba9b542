// Package periodic runs background work, such as key rotation, on a fixed
// interval with each run bounded in time.
package periodic

import (
	"context"
	"log/slog"
	"time"
)

// Run calls fn every interval until ctx ends, each call under a context
// that expires after timeout. A failed call is logged with what and retried
// at the next tick.
func Run(ctx context.Context, interval, timeout time.Duration, log *slog.Logger, what string, fn func(context.Context) error) {
	RunWake(ctx, interval, timeout, log, what, nil, fn)
}

// RunWake is Run that also calls fn whenever wake receives, such as when
// another replica changed what fn reloads (store.Wake).
func RunWake(ctx context.Context, interval, timeout time.Duration, log *slog.Logger, what string, wake <-chan struct{}, fn func(context.Context) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
			rctx, cancel := context.WithTimeout(ctx, timeout)
			if err := fn(rctx); err != nil {
				log.Error(what, "err", err)
			}
			cancel()
		case <-t.C:
			rctx, cancel := context.WithTimeout(ctx, timeout)
			if err := fn(rctx); err != nil {
				log.Error(what, "err", err)
			}
			cancel()
		}
	}
}
