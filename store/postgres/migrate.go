package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/trustgate/trustgate/store/migration"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migrations returns the embedded migrations in version order.
func migrations() ([]migration.Migration, error) {
	return migration.Load(migrationFS, "migrations")
}

// migrateLock keys the session-level advisory lock that serializes
// migrations; it is taken per schema, so that stores in different schemas
// of one database do not wait for each other.
const migrateLock = `SELECT pg_advisory_lock(hashtextextended('trustgate.migrate:' || current_schema(), 0))`
const migrateUnlock = `SELECT pg_advisory_unlock(hashtextextended('trustgate.migrate:' || current_schema(), 0))`

// setUp runs what Open does before the pool serves: the migrations up to
// target (all when target < 0), and reading the notification channel's
// name. It runs them on a connection of its own that starts without the
// statement timeout: the wait for another replica's migration and a
// migration itself (an index on a large table) may take longer than the
// timeout, and ctx bounds them instead. Lifting the timeout with a SET on a
// pooled connection would not do, as that SET runs under the timeout
// itself; and no statement of the start-up runs under it, since a 1 ms
// timeout on a loaded machine cancelled even the channel's SELECT.
func setUp(ctx context.Context, pool *pgxpool.Pool, target int) (channel string, err error) {
	cc := pool.Config().ConnConfig.Copy()
	cc.RuntimeParams["statement_timeout"] = "0"
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return "", fmt.Errorf("connect for migration: %w", err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	if err := migrate(ctx, conn, target); err != nil {
		return "", err
	}
	if err := conn.QueryRow(ctx, channelSQL).Scan(&channel); err != nil {
		return "", fmt.Errorf("notification channel: %w", err)
	}
	return channel, nil
}

// migrate brings the database up to version target (all migrations when
// target < 0). It holds an advisory lock throughout, so that of several
// replicas starting at once one migrates while the others wait and then
// find nothing to do. Each step commits together with its version bump, so
// a crash leaves the schema at a whole version (PostgreSQL's DDL is
// transactional).
func migrate(ctx context.Context, conn *pgx.Conn, target int) (err error) {
	ms, err := migrations()
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, migrateLock); err != nil {
		return fmt.Errorf("lock for migration: %w", err)
	}
	defer func() {
		// A failed unlock is harmless: closing the connection ends the
		// session, which releases the lock.
		if _, uerr := conn.Exec(context.WithoutCancel(ctx), migrateUnlock); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unlock after migration: %w", uerr))
		}
	}()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_version: %w", err)
	}
	current, err := schemaVersion(ctx, conn)
	if err != nil {
		return err
	}
	if current > len(ms) {
		return fmt.Errorf("database schema version %d is newer than this binary knows (%d): upgrade trustgate", current, len(ms))
	}
	if target < 0 {
		target = len(ms)
	}
	for _, m := range ms[current:max(current, target)] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM schema_version`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_version (version) VALUES ($1)`, m.Version)
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %s: %w", m.Name, err)
		}
	}
	return nil
}

func schemaVersion(ctx context.Context, conn *pgx.Conn) (int, error) {
	var v int
	err := conn.QueryRow(ctx, `SELECT version FROM schema_version`).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}
