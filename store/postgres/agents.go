package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

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
VALUES ($1,$2,$3,$4,'',$5,false,$6,$7)
ON CONFLICT (spiffe_id) DO UPDATE SET attestor = excluded.attestor, selectors = excluded.selectors, serial = excluded.serial,
	prev_serial = '', expires_at = excluded.expires_at, updated_at = excluded.updated_at
WHERE NOT agents.evicted
RETURNING created_at`
	renewAgent = `UPDATE agents SET prev_serial = serial, serial = $1, expires_at = $2, updated_at = $3
WHERE spiffe_id = $4 AND NOT evicted AND (serial = $5 OR prev_serial = $5)`
	agentCols     = sqlrow.AgentColumns
	agentByID     = `SELECT ` + agentCols + ` FROM agents WHERE spiffe_id = $1`
	evictAgent    = `UPDATE agents SET evicted = true, updated_at = $1 WHERE spiffe_id = $2`
	entryRevision = `SELECT value FROM revisions WHERE name = 'entries'`
	spendToken    = `INSERT INTO spent_tokens (token_id, key_digest, expires_at) VALUES ($1,$2,$3)
ON CONFLICT (token_id) DO UPDATE SET expires_at = excluded.expires_at WHERE spent_tokens.key_digest = excluded.key_digest
RETURNING answer`
	tokenAnswered     = `UPDATE spent_tokens SET answer = $1 WHERE token_id = $2`
	deleteSpentTokens = `DELETE FROM spent_tokens WHERE expires_at < $1`
)

func (a agents) Attest(ctx context.Context, v store.Agent) (store.Agent, error) {
	sel := v.Selectors
	if sel == nil {
		sel = []store.Selector{}
	}
	doc, err := json.Marshal(sel)
	if err != nil {
		return store.Agent{}, fmt.Errorf("postgres: attest agent: %w", err)
	}
	var created int64
	err = a.db.pool.QueryRow(ctx, attestAgent, v.SPIFFEID, v.Attestor, string(doc), v.SerialNumber,
		sqlrow.NS(v.ExpiresAt), sqlrow.NS(v.CreatedAt), sqlrow.NS(v.UpdatedAt)).Scan(&created)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Agent{}, fmt.Errorf("postgres: attest agent %s: %w", v.SPIFFEID, store.ErrEvicted)
	}
	if err != nil {
		return store.Agent{}, wrap("attest agent", err)
	}
	v.CreatedAt, v.PrevSerialNumber, v.Evicted = sqlrow.FromNS(created), "", false
	return v, nil
}

func (a agents) Renew(ctx context.Context, id, presented, serial string, expiresAt, now time.Time) error {
	if presented != "" {
		tag, err := a.db.pool.Exec(ctx, renewAgent, serial, sqlrow.NS(expiresAt), sqlrow.NS(now), id, presented)
		if err != nil {
			return wrap("renew agent", err)
		}
		if tag.RowsAffected() == 1 {
			return nil
		}
	}
	cur, err := a.Get(ctx, id)
	if err != nil {
		return err
	}
	if cur.Evicted {
		return fmt.Errorf("postgres: renew agent %s: %w", id, store.ErrEvicted)
	}
	return fmt.Errorf("postgres: renew agent %s: serial %q is not its current SVID's: %w", id, presented, store.ErrConflict)
}

func (a agents) Get(ctx context.Context, id string) (store.Agent, error) {
	v, err := sqlrow.ScanAgent(a.db.pool.QueryRow(ctx, agentByID, id))
	return v, wrap("get agent", err)
}

func (a agents) List(ctx context.Context) ([]store.Agent, error) {
	rows, err := a.db.pool.Query(ctx, `SELECT `+agentCols+` FROM agents ORDER BY spiffe_id`)
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
	tag, err := a.db.pool.Exec(ctx, evictAgent, sqlrow.NS(now), id)
	return affectedOne("evict agent", tag, err)
}

func (a agents) SpendToken(ctx context.Context, tokenID, keyDigest string, expiresAt time.Time) ([]byte, error) {
	var answer []byte
	err := a.db.pool.QueryRow(ctx, spendToken, tokenID, keyDigest, sqlrow.NS(expiresAt)).Scan(&answer)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: spend token %s: spent on another key: %w", tokenID, store.ErrConsumed)
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
	tag, err := a.db.pool.Exec(ctx, tokenAnswered, answer, tokenID)
	return affectedOne("token answered", tag, err)
}

func (a agents) DeleteSpentTokens(ctx context.Context, now time.Time) (int, error) {
	tag, err := a.db.pool.Exec(ctx, deleteSpentTokens, sqlrow.NS(now))
	if err != nil {
		return 0, wrap("delete spent tokens", err)
	}
	return int(tag.RowsAffected()), nil
}

func (e entries) Revision(ctx context.Context) (int64, error) {
	var v int64
	err := e.db.pool.QueryRow(ctx, entryRevision).Scan(&v)
	return v, wrap("entries revision", err)
}
