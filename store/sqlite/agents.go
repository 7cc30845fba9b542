package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/internal/sqlrow"
)

// Agents implements store.Store.
func (db *DB) Agents() store.Agents { return agents{db} }

type agents struct{ db *DB }

// Statements of the agent API's hot paths; plan_test.go checks that each is
// answered through an index.
const (
	attestAgent = `INSERT INTO agents (spiffe_id, attestor, selectors, serial, prev_serial, expires_at, evicted, created_at, updated_at)
VALUES (?,?,?,?,'',?,0,?,?)
ON CONFLICT (spiffe_id) DO UPDATE SET attestor = excluded.attestor, selectors = excluded.selectors, serial = excluded.serial,
	prev_serial = '', expires_at = excluded.expires_at, updated_at = excluded.updated_at
WHERE agents.evicted = 0
RETURNING created_at`
	renewAgent = `UPDATE agents SET prev_serial = serial, serial = ?, expires_at = ?, updated_at = ?
WHERE spiffe_id = ? AND evicted = 0 AND (serial = ? OR prev_serial = ?)`
	agentCols     = sqlrow.AgentColumns
	agentByID     = `SELECT ` + agentCols + ` FROM agents WHERE spiffe_id = ?`
	evictAgent    = `UPDATE agents SET evicted = 1, updated_at = ? WHERE spiffe_id = ?`
	entryRevision = `SELECT value FROM revisions WHERE name = 'entries'`
	spendToken    = `INSERT INTO spent_tokens (token_id, key_digest, expires_at) VALUES (?,?,?)
ON CONFLICT (token_id) DO UPDATE SET expires_at = excluded.expires_at WHERE spent_tokens.key_digest = excluded.key_digest
RETURNING answer`
	tokenAnswered     = `UPDATE spent_tokens SET answer = ? WHERE token_id = ?`
	deleteSpentTokens = `DELETE FROM spent_tokens WHERE expires_at < ?`
)

func (a agents) Attest(ctx context.Context, v store.Agent) (store.Agent, error) {
	sel, err := json.Marshal(selectorsOrEmpty(v.Selectors))
	if err != nil {
		return store.Agent{}, fmt.Errorf("sqlite: attest agent: %w", err)
	}
	var created int64
	err = a.db.w.QueryRowContext(ctx, attestAgent, v.SPIFFEID, v.Attestor, string(sel), v.SerialNumber,
		sqlrow.NS(v.ExpiresAt), sqlrow.NS(v.CreatedAt), sqlrow.NS(v.UpdatedAt)).Scan(&created)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Agent{}, fmt.Errorf("sqlite: attest agent %s: %w", v.SPIFFEID, store.ErrEvicted)
	}
	if err != nil {
		return store.Agent{}, wrap("attest agent", err)
	}
	v.CreatedAt, v.PrevSerialNumber, v.Evicted = sqlrow.FromNS(created), "", false
	return v, nil
}

func (a agents) Renew(ctx context.Context, id, presented, serial string, expiresAt, now time.Time) error {
	if presented != "" {
		res, err := a.db.w.ExecContext(ctx, renewAgent, serial, sqlrow.NS(expiresAt), sqlrow.NS(now), id, presented, presented)
		if err != nil {
			return wrap("renew agent", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return wrap("renew agent", err)
		} else if n == 1 {
			return nil
		}
	}
	cur, err := a.Get(ctx, id)
	if err != nil {
		return err
	}
	if cur.Evicted {
		return fmt.Errorf("sqlite: renew agent %s: %w", id, store.ErrEvicted)
	}
	return fmt.Errorf("sqlite: renew agent %s: serial %q is not its current SVID's: %w", id, presented, store.ErrConflict)
}

func (a agents) Get(ctx context.Context, id string) (store.Agent, error) {
	v, err := sqlrow.ScanAgent(a.db.r.QueryRowContext(ctx, agentByID, id))
	return v, wrap("get agent", err)
}

func (a agents) List(ctx context.Context) ([]store.Agent, error) {
	rows, err := a.db.r.QueryContext(ctx, `SELECT `+agentCols+` FROM agents ORDER BY spiffe_id`)
	if err != nil {
		return nil, wrap("list agents", err)
	}
	defer rows.Close()
	var out []store.Agent
	for rows.Next() {
		v, err := sqlrow.ScanAgent(rows)
		if err != nil {
			return nil, wrap("list agents", err)
		}
		out = append(out, v)
	}
	return out, wrap("list agents", rows.Err())
}

func (a agents) Evict(ctx context.Context, id string, now time.Time) error {
	res, err := a.db.w.ExecContext(ctx, evictAgent, sqlrow.NS(now), id)
	if err != nil {
		return wrap("evict agent", err)
	}
	return affectedOne("evict agent", res)
}

func (a agents) SpendToken(ctx context.Context, tokenID, keyDigest string, expiresAt time.Time) ([]byte, error) {
	var answer []byte
	err := a.db.w.QueryRowContext(ctx, spendToken, tokenID, keyDigest, sqlrow.NS(expiresAt)).Scan(&answer)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: spend token %s: spent on another key: %w", tokenID, store.ErrConsumed)
	}
	if err != nil {
		return nil, wrap("spend token", err)
	}
	if len(answer) == 0 {
		return nil, nil
	}
	return answer, nil
}

func (a agents) TokenAnswered(ctx context.Context, tokenID string, answer []byte) error {
	res, err := a.db.w.ExecContext(ctx, tokenAnswered, answer, tokenID)
	if err != nil {
		return wrap("token answered", err)
	}
	return affectedOne("token answered", res)
}

func (a agents) DeleteSpentTokens(ctx context.Context, now time.Time) (int, error) {
	res, err := a.db.w.ExecContext(ctx, deleteSpentTokens, sqlrow.NS(now))
	if err != nil {
		return 0, wrap("delete spent tokens", err)
	}
	n, err := res.RowsAffected()
	return int(n), wrap("delete spent tokens", err)
}

func (e entries) Revision(ctx context.Context) (int64, error) {
	var v int64
	err := e.db.r.QueryRowContext(ctx, entryRevision).Scan(&v)
	return v, wrap("entries revision", err)
}

func selectorsOrEmpty(s []store.Selector) []store.Selector {
	if s == nil {
		return []store.Selector{}
	}
	return s
}
