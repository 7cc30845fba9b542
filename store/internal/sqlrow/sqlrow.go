// Package sqlrow holds what the SQL stores (store/sqlite, store/postgres)
// decode alike: times kept as Unix nanoseconds, and the agents table's
// rows, whose columns and encodings both schemas share.
package sqlrow

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/trustgate/trustgate/store"
)

// NS is t as the stores keep it: Unix nanoseconds.
func NS(t time.Time) int64 { return t.UnixNano() }

// FromNS is a stored time, in UTC.
func FromNS(v int64) time.Time { return time.Unix(0, v).UTC() }

// Scanner is a row of either driver (database/sql and pgx).
type Scanner interface{ Scan(dest ...any) error }

// AgentColumns are the agents table's columns, in ScanAgent's order.
const AgentColumns = `spiffe_id, attestor, selectors, serial, prev_serial, expires_at, evicted, created_at, updated_at`

// ScanAgent decodes a row of AgentColumns (selectors as JSON, times as
// Unix nanoseconds).
func ScanAgent(row Scanner) (store.Agent, error) {
	var v store.Agent
	var sel string
	var expires, created, updated int64
	if err := row.Scan(&v.SPIFFEID, &v.Attestor, &sel, &v.SerialNumber, &v.PrevSerialNumber, &expires, &v.Evicted, &created, &updated); err != nil {
		return store.Agent{}, err
	}
	if err := json.Unmarshal([]byte(sel), &v.Selectors); err != nil {
		return store.Agent{}, fmt.Errorf("agent %s: selectors: %w", v.SPIFFEID, err)
	}
	v.ExpiresAt, v.CreatedAt, v.UpdatedAt = FromNS(expires), FromNS(created), FromNS(updated)
	return v, nil
}
