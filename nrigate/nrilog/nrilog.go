// Package nrilog routes containerd/nri's logging, which goes through one
// process-wide logger, into a log/slog logger.
package nrilog

import (
	"context"
	"fmt"
	"log/slog"

	nrilog "github.com/containerd/nri/pkg/log"
)

// Logger adapts a slog.Logger to NRI's log.Logger interface.
type Logger struct{ L *slog.Logger }

func (l Logger) logf(ctx context.Context, lv slog.Level, format string, args []any) {
	if l.L.Enabled(ctx, lv) {
		l.L.Log(ctx, lv, fmt.Sprintf(format, args...), "component", "nri")
	}
}

// Debugf implements nri's log.Logger.
func (l Logger) Debugf(ctx context.Context, format string, args ...any) {
	l.logf(ctx, slog.LevelDebug, format, args)
}

// Infof implements nri's log.Logger. NRI logs routine events at info, which
// is noise beside the gateway's own records, so they go to debug.
func (l Logger) Infof(ctx context.Context, format string, args ...any) {
	l.logf(ctx, slog.LevelDebug, format, args)
}

// Warnf implements nri's log.Logger.
func (l Logger) Warnf(ctx context.Context, format string, args ...any) {
	l.logf(ctx, slog.LevelWarn, format, args)
}

// Errorf implements nri's log.Logger.
func (l Logger) Errorf(ctx context.Context, format string, args ...any) {
	l.logf(ctx, slog.LevelError, format, args)
}

// Install makes l the process-wide NRI logger.
func Install(l *slog.Logger) { nrilog.Set(Logger{L: l}) }
