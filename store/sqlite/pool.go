package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
)

// pool is a database/sql pool whose statements are prepared once and
// reused: SQLite's statement compilation otherwise shows up in every
// request's profile.
type pool struct {
	db    *sql.DB
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

func newPool(db *sql.DB) *pool { return &pool{db: db, stmts: map[string]*sql.Stmt{}} }

// cached returns q's statement if it was prepared already.
func (p *pool) cached(q string) (*sql.Stmt, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.stmts[q]
	return st, ok
}

// warm prepares qs ahead of use; transactions use only statements
// prepared this way or earlier outside a transaction.
func (p *pool) warm(ctx context.Context, qs ...string) error {
	for _, q := range qs {
		if _, err := p.stmt(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// stmt returns q's cached statement, preparing it if needed. The mutex is
// not held while preparing: preparing waits for a connection, and the
// goroutine holding the writer's only connection in a transaction may need
// the mutex to finish.
func (p *pool) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	if st, ok := p.cached(q); ok {
		return st, nil
	}
	st, err := p.db.PrepareContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if other, ok := p.stmts[q]; ok {
		_ = st.Close() // another goroutine prepared it first
		return other, nil
	}
	p.stmts[q] = st
	return st, nil
}

// ExecContext runs q as a cached statement.
func (p *pool) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	st, err := p.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

// QueryContext runs q as a cached statement.
func (p *pool) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	st, err := p.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// QueryRowContext runs q as a cached statement. If q cannot be prepared,
// the uncached query reports the same error through the Row.
func (p *pool) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	st, err := p.stmt(ctx, q)
	if err != nil {
		return p.db.QueryRowContext(ctx, q, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// BeginTx starts a transaction whose statements come from the cache.
func (p *pool) BeginTx(ctx context.Context, opts *sql.TxOptions) (*tx, error) {
	t, err := p.db.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &tx{Tx: t, p: p}, nil
}

// Close closes the statements and the pool.
func (p *pool) Close() error {
	p.mu.Lock()
	for _, st := range p.stmts {
		_ = st.Close()
	}
	p.stmts = nil
	p.mu.Unlock()
	return p.db.Close()
}

// tx is a transaction using the pool's cached statements. It never
// prepares a statement itself: on the single-connection writer pool that
// would wait for the connection the transaction holds. A query not yet
// cached runs unprepared.
type tx struct {
	*sql.Tx
	p *pool
}

// ExecContext runs q in the transaction.
func (t *tx) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if st, ok := t.p.cached(q); ok {
		return t.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return t.Tx.ExecContext(ctx, q, args...)
}

// QueryContext runs q in the transaction.
func (t *tx) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if st, ok := t.p.cached(q); ok {
		return t.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return t.Tx.QueryContext(ctx, q, args...)
}

// QueryRowContext runs q in the transaction.
func (t *tx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	if st, ok := t.p.cached(q); ok {
		return t.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return t.Tx.QueryRowContext(ctx, q, args...)
}
