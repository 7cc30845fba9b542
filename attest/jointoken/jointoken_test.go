package jointoken

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/sqlite"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func newStore(t testing.TB) store.Store {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "t.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func evidence(tok string) json.RawMessage {
	b, _ := json.Marshal(Evidence{Token: tok})
	return b
}

func TestSingleUse(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	now := time.Unix(1_700_000_000, 0)
	tok, stored, err := Create(ctx, st.JoinTokens(), td, time.Minute, "", now)
	if err != nil {
		t.Fatal(err)
	}
	if stored.ID == tok || stored.ID != Digest(tok) {
		t.Fatal("the token itself is stored, not its digest")
	}
	a := New(st.JoinTokens(), td, func() time.Time { return now }, nil)
	r, err := a.Attest(ctx, attest.Challenge{}, evidence(tok))
	if err != nil {
		t.Fatal(err)
	}
	if r.SPIFFEID != "spiffe://example.org/spire/agent/join_token/"+tok {
		t.Fatalf("id %s", r.SPIFFEID)
	}
	if _, err := a.Attest(ctx, attest.Challenge{}, evidence(tok)); !errors.Is(err, attest.ErrRejected) {
		t.Fatalf("second use: %v", err)
	}
}

func TestPinnedID(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	now := time.Now()
	if _, _, err := Create(ctx, st.JoinTokens(), td, time.Minute, "spiffe://other.org/node", now); err == nil {
		t.Fatal("foreign trust domain accepted")
	}
	tok, _, err := Create(ctx, st.JoinTokens(), td, time.Minute, "spiffe://example.org/node/1", now)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(st.JoinTokens(), td, nil, nil).Attest(ctx, attest.Challenge{}, evidence(tok))
	if err != nil || r.SPIFFEID != "spiffe://example.org/node/1" {
		t.Fatalf("%+v %v", r, err)
	}
}

// TestExpiredIsDeletedFirst: an expired token is rejected, and is gone
// afterwards, as in SPIRE.
func TestExpiredIsDeletedFirst(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	now := time.Unix(1_700_000_000, 0)
	tok, _, err := Create(ctx, st.JoinTokens(), td, time.Minute, "", now)
	if err != nil {
		t.Fatal(err)
	}
	a := New(st.JoinTokens(), td, func() time.Time { return now.Add(time.Minute) }, nil)
	if _, err := a.Attest(ctx, attest.Challenge{}, evidence(tok)); !errors.Is(err, attest.ErrRejected) {
		t.Fatalf("expired token: %v", err)
	}
	if l, _ := st.JoinTokens().List(ctx); len(l) != 0 {
		t.Fatal("expired token still stored after use")
	}
}

func TestMalformedEvidence(t *testing.T) {
	a := New(newStore(t).JoinTokens(), td, nil, nil)
	for _, ev := range []string{``, `null`, `{}`, `{"token":""}`, `{"token":"short"}`, `{"token":"../../../../etc/passwd/xx"}`, `{"token":1}`, `{"token":"0123456789abcdef","x":1}`} {
		if _, err := a.Attest(context.Background(), attest.Challenge{}, json.RawMessage(ev)); !errors.Is(err, attest.ErrRejected) {
			t.Errorf("%s: %v", ev, err)
		}
	}
}

// TestConcurrentUseAtMostOnce races many callers for each token.
func TestConcurrentUseAtMostOnce(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	a := New(st.JoinTokens(), td, nil, nil)
	const tokens, racers = 20, 8
	var wins atomic.Int64
	var wg sync.WaitGroup
	for range tokens {
		tok, _, err := Create(ctx, st.JoinTokens(), td, time.Minute, "", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for range racers {
			wg.Go(func() {
				_, err := a.Attest(ctx, attest.Challenge{}, evidence(tok))
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, attest.ErrRejected):
					t.Error(err)
				}
			})
		}
	}
	wg.Wait()
	if wins.Load() != tokens {
		t.Fatalf("%d successes for %d tokens", wins.Load(), tokens)
	}
}

func FuzzAttest(f *testing.F) {
	f.Add([]byte(`{"token":"0123456789abcdef0123"}`))
	f.Add([]byte(`{"token":null}`))
	a := New(newStore(f).JoinTokens(), td, nil, nil)
	f.Fuzz(func(t *testing.T, ev []byte) {
		if _, err := a.Attest(context.Background(), attest.Challenge{}, ev); err == nil {
			t.Fatalf("accepted %q with no token stored", ev)
		} else if !errors.Is(err, attest.ErrRejected) {
			t.Fatalf("not ErrRejected: %v", err)
		}
	})
}
