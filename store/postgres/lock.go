package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// lockKey names an advisory lock of this schema: replicas sharing the
// schema share it, stores in other schemas do not.
const lockKey = `hashtextextended('trustgate.lock:' || current_schema() || ':' || $1, 0)`

// locks implements store.Locks with PostgreSQL session advisory locks,
// which the server releases when the session holding them ends, so that a
// replica that dies gives them up at once.
type locks struct {
	db  *DB
	log *slog.Logger
	// leaseCheck is how often a lease holder checks that its session is
	// alive, and how often the others try to take the lease.
	leaseCheck time.Duration
}

// Do implements store.Locks: it holds pg_advisory_lock on a session of its
// own, outside the pool, while fn uses the pool: locks of different names
// held at once never starve their own work of connections, however small
// the pool.
func (l *locks) Do(ctx context.Context, name string, fn func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, l.db.pool.Config().ConnConfig.Copy())
	cancel()
	if err != nil {
		return fmt.Errorf("postgres: lock %s: %w", name, err)
	}
	// Closing the session releases the lock, whatever happened.
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(`+lockKey+`)`, name); err != nil {
		return fmt.Errorf("postgres: lock %s: %w", name, err)
	}
	return fn(ctx)
}

// Lead implements store.Locks: a session of its own tries
// pg_try_advisory_lock every leaseCheck; while it holds the lock it runs fn
// and checks the session every leaseCheck, ending fn's context when the
// session fails.
func (l *locks) Lead(ctx context.Context, name string, fn func(context.Context)) {
	for ctx.Err() == nil {
		err := l.leadOnce(ctx, name, fn)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			l.log.Warn("postgres: lease", "lease", name, "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(l.leaseCheck):
		}
	}
}

// leadOnce connects, takes the lease if it can and runs fn while it holds
// it. It returns nil when ctx ends.
func (l *locks) leadOnce(ctx context.Context, name string, fn func(context.Context)) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, err := pgx.ConnectConfig(cctx, l.db.pool.Config().ConnConfig.Copy())
	cancel()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	for ctx.Err() == nil {
		var held bool
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := conn.QueryRow(qctx, `SELECT pg_try_advisory_lock(`+lockKey+`)`, name).Scan(&held)
		cancel()
		if err != nil {
			return err
		}
		if held {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(l.leaseCheck):
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	l.log.Info("postgres: lease taken", "lease", name)
	fctx, stop := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(fctx)
	}()
	t := time.NewTicker(l.leaseCheck)
	defer t.Stop()
	for {
		select {
		case <-done:
			stop(nil)
			return nil
		case <-ctx.Done():
			stop(nil)
			<-done
			return nil
		case <-t.C:
			pctx, cancel := context.WithTimeout(ctx, l.leaseCheck)
			err := conn.Ping(pctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				err = fmt.Errorf("lease %s lost: %w", name, err)
				stop(err)
				<-done
				return err
			}
		}
	}
}
