package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// hotQueries are the statements that attestation, SVID issuance, an agent's
// entry fetch and resource delivery run, with sample arguments.
var hotQueries = []struct {
	name string
	q    string
	args []any
}{
	{"session by id", sessionByID, []any{"s"}},
	{"consume nonce", consumeNonce, []any{"s"}},
	{"set claims", setClaims, []any{[]byte("c"), "s"}},
	{"delete expired sessions", deleteExpiredSessions, []any{0}},
	{"consume join token", consumeJoinToken, []any{"t"}},
	{"entry by id", entryByID, []any{"e"}},
	{"entries by parent", entriesByParent, []any{"spiffe://td/agent"}},
	{"entries by SPIFFE ID", entriesBySPIFFEID, []any{"spiffe://td/w"}},
	{"entries by parent and SPIFFE ID", entriesByParentAndS, []any{"spiffe://td/agent", "spiffe://td/w"}},
	{"delete entry", deleteEntry, []any{"e"}},
	{"resource by path", resourceByPath, []any{"a/b/c"}},
	{"keys by kind", keysByKind, []any{"token-signing"}},
	{"attest agent", attestAgent, []any{"spiffe://td/spire/agent/a", "join_token", "[]", "1", int64(0), int64(0), int64(0)}},
	{"renew agent", renewAgent, []any{"2", int64(0), int64(0), "spiffe://td/spire/agent/a", "1", "1"}},
	{"agent by id", agentByID, []any{"spiffe://td/spire/agent/a"}},
	{"evict agent", evictAgent, []any{int64(0), "spiffe://td/spire/agent/a"}},
	{"spend token", spendToken, []any{"t", "k", int64(0)}},
	{"token answered", tokenAnswered, []any{[]byte("a"), "t"}},
	{"delete spent tokens", deleteSpentTokens, []any{int64(0)}},
	{"entries revision", entryRevision, nil},
	{"policy by name", policyByName, []any{"resource"}},
}

// scans returns the lines of q's query plan that read a whole table or
// index ("SCAN ..."), where a hot query must only SEARCH.
func scans(t *testing.T, db *sql.DB, q string, args []any) []string {
	t.Helper()
	rows, err := db.Query(`EXPLAIN QUERY PLAN `+q, args...)
	if err != nil {
		t.Fatalf("explain %s: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(detail, "SCAN") {
			out = append(out, detail)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func planDB(t *testing.T) *DB {
	t.Helper()
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "p.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	// Some rows and statistics, so that the plans are the ones a real
	// database gets.
	for i := range 200 {
		if _, err := db.w.ExecContext(ctx, `INSERT INTO entries (id, spiffe_id, parent_id, created_at) VALUES (?,?,?,0)`,
			fmt.Sprint("e", i), fmt.Sprint("spiffe://td/w", i), fmt.Sprint("spiffe://td/agent", i%10)); err != nil {
			t.Fatal(err)
		}
		if _, err := db.w.ExecContext(ctx, `INSERT INTO entry_selectors (entry_id, position, type, value) VALUES (?,0,'t','v')`, fmt.Sprint("e", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.w.ExecContext(ctx, `ANALYZE`); err != nil {
		t.Fatal(err)
	}
	return db
}

// TestHotQueriesUseIndexes fails when a hot query's plan reads a whole
// table: the cost of that query would then grow with the number of rows.
func TestHotQueriesUseIndexes(t *testing.T) {
	db := planDB(t)
	for _, hq := range hotQueries {
		if s := scans(t, db.w.db, hq.q, hq.args); len(s) > 0 {
			t.Errorf("%s scans: %q", hq.name, s)
		}
	}
}

// TestPlanCheckSeesAMissingIndex drops each entries index and checks that
// the plan check then finds the scan, so that TestHotQueriesUseIndexes can
// fail.
func TestPlanCheckSeesAMissingIndex(t *testing.T) {
	for index, q := range map[string]string{"entries_parent_id_id": entriesByParent, "entries_spiffe_id_id": entriesBySPIFFEID} {
		db := planDB(t)
		if _, err := db.w.ExecContext(context.Background(), `DROP INDEX `+index); err != nil {
			t.Fatal(err)
		}
		if s := scans(t, db.w.db, q, []any{"x"}); len(s) == 0 {
			t.Errorf("without %s the plan check finds no scan", index)
		}
	}
}
