// Package sqlite is the embedded store: store.Store on SQLite, in pure Go
// (modernc.org/sqlite, no cgo).
//
// The database runs in WAL mode. Writes go through one connection, so they
// never contend for SQLite's write lock, and each write transaction starts
// IMMEDIATE; reads use a separate pool and proceed concurrently with writes.
// Schema changes are versioned migrations embedded in the binary.
package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/internal/sqlrow"
	sqlitedrv "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Options tune the database.
type Options struct {
	// Synchronous is SQLite's synchronous setting: "NORMAL" (the default;
	// in WAL mode a process crash loses nothing committed) or "FULL" (also
	// survives power loss, at an fsync per commit).
	Synchronous string
	// BusyTimeout bounds how long a statement waits for a lock held by
	// another process. Default 10 s.
	BusyTimeout time.Duration
	// MaxReaders bounds the read pool. Default 8.
	MaxReaders int
	// ReaderCache bounds each reader's page cache, in bytes; it fills
	// only as far as the database is read. Default 32 MiB: at 100,000
	// entries SQLite's own 2 MiB default left lookups of random entries
	// at half their rate at 1,000 entries, each page a read from the file.
	ReaderCache int64
}

// DB is a store.Store on one SQLite database file.
type DB struct {
	w, r  *pool
	hub   store.Hub
	locks store.LocalLocks
}

var _ store.Store = (*DB)(nil)

// Open opens (creating if needed, mode 0600) the database at path and
// migrates it to the newest schema.
func Open(ctx context.Context, path string, opts Options) (*DB, error) {
	return open(ctx, path, opts, -1)
}

func open(ctx context.Context, path string, opts Options, target int) (*DB, error) {
	if path == "" {
		return nil, errors.New("sqlite: empty database path")
	}
	sync := strings.ToUpper(opts.Synchronous)
	if sync == "" {
		sync = "NORMAL"
	}
	if sync != "NORMAL" && sync != "FULL" {
		return nil, fmt.Errorf("sqlite: synchronous %q: want NORMAL or FULL", opts.Synchronous)
	}
	busy := opts.BusyTimeout
	if busy <= 0 {
		busy = 10 * time.Second
	}
	readers := opts.MaxReaders
	if readers <= 0 {
		readers = 8
	}
	cache := opts.ReaderCache
	if cache <= 0 {
		cache = 32 << 20
	}
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busy.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous("+sync+")")
	q.Set("_txlock", "immediate")
	dsn := "file:" + path + "?" + q.Encode()

	if err := privateFiles(path); err != nil {
		return nil, err
	}
	w, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxLifetime(0)
	if err := migrate(ctx, w, target); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("sqlite: %s: %w", path, err)
	}
	q.Add("_pragma", "query_only(1)")
	q.Add("_pragma", fmt.Sprintf("cache_size(-%d)", max(1, cache>>10))) // negative: KiB
	r, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("sqlite: open readers %s: %w", path, err)
	}
	r.SetMaxOpenConns(readers)
	db := &DB{w: newPool(w), r: newPool(r)}
	if err := db.w.warm(ctx, sessionByID, consumeNonce); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	return db, nil
}

// privateFiles creates the database file with mode 0600 if it does not
// exist, and takes group and other permissions off the database and any
// WAL or shared-memory file left from an earlier run. SQLite creates its
// WAL and shared-memory files with the database file's permissions, so all
// three end up 0600 whatever the umask.
func privateFiles(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		if err := f.Close(); err != nil {
			return fmt.Errorf("sqlite: create %s: %w", path, err)
		}
	case !errors.Is(err, os.ErrExist):
		return fmt.Errorf("sqlite: create %s: %w", path, err)
	}
	for _, name := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("sqlite: %w", err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			if err := os.Chmod(name, perm&^0o077); err != nil {
				return fmt.Errorf("sqlite: make %s private: %w", name, err)
			}
		}
	}
	return nil
}

// Close closes both connection pools.
func (db *DB) Close() error {
	return errors.Join(db.r.Close(), db.w.Close())
}

// Changes implements store.Store: notifications reach the subscribers of
// this DB, in this process, before the write returns.
func (db *DB) Changes() store.Changes { return &db.hub }

// Locks implements store.Store: named mutexes in this process; this process
// always leads.
func (db *DB) Locks() store.Locks { return &db.locks }

// Ping implements store.Store: a read on the read pool.
func (db *DB) Ping(ctx context.Context) error {
	var one int
	if err := db.r.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("sqlite: ping: %w", err)
	}
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

// tx runs fn in a write transaction and commits it if fn succeeds.
func (db *DB) tx(ctx context.Context, fn func(*tx) error) error {
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	return nil
}

// isUnique reports whether err is a primary-key or unique violation.
func isUnique(err error) bool {
	var se *sqlitedrv.Error
	if errors.As(err, &se) {
		c := se.Code()
		return c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || c == sqlite3.SQLITE_CONSTRAINT_UNIQUE
	}
	return false
}

func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("sqlite: %s: %w", op, store.ErrNotFound)
	}
	if isUnique(err) {
		return fmt.Errorf("sqlite: %s: %w", op, store.ErrConflict)
	}
	return fmt.Errorf("sqlite: %s: %w", op, err)
}

// Statements that the hot paths run by key; plan_test.go checks that each
// is answered through an index.
const (
	setClaims             = `UPDATE sessions SET claims = ? WHERE id = ? AND nonce_used = 1`
	deleteExpiredSessions = `DELETE FROM sessions WHERE expires_at <= ?`
	consumeJoinToken      = `DELETE FROM join_tokens WHERE id = ? RETURNING id, spiffe_id, expires_at, created_at`
	deleteEntry           = `DELETE FROM entries WHERE id = ?`
	resourceByPath        = `SELECT path, sealed, updated_at FROM resources WHERE path = ?`
	keysByKind            = `SELECT kind, id, sealed, public, not_before, not_after, created_at FROM keys WHERE kind = ? ORDER BY not_before, id`
	policyByName          = `SELECT name, text, revision, updated_at FROM policies WHERE name = ?`
)

type sessions struct{ db *DB }

func (s sessions) Create(ctx context.Context, v store.Session) error {
	_, err := s.db.w.ExecContext(ctx,
		`INSERT INTO sessions (id, tee, nonce, extra_params, created_at, expires_at, nonce_used, claims) VALUES (?,?,?,?,?,?,?,?)`,
		v.ID, v.TEE, v.Nonce, v.ExtraParams, sqlrow.NS(v.CreatedAt), sqlrow.NS(v.ExpiresAt), v.NonceUsed, v.Claims)
	return wrap("create session", err)
}

const (
	sessionCols  = `id, tee, nonce, extra_params, created_at, expires_at, nonce_used, claims`
	sessionByID  = `SELECT ` + sessionCols + ` FROM sessions WHERE id = ?`
	consumeNonce = `UPDATE sessions SET nonce_used = 1 WHERE id = ?`
)

func scanSession(row interface{ Scan(...any) error }) (store.Session, error) {
	var v store.Session
	var created, expires int64
	err := row.Scan(&v.ID, &v.TEE, &v.Nonce, &v.ExtraParams, &created, &expires, &v.NonceUsed, &v.Claims)
	v.CreatedAt, v.ExpiresAt = sqlrow.FromNS(created), sqlrow.FromNS(expires)
	return v, err
}

func (s sessions) Get(ctx context.Context, id string) (store.Session, error) {
	v, err := scanSession(s.db.r.QueryRowContext(ctx, sessionByID, id))
	return v, wrap("get session", err)
}

func (s sessions) ConsumeNonce(ctx context.Context, id, nonce string, now time.Time) (store.Session, error) {
	var out store.Session
	err := s.db.tx(ctx, func(tx *tx) error {
		v, err := scanSession(tx.QueryRowContext(ctx, sessionByID, id))
		if err != nil {
			return wrap("consume nonce", err)
		}
		// The nonce is public (it was sent to the caller), so comparing it
		// in variable time reveals nothing.
		switch {
		case v.Nonce != nonce:
			return fmt.Errorf("sqlite: consume nonce: nonce does not match session: %w", store.ErrNotFound)
		case v.NonceUsed:
			return fmt.Errorf("sqlite: consume nonce: %w", store.ErrConsumed)
		case !now.Before(v.ExpiresAt):
			return fmt.Errorf("sqlite: consume nonce: %w", store.ErrExpired)
		}
		if _, err := tx.ExecContext(ctx, consumeNonce, id); err != nil {
			return wrap("consume nonce", err)
		}
		v.NonceUsed = true
		out = v
		return nil
	})
	return out, err
}

func (s sessions) SetClaims(ctx context.Context, id string, claims []byte) error {
	res, err := s.db.w.ExecContext(ctx, setClaims, claims, id)
	if err != nil {
		return wrap("set claims", err)
	}
	return affectedOne("set claims", res)
}

func (s sessions) DeleteExpired(ctx context.Context, now time.Time) (int, error) {
	res, err := s.db.w.ExecContext(ctx, deleteExpiredSessions, sqlrow.NS(now))
	if err != nil {
		return 0, wrap("delete expired sessions", err)
	}
	n, err := res.RowsAffected()
	return int(n), wrap("delete expired sessions", err)
}

func affectedOne(op string, res sql.Result) error {
	n, err := res.RowsAffected()
	if err != nil {
		return wrap(op, err)
	}
	if n == 0 {
		return fmt.Errorf("sqlite: %s: %w", op, store.ErrNotFound)
	}
	return nil
}

type joinTokens struct{ db *DB }

func (j joinTokens) Create(ctx context.Context, t store.JoinToken) error {
	_, err := j.db.w.ExecContext(ctx, `INSERT INTO join_tokens (id, spiffe_id, expires_at, created_at) VALUES (?,?,?,?)`,
		t.ID, t.SPIFFEID, sqlrow.NS(t.ExpiresAt), sqlrow.NS(t.CreatedAt))
	return wrap("create join token", err)
}

func (j joinTokens) Consume(ctx context.Context, id string) (store.JoinToken, error) {
	var t store.JoinToken
	var expires, created int64
	err := j.db.w.QueryRowContext(ctx,
		consumeJoinToken, id).
		Scan(&t.ID, &t.SPIFFEID, &expires, &created)
	t.ExpiresAt, t.CreatedAt = sqlrow.FromNS(expires), sqlrow.FromNS(created)
	return t, wrap("consume join token", err)
}

func (j joinTokens) List(ctx context.Context) ([]store.JoinToken, error) {
	rows, err := j.db.r.QueryContext(ctx, `SELECT id, spiffe_id, expires_at, created_at FROM join_tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, wrap("list join tokens", err)
	}
	defer rows.Close()
	var out []store.JoinToken
	for rows.Next() {
		var t store.JoinToken
		var expires, created int64
		if err := rows.Scan(&t.ID, &t.SPIFFEID, &expires, &created); err != nil {
			return nil, wrap("list join tokens", err)
		}
		t.ExpiresAt, t.CreatedAt = sqlrow.FromNS(expires), sqlrow.FromNS(created)
		out = append(out, t)
	}
	return out, wrap("list join tokens", rows.Err())
}

type entries struct{ db *DB }

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (e entries) Create(ctx context.Context, v store.Entry) (store.Entry, error) {
	if v.ID == "" {
		v.ID = newID()
	}
	if v.CreatedAt.IsZero() {
		v.CreatedAt = time.Now().UTC()
	}
	dns, err := json.Marshal(v.DNSNames)
	if err != nil {
		return store.Entry{}, fmt.Errorf("sqlite: create entry: %w", err)
	}
	err = e.db.tx(ctx, func(tx *tx) error {
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO entries (id, spiffe_id, parent_id, x509_ttl_ns, jwt_ttl_ns, dns_names, created_at) VALUES (?,?,?,?,?,?,?)`,
			v.ID, v.SPIFFEID, v.ParentID, int64(v.X509SVIDTTL), int64(v.JWTSVIDTTL), string(dns), sqlrow.NS(v.CreatedAt)); err != nil {
			return wrap("create entry", err)
		}
		for i, s := range v.Selectors {
			if _, err := tx.ExecContext(ctx, `INSERT INTO entry_selectors (entry_id, position, type, value) VALUES (?,?,?,?)`,
				v.ID, i, s.Type, s.Value); err != nil {
				return wrap("create entry selector", err)
			}
		}
		return nil
	})
	if err != nil {
		return store.Entry{}, err
	}
	e.db.hub.Publish(store.Change{Topic: store.TopicEntries})
	return v, nil
}

// Entry queries: one statement per filter shape, never a filter that
// SQLite can only answer by scanning ("? = ” OR parent_id = ?"). Each is
// an index range already in id order (entries_parent_id_id,
// entries_spiffe_id_id, the primary key), joined to entry_selectors by its
// primary key; one statement is one snapshot.
const (
	entrySelect = `SELECT e.id, e.spiffe_id, e.parent_id, e.x509_ttl_ns, e.jwt_ttl_ns, e.dns_names, e.created_at, s.type, s.value
FROM entries e LEFT JOIN entry_selectors s ON s.entry_id = e.id `
	entryByID           = entrySelect + `WHERE e.id = ? ORDER BY s.position`
	entriesAll          = entrySelect + `ORDER BY e.id, s.position`
	entriesByParent     = entrySelect + `WHERE e.parent_id = ? ORDER BY e.id, s.position`
	entriesBySPIFFEID   = entrySelect + `WHERE e.spiffe_id = ? ORDER BY e.id, s.position`
	entriesByParentAndS = entrySelect + `WHERE e.parent_id = ? AND e.spiffe_id = ? ORDER BY e.id, s.position`
)

func (e entries) Get(ctx context.Context, id string) (store.Entry, error) {
	list, err := e.query(ctx, entryByID, id)
	if err != nil {
		return store.Entry{}, err
	}
	if len(list) == 0 {
		return store.Entry{}, fmt.Errorf("sqlite: get entry %s: %w", id, store.ErrNotFound)
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

// query runs one of the entry queries: a row per selector (or one with
// NULL selector columns for an entry without any), in entry order.
func (e entries) query(ctx context.Context, q string, args ...any) ([]store.Entry, error) {
	rows, err := e.db.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, wrap("list entries", err)
	}
	defer rows.Close()
	var out []store.Entry
	for rows.Next() {
		var v store.Entry
		var x509, jwt, created int64
		var dns string
		var typ, val sql.NullString
		if err := rows.Scan(&v.ID, &v.SPIFFEID, &v.ParentID, &x509, &jwt, &dns, &created, &typ, &val); err != nil {
			return nil, wrap("list entries", err)
		}
		if n := len(out); n == 0 || out[n-1].ID != v.ID {
			v.X509SVIDTTL, v.JWTSVIDTTL, v.CreatedAt = time.Duration(x509), time.Duration(jwt), sqlrow.FromNS(created)
			if err := json.Unmarshal([]byte(dns), &v.DNSNames); err != nil {
				return nil, fmt.Errorf("sqlite: entry %s: dns names: %w", v.ID, err)
			}
			out = append(out, v)
		}
		if typ.Valid {
			last := &out[len(out)-1]
			last.Selectors = append(last.Selectors, store.Selector{Type: typ.String, Value: val.String})
		}
	}
	return out, wrap("list entries", rows.Err())
}

func (e entries) Delete(ctx context.Context, id string) error {
	res, err := e.db.w.ExecContext(ctx, deleteEntry, id)
	if err != nil {
		return wrap("delete entry", err)
	}
	e.db.hub.Publish(store.Change{Topic: store.TopicEntries})
	return affectedOne("delete entry", res)
}

type resources struct{ db *DB }

func (r resources) Put(ctx context.Context, v store.Resource) error {
	if v.UpdatedAt.IsZero() {
		v.UpdatedAt = time.Now().UTC()
	}
	_, err := r.db.w.ExecContext(ctx,
		`INSERT INTO resources (path, sealed, updated_at) VALUES (?,?,?) ON CONFLICT (path) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at`,
		v.Path, v.Sealed, sqlrow.NS(v.UpdatedAt))
	return wrap("put resource", err)
}

func (r resources) Get(ctx context.Context, path string) (store.Resource, error) {
	var v store.Resource
	var updated int64
	err := r.db.r.QueryRowContext(ctx, resourceByPath, path).Scan(&v.Path, &v.Sealed, &updated)
	v.UpdatedAt = sqlrow.FromNS(updated)
	return v, wrap("get resource", err)
}

func (r resources) Delete(ctx context.Context, path string) error {
	res, err := r.db.w.ExecContext(ctx, `DELETE FROM resources WHERE path = ?`, path)
	if err != nil {
		return wrap("delete resource", err)
	}
	return affectedOne("delete resource", res)
}

func (r resources) List(ctx context.Context, prefix string) ([]string, error) {
	// substr instead of LIKE, so that '%' and '_' in a prefix are literal.
	rows, err := r.db.r.QueryContext(ctx, `SELECT path FROM resources WHERE substr(path, 1, length(?)) = ? ORDER BY path`, prefix, prefix)
	if err != nil {
		return nil, wrap("list resources", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, wrap("list resources", err)
		}
		out = append(out, p)
	}
	return out, wrap("list resources", rows.Err())
}

type keys struct{ db *DB }

func (k keys) Create(ctx context.Context, v store.Key) error {
	if v.CreatedAt.IsZero() {
		v.CreatedAt = time.Now().UTC()
	}
	_, err := k.db.w.ExecContext(ctx,
		`INSERT INTO keys (kind, id, sealed, public, not_before, not_after, created_at) VALUES (?,?,?,?,?,?,?)`,
		v.Kind, v.ID, v.Sealed, v.Public, sqlrow.NS(v.NotBefore), sqlrow.NS(v.NotAfter), sqlrow.NS(v.CreatedAt))
	if err == nil {
		k.db.hub.Publish(store.Change{Topic: store.TopicKeys})
	}
	return wrap("create key", err)
}

func (k keys) List(ctx context.Context, kind string) ([]store.Key, error) {
	rows, err := k.db.r.QueryContext(ctx,
		keysByKind, kind)
	if err != nil {
		return nil, wrap("list keys", err)
	}
	defer rows.Close()
	var out []store.Key
	for rows.Next() {
		var v store.Key
		var nb, na, created int64
		if err := rows.Scan(&v.Kind, &v.ID, &v.Sealed, &v.Public, &nb, &na, &created); err != nil {
			return nil, wrap("list keys", err)
		}
		v.NotBefore, v.NotAfter, v.CreatedAt = sqlrow.FromNS(nb), sqlrow.FromNS(na), sqlrow.FromNS(created)
		out = append(out, v)
	}
	return out, wrap("list keys", rows.Err())
}

func (k keys) Delete(ctx context.Context, kind, id string) error {
	res, err := k.db.w.ExecContext(ctx, `DELETE FROM keys WHERE kind = ? AND id = ?`, kind, id)
	if err != nil {
		return wrap("delete key", err)
	}
	k.db.hub.Publish(store.Change{Topic: store.TopicKeys})
	return affectedOne("delete key", res)
}

type policies struct{ db *DB }

func (p policies) Get(ctx context.Context, name string) (store.Policy, error) {
	var v store.Policy
	var updated int64
	err := p.db.r.QueryRowContext(ctx, policyByName, name).
		Scan(&v.Name, &v.Text, &v.Revision, &updated)
	v.UpdatedAt = sqlrow.FromNS(updated)
	return v, wrap("get policy", err)
}

func (p policies) Put(ctx context.Context, name, text string) (store.Policy, error) {
	v := store.Policy{Name: name, Text: text, UpdatedAt: time.Now().UTC()}
	err := p.db.w.QueryRowContext(ctx,
		`INSERT INTO policies (name, text, revision, updated_at) VALUES (?,?,1,?)
		 ON CONFLICT (name) DO UPDATE SET text = excluded.text, revision = policies.revision + 1, updated_at = excluded.updated_at
		 RETURNING revision`, name, text, sqlrow.NS(v.UpdatedAt)).Scan(&v.Revision)
	if err == nil {
		p.db.hub.Publish(store.Change{Topic: store.TopicPolicies})
	}
	return v, wrap("put policy", err)
}
