package broker

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/broker/plugin/svid"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store/sqlite"
)

// A CA-issued serving certificate shorter than the CA's one-minute
// backdating is renewed half-way through the life it had when issued, not
// at every check: counted from NotBefore, its half-life is already past.
func TestServingCertificateDueAtHalfItsIssuedLife(t *testing.T) {
	ctx := context.Background()
	db, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "trustgate.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sealer, err := seal.New(make([]byte, seal.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	clock := func() time.Time { return now }
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca, err := svid.New(ctx, svid.DefaultConfig(), td, db, sealer, nil, clock)
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 4 * time.Second
	s := &servingTLS{log: slog.New(slog.DiscardHandler), now: clock, ca: ca, id: spiffeid.RequireFromPath(td, "/spire/server"), dns: []string{"localhost"}, ttl: ttl}
	if !s.due() {
		t.Fatal("no certificate yet, but not due")
	}
	if err := s.issue(ctx); err != nil {
		t.Fatal(err)
	}
	if leaf := s.cert.Load().Leaf; !leaf.NotBefore.Before(now.Add(-ttl)) {
		t.Fatalf("NotBefore %v is not backdated beyond the lifetime: the test checks nothing", leaf.NotBefore)
	}
	for _, tc := range []struct {
		after time.Duration
		want  bool
	}{{0, false}, {ttl/2 - time.Second, false}, {ttl / 2, true}, {ttl, true}} {
		now = now.Add(tc.after)
		if got := s.due(); got != tc.want {
			t.Errorf("%v after issuance: due %v, want %v", tc.after, got, tc.want)
		}
		now = now.Add(-tc.after)
	}
}
