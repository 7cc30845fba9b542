// Package postgres is the replicated store: store.Store on PostgreSQL
// through pgx (github.com/jackc/pgx/v5, pgxpool), for several trustgate
// servers that share one database.
//
// Every operation is one SQL statement, so one network round trip once the
// connection has prepared it (pgx caches prepared statements per
// connection), and every single-use operation is atomic in that statement:
// a nonce is consumed by UPDATE ... WHERE NOT nonce_used RETURNING, a join
// token by DELETE ... RETURNING. PostgreSQL's row locks make these
// single-use across every connection of every replica. Schema changes are
// versioned migrations embedded in the binary, applied under an advisory
// lock so that replicas starting together apply each one once.
package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/internal/sqlrow"
)

// DB is a store.Store on one PostgreSQL database (or schema, by the
// connection's search_path).
type DB struct {
	pool   *pgxpool.Pool
	notify *notifier
	locks  *locks
}

var _ store.Store = (*DB)(nil)

// Open connects to the database opts describe and migrates it to the newest
// schema.
func Open(ctx context.Context, opts Options) (*DB, error) {
	return open(ctx, opts, -1)
}

func open(ctx context.Context, opts Options, target int) (*DB, error) {
	cfg, err := opts.poolConfig()
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	channel, err := setUp(ctx, pool, target)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: %s: %w", describe(cfg), err)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db := &DB{pool: pool}
	db.notify = &notifier{db: db, channel: channel, log: log}
	db.locks = &locks{db: db, log: log, leaseCheck: time.Second}
	db.notify.start()
	return db, nil
}

// Changes implements store.Store with LISTEN/NOTIFY: writes to entries,
// keys and policies are announced by triggers when they commit.
func (db *DB) Changes() store.Changes { return db.notify }

// Locks implements store.Store with advisory locks.
func (db *DB) Locks() store.Locks { return db.locks }

// describe names the database without its credentials, for messages.
func describe(cfg *pgxpool.Config) string {
	return fmt.Sprintf("database %q on %s:%d", cfg.ConnConfig.Database, cfg.ConnConfig.Host, cfg.ConnConfig.Port)
}

// Ping reports whether the database answers, for readiness checks.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: ping: %w", err)
	}
	return nil
}

// Close closes the connection pool.
func (db *DB) Close() error {
	db.notify.stop()
	db.pool.Close()
	return nil
}

// Sessions implements store.Store.
func (db *DB) Sessions() store.Sessions { return sessions{db} }

// JoinTokens implements store.Store.
func (db *DB) JoinTokens() store.JoinTokens { return joinTokens{db} }

// Entries implements store.Store.
func (db *DB) Entries() store.Entries { return entries{db} }

// Resources implements store.Store.
func (db *DB) Resources() store.Resources { return resources{db} }

// Keys implements store.Store.
func (db *DB) Keys() store.Keys { return keys{db} }

// Policies implements store.Store.
func (db *DB) Policies() store.Policies { return policies{db} }

func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("postgres: %s: %w", op, store.ErrNotFound)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" { // unique_violation
		return fmt.Errorf("postgres: %s: %w", op, store.ErrConflict)
	}
	return fmt.Errorf("postgres: %s: %w", op, err)
}

func affectedOne(op string, tag pgconn.CommandTag, err error) error {
	if err != nil {
		return wrap(op, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("postgres: %s: %w", op, store.ErrNotFound)
	}
	return nil
}

// Statements that the hot paths run by key; plan_test.go checks that each
// is answered through an index.
const (
	sessionByID           = `SELECT ` + sessionCols + ` FROM sessions WHERE id = $1`
	setClaims             = `UPDATE sessions SET claims = $1 WHERE id = $2 AND nonce_used`
	deleteExpiredSessions = `DELETE FROM sessions WHERE expires_at <= $1`
	consumeJoinToken      = `DELETE FROM join_tokens WHERE id = $1 RETURNING id, spiffe_id, expires_at, created_at`
	deleteEntry           = `DELETE FROM entries WHERE id = $1`
	resourceByPath        = `SELECT path, sealed, updated_at FROM resources WHERE path = $1`
	keysByKind            = `SELECT kind, id, sealed, public, not_before, not_after, created_at FROM keys WHERE kind = $1 ORDER BY not_before, id`
	policyByName          = `SELECT name, text, revision, updated_at FROM policies WHERE name = $1`
)

type sessions struct{ db *DB }

const sessionCols = `id, tee, nonce, extra_params, created_at, expires_at, nonce_used, claims`

func (s sessions) Create(ctx context.Context, v store.Session) error {
	_, err := s.db.pool.Exec(ctx,
		`INSERT INTO sessions (`+sessionCols+`) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)`,
		v.ID, v.TEE, v.Nonce, v.ExtraParams, sqlrow.NS(v.CreatedAt), sqlrow.NS(v.ExpiresAt), v.NonceUsed, v.Claims)
	return wrap("create session", err)
}

func scanSession(row pgx.Row, extra ...any) (store.Session, error) {
	var v store.Session
	var created, expires int64
	dst := append([]any{&v.ID, &v.TEE, &v.Nonce, &v.ExtraParams, &created, &expires, &v.NonceUsed, &v.Claims}, extra...)
	err := row.Scan(dst...)
	v.CreatedAt, v.ExpiresAt = sqlrow.FromNS(created), sqlrow.FromNS(expires)
	return v, err
}

func (s sessions) Get(ctx context.Context, id string) (store.Session, error) {
	v, err := scanSession(s.db.pool.QueryRow(ctx, sessionByID, id))
	return v, wrap("get session", err)
}

// consumeNonce marks the nonce used when every condition holds, and returns
// the updated row with consumed = true; otherwise it returns the row as it
// is, with consumed = false, so that the caller can say why, all in one
// statement. The UPDATE's WHERE is re-checked on the newest row version
// after waiting for a concurrent consumer's lock, so exactly one wins.
const consumeNonce = `WITH u AS (
	UPDATE sessions SET nonce_used = true
	WHERE id = $1 AND nonce = $2 AND NOT nonce_used AND expires_at > $3
	RETURNING ` + sessionCols + `
)
SELECT ` + sessionCols + `, true FROM u
UNION ALL
SELECT ` + sessionCols + `, false FROM sessions WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM u)`

func (s sessions) ConsumeNonce(ctx context.Context, id, nonce string, now time.Time) (store.Session, error) {
	var consumed bool
	v, err := scanSession(s.db.pool.QueryRow(ctx, consumeNonce, id, nonce, sqlrow.NS(now)), &consumed)
	switch {
	case err != nil:
		return store.Session{}, wrap("consume nonce", err)
	case consumed:
		return v, nil
	// The nonce is public (it was sent to the caller), so comparing it in
	// variable time reveals nothing. Nonce and expiry never change, so
	// when both pass here the update lost to a concurrent consumer even if
	// this snapshot still shows the nonce unused.
	case v.Nonce != nonce:
		return store.Session{}, fmt.Errorf("postgres: consume nonce: nonce does not match session: %w", store.ErrNotFound)
	case !now.Before(v.ExpiresAt) && !v.NonceUsed:
		return store.Session{}, fmt.Errorf("postgres: consume nonce: %w", store.ErrExpired)
	default:
		return store.Session{}, fmt.Errorf("postgres: consume nonce: %w", store.ErrConsumed)
	}
}

func (s sessions) SetClaims(ctx context.Context, id string, claims []byte) error {
	tag, err := s.db.pool.Exec(ctx, setClaims, claims, id)
	return affectedOne("set claims", tag, err)
}

func (s sessions) DeleteExpired(ctx context.Context, now time.Time) (int, error) {
	tag, err := s.db.pool.Exec(ctx, deleteExpiredSessions, sqlrow.NS(now))
	if err != nil {
		return 0, wrap("delete expired sessions", err)
	}
	return int(tag.RowsAffected()), nil
}

type joinTokens struct{ db *DB }

func (j joinTokens) Create(ctx context.Context, t store.JoinToken) error {
	_, err := j.db.pool.Exec(ctx, `INSERT INTO join_tokens (id, spiffe_id, expires_at, created_at) VALUES ($1,$2,$3,$4)`,
		t.ID, t.SPIFFEID, sqlrow.NS(t.ExpiresAt), sqlrow.NS(t.CreatedAt))
	return wrap("create join token", err)
}

func scanToken(row pgx.Row) (store.JoinToken, error) {
	var t store.JoinToken
	var expires, created int64
	err := row.Scan(&t.ID, &t.SPIFFEID, &expires, &created)
	t.ExpiresAt, t.CreatedAt = sqlrow.FromNS(expires), sqlrow.FromNS(created)
	return t, err
}

func (j joinTokens) Consume(ctx context.Context, id string) (store.JoinToken, error) {
	t, err := scanToken(j.db.pool.QueryRow(ctx,
		consumeJoinToken, id))
	if err != nil {
		return store.JoinToken{}, wrap("consume join token", err)
	}
	return t, nil
}

func (j joinTokens) List(ctx context.Context) ([]store.JoinToken, error) {
	rows, err := j.db.pool.Query(ctx, `SELECT id, spiffe_id, expires_at, created_at FROM join_tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, wrap("list join tokens", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.JoinToken, error) { return scanToken(r) })
	return out, wrap("list join tokens", err)
}

type entries struct{ db *DB }

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// createEntry inserts an entry and its selectors in one statement.
const createEntry = `WITH e AS (
	INSERT INTO entries (id, spiffe_id, parent_id, x509_ttl_ns, jwt_ttl_ns, dns_names, created_at)
	VALUES ($1,$2,$3,$4,$5,$6,$7) RETURNING id
)
INSERT INTO entry_selectors (entry_id, position, type, value)
SELECT e.id, s.ord - 1, s.type, s.value FROM e, unnest($8::text[], $9::text[]) WITH ORDINALITY AS s(type, value, ord)`

func (e entries) Create(ctx context.Context, v store.Entry) (store.Entry, error) {
	if v.ID == "" {
		v.ID = newID()
	}
	if v.CreatedAt.IsZero() {
		v.CreatedAt = time.Now().UTC()
	}
	dns := v.DNSNames
	if dns == nil {
		dns = []string{}
	}
	types, values := make([]string, len(v.Selectors)), make([]string, len(v.Selectors))
	for i, s := range v.Selectors {
		types[i], values[i] = s.Type, s.Value
	}
	if _, err := e.db.pool.Exec(ctx, createEntry, v.ID, v.SPIFFEID, v.ParentID, int64(v.X509SVIDTTL), int64(v.JWTSVIDTTL),
		dns, sqlrow.NS(v.CreatedAt), types, values); err != nil {
		return store.Entry{}, wrap("create entry", err)
	}
	return v, nil
}

// Entry queries: one statement per filter shape, each answered by an index
// range already in id order (entries_parent_id, entries_spiffe_id, the
// primary key), with the selectors gathered from entry_selectors' primary
// key in the same statement and snapshot.
const (
	entrySelect = `SELECT e.id, e.spiffe_id, e.parent_id, e.x509_ttl_ns, e.jwt_ttl_ns, e.dns_names, e.created_at,
	ARRAY(SELECT s.type FROM entry_selectors s WHERE s.entry_id = e.id ORDER BY s.position),
	ARRAY(SELECT s.value FROM entry_selectors s WHERE s.entry_id = e.id ORDER BY s.position)
FROM entries e `
	entryByID           = entrySelect + `WHERE e.id = $1`
	entriesAll          = entrySelect + `ORDER BY e.id`
	entriesByParent     = entrySelect + `WHERE e.parent_id = $1 ORDER BY e.id`
	entriesBySPIFFEID   = entrySelect + `WHERE e.spiffe_id = $1 ORDER BY e.id`
	entriesByParentAndS = entrySelect + `WHERE e.parent_id = $1 AND e.spiffe_id = $2 ORDER BY e.id`
)

func (e entries) Get(ctx context.Context, id string) (store.Entry, error) {
	list, err := e.query(ctx, entryByID, id)
	if err != nil {
		return store.Entry{}, err
	}
	if len(list) == 0 {
		return store.Entry{}, fmt.Errorf("postgres: get entry %s: %w", id, store.ErrNotFound)
	}
	return list[0], nil
}

func (e entries) List(ctx context.Context, f store.EntryFilter) ([]store.Entry, error) {
	switch {
	case f.ParentID != "" && f.SPIFFEID != "":
		return e.query(ctx, entriesByParentAndS, f.ParentID, f.SPIFFEID)
	case f.ParentID != "":
		return e.query(ctx, entriesByParent, f.ParentID)
	case f.SPIFFEID != "":
		return e.query(ctx, entriesBySPIFFEID, f.SPIFFEID)
	default:
		return e.query(ctx, entriesAll)
	}
}

func (e entries) query(ctx context.Context, sql string, args ...any) ([]store.Entry, error) {
	rows, err := e.db.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, wrap("list entries", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Entry, error) {
		var v store.Entry
		var x509, jwt, created int64
		var types, values []string
		if err := r.Scan(&v.ID, &v.SPIFFEID, &v.ParentID, &x509, &jwt, &v.DNSNames, &created, &types, &values); err != nil {
			return v, err
		}
		v.X509SVIDTTL, v.JWTSVIDTTL, v.CreatedAt = time.Duration(x509), time.Duration(jwt), sqlrow.FromNS(created)
		if len(v.DNSNames) == 0 {
			v.DNSNames = nil
		}
		if len(types) != len(values) {
			return v, fmt.Errorf("entry %s: %d selector types for %d values", v.ID, len(types), len(values))
		}
		for i := range types {
			v.Selectors = append(v.Selectors, store.Selector{Type: types[i], Value: values[i]})
		}
		return v, nil
	})
	if err != nil {
		return nil, wrap("list entries", err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func (e entries) Delete(ctx context.Context, id string) error {
	tag, err := e.db.pool.Exec(ctx, deleteEntry, id)
	return affectedOne("delete entry", tag, err)
}

type resources struct{ db *DB }

func (r resources) Put(ctx context.Context, v store.Resource) error {
	if v.UpdatedAt.IsZero() {
		v.UpdatedAt = time.Now().UTC()
	}
	_, err := r.db.pool.Exec(ctx,
		`INSERT INTO resources (path, sealed, updated_at) VALUES ($1,$2,$3)
		 ON CONFLICT (path) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at`,
		v.Path, v.Sealed, sqlrow.NS(v.UpdatedAt))
	return wrap("put resource", err)
}

func (r resources) Get(ctx context.Context, path string) (store.Resource, error) {
	var v store.Resource
	var updated int64
	err := r.db.pool.QueryRow(ctx, resourceByPath, path).Scan(&v.Path, &v.Sealed, &updated)
	v.UpdatedAt = sqlrow.FromNS(updated)
	return v, wrap("get resource", err)
}

func (r resources) Delete(ctx context.Context, path string) error {
	tag, err := r.db.pool.Exec(ctx, `DELETE FROM resources WHERE path = $1`, path)
	return affectedOne("delete resource", tag, err)
}

func (r resources) List(ctx context.Context, prefix string) ([]string, error) {
	// starts_with, not LIKE, so that '%' and '_' in a prefix are literal;
	// path >= prefix starts the primary key's range at the prefix.
	rows, err := r.db.pool.Query(ctx, `SELECT path FROM resources WHERE path >= $1 AND starts_with(path, $1) ORDER BY path`, prefix)
	if err != nil {
		return nil, wrap("list resources", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return out, wrap("list resources", err)
}

type keys struct{ db *DB }

func (k keys) Create(ctx context.Context, v store.Key) error {
	if v.CreatedAt.IsZero() {
		v.CreatedAt = time.Now().UTC()
	}
	_, err := k.db.pool.Exec(ctx,
		`INSERT INTO keys (kind, id, sealed, public, not_before, not_after, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7)`,
		v.Kind, v.ID, v.Sealed, v.Public, sqlrow.NS(v.NotBefore), sqlrow.NS(v.NotAfter), sqlrow.NS(v.CreatedAt))
	return wrap("create key", err)
}

func (k keys) List(ctx context.Context, kind string) ([]store.Key, error) {
	rows, err := k.db.pool.Query(ctx,
		keysByKind, kind)
	if err != nil {
		return nil, wrap("list keys", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Key, error) {
		var v store.Key
		var nb, na, created int64
		err := r.Scan(&v.Kind, &v.ID, &v.Sealed, &v.Public, &nb, &na, &created)
		v.NotBefore, v.NotAfter, v.CreatedAt = sqlrow.FromNS(nb), sqlrow.FromNS(na), sqlrow.FromNS(created)
		return v, err
	})
	return out, wrap("list keys", err)
}

func (k keys) Delete(ctx context.Context, kind, id string) error {
	tag, err := k.db.pool.Exec(ctx, `DELETE FROM keys WHERE kind = $1 AND id = $2`, kind, id)
	return affectedOne("delete key", tag, err)
}

type policies struct{ db *DB }

func (p policies) Get(ctx context.Context, name string) (store.Policy, error) {
	var v store.Policy
	var updated int64
	err := p.db.pool.QueryRow(ctx, policyByName, name).
		Scan(&v.Name, &v.Text, &v.Revision, &updated)
	v.UpdatedAt = sqlrow.FromNS(updated)
	return v, wrap("get policy", err)
}

func (p policies) Put(ctx context.Context, name, text string) (store.Policy, error) {
	v := store.Policy{Name: name, Text: text, UpdatedAt: time.Now().UTC()}
	err := p.db.pool.QueryRow(ctx,
		`INSERT INTO policies (name, text, revision, updated_at) VALUES ($1,$2,1,$3)
		 ON CONFLICT (name) DO UPDATE SET text = excluded.text, revision = policies.revision + 1, updated_at = excluded.updated_at
		 RETURNING revision`, name, text, sqlrow.NS(v.UpdatedAt)).Scan(&v.Revision)
	return v, wrap("put policy", err)
}
