package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
)

// hotQueries are the statements that attestation, SVID issuance, an agent's
// entry fetch and resource delivery run, with sample arguments.
var hotQueries = []struct {
	name string
	q    string
	args []any
}{
	{"session by id", sessionByID, []any{"s"}},
	{"consume nonce", consumeNonce, []any{"s", "n", int64(0)}},
	{"set claims", setClaims, []any{[]byte("c"), "s"}},
	{"delete expired sessions", deleteExpiredSessions, []any{int64(0)}},
	{"consume join token", consumeJoinToken, []any{"t"}},
	{"entry by id", entryByID, []any{"e"}},
	{"entries by parent", entriesByParent, []any{"spiffe://td/agent"}},
	{"entries by SPIFFE ID", entriesBySPIFFEID, []any{"spiffe://td/w"}},
	{"entries by parent and SPIFFE ID", entriesByParentAndS, []any{"spiffe://td/agent", "spiffe://td/w"}},
	{"delete entry", deleteEntry, []any{"e"}},
	{"resource by path", resourceByPath, []any{"a/b/c"}},
	{"keys by kind", keysByKind, []any{"token-signing"}},
	{"attest agent", attestAgent, []any{"spiffe://td/spire/agent/a", "join_token", "[]", "1", int64(0), int64(0), int64(0)}},
	{"renew agent", renewAgent, []any{"2", int64(0), int64(0), "spiffe://td/spire/agent/a", "1"}},
	{"agent by id", agentByID, []any{"spiffe://td/spire/agent/a"}},
	{"evict agent", evictAgent, []any{int64(0), "spiffe://td/spire/agent/a"}},
	{"spend token", spendToken, []any{"t", "k", int64(0)}},
	{"token answered", tokenAnswered, []any{[]byte("a"), "t"}},
	{"delete spent tokens", deleteSpentTokens, []any{int64(0)}},
	{"entries revision", entryRevision, nil},
	{"policy by name", policyByName, []any{"resource"}},
}

// fullScans returns the plan nodes of q that read a whole table: a Seq
// Scan, or an index scan without an index condition (a full index walk,
// which the planner picks for its order when sequential scans are off).
// The check runs with enable_seqscan off, so that only a missing index, not
// the table's small size, makes the planner read everything.
func fullScans(t *testing.T, conn *pgx.Conn, q string, args []any) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL enable_seqscan = off`); err != nil {
			return err
		}
		var raw []byte
		if err := tx.QueryRow(ctx, `EXPLAIN (FORMAT JSON) `+q, args...).Scan(&raw); err != nil {
			return err
		}
		var plans []struct{ Plan planNode }
		if err := json.Unmarshal(raw, &plans); err != nil {
			return err
		}
		for _, p := range plans {
			p.Plan.walk(func(n planNode) {
				switch n.NodeType {
				case "Seq Scan":
					out = append(out, "Seq Scan on "+n.Relation)
				case "Index Scan", "Index Only Scan":
					if n.IndexCond == "" {
						out = append(out, fmt.Sprintf("%s using %s without a condition", n.NodeType, n.Index))
					}
				}
			})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("explain %s: %v", q, err)
	}
	return out
}

type planNode struct {
	NodeType  string     `json:"Node Type"`
	Relation  string     `json:"Relation Name"`
	Index     string     `json:"Index Name"`
	IndexCond string     `json:"Index Cond"`
	Plans     []planNode `json:"Plans"`
}

func (n planNode) walk(fn func(planNode)) {
	fn(n)
	for _, c := range n.Plans {
		c.walk(fn)
	}
}

// planConn returns a connection to a fresh, migrated schema with some rows
// and statistics in it.
func planConn(t *testing.T) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	opts := freshSchema(t)
	openT(t, opts).Close()
	cfg, err := opts.poolConfig()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	for _, q := range []string{
		`INSERT INTO entries (id, spiffe_id, parent_id, created_at)
		 SELECT 'e' || i, 'spiffe://td/w' || i, 'spiffe://td/agent' || (i % 50), 0 FROM generate_series(1, 2000) i`,
		`INSERT INTO entry_selectors (entry_id, position, type, value) SELECT id, 0, 't', 'v' FROM entries`,
		`ANALYZE`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	return conn
}

// TestHotQueriesUseIndexes fails when a hot query's plan reads a whole
// table: the cost of that query would then grow with the number of rows.
func TestHotQueriesUseIndexes(t *testing.T) {
	conn := planConn(t)
	for _, hq := range hotQueries {
		if s := fullScans(t, conn, hq.q, hq.args); len(s) > 0 {
			t.Errorf("%s reads a whole table: %q", hq.name, s)
		}
	}
}

// TestPlanCheckSeesAMissingIndex drops each entries index and checks that
// the plan check then finds the full scan, so that TestHotQueriesUseIndexes
// can fail.
func TestPlanCheckSeesAMissingIndex(t *testing.T) {
	for index, q := range map[string]string{"entries_parent_id": entriesByParent, "entries_spiffe_id": entriesBySPIFFEID} {
		conn := planConn(t)
		if _, err := conn.Exec(context.Background(), `DROP INDEX `+index); err != nil {
			t.Fatal(err)
		}
		if s := fullScans(t, conn, q, []any{"x"}); len(s) == 0 {
			t.Errorf("without %s the plan check finds no full scan", index)
		} else {
			t.Logf("without %s: %q", index, s)
		}
	}
}
