// Package nrilog routes containerd/nri's logging, which goes through one
// process-wide logger, into a log/slog logger.
//
// NRI's logger is a plain global, so it is set exactly once, to a forwarder;
// Install then only swaps, atomically, the slog logger the forwarder writes
// to. Goroutines NRI already started never race with a later Install.
package nrilog

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	nrilog "github.com/containerd/nri/pkg/log"
)

var (
	target atomic.Pointer[slog.Logger]
	once   sync.Once
)

// Install makes l the destination of NRI's logs in this process.
func Install(l *slog.Logger) {
	target.Store(l)
	once.Do(func() { nrilog.Set(forwarder{}) })
}

// forwarder implements NRI's log.Logger on the installed slog logger.
type forwarder struct{}

func logf(ctx context.Context, lv slog.Level, format string, args []any) {
	l := target.Load()
	if l != nil && l.Enabled(ctx, lv) {
		l.Log(ctx, lv, fmt.Sprintf(format, args...), "component", "nri")
	}
}

// Debugf implements nri's log.Logger.
func (forwarder) Debugf(ctx context.Context, format string, args ...any) {
	logf(ctx, slog.LevelDebug, format, args)
}

// Infof implements nri's log.Logger. NRI logs routine events at info, which
// is noise beside the gateway's own records, so they go to debug.
func (forwarder) Infof(ctx context.Context, format string, args ...any) {
	logf(ctx, slog.LevelDebug, format, args)
}

// Warnf implements nri's log.Logger.
func (forwarder) Warnf(ctx context.Context, format string, args ...any) {
	logf(ctx, slog.LevelWarn, format, args)
}

// Errorf implements nri's log.Logger.
func (forwarder) Errorf(ctx context.Context, format string, args ...any) {
	logf(ctx, slog.LevelError, format, args)
}
