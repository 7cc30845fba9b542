package attestor_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/trustgate/trustgate/agent/attestor"
)

type fixed struct {
	name string
	sel  []attestor.Selector
	err  error
}

func (f fixed) Name() string { return f.name }
func (f fixed) Attest(context.Context, int32) ([]attestor.Selector, error) {
	return f.sel, f.err
}

func TestMulti(t *testing.T) {
	a := fixed{name: "unix", sel: []attestor.Selector{{Type: "unix", Value: "uid:1"}}}
	b := fixed{name: "nri", sel: []attestor.Selector{{Type: "k8s", Value: "ns:demo"}}}
	got, err := attestor.Multi{a, b}.Attest(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, append(slices.Clone(a.sel), b.sel...)) {
		t.Fatalf("selectors %v", got)
	}
	boom := errors.New("gone")
	if _, err := (attestor.Multi{a, fixed{name: "nri", err: boom}}).Attest(context.Background(), 1); !errors.Is(err, boom) {
		t.Fatalf("a failing attestor: %v", err)
	}
}

// watching is an attestor whose selectors can be withdrawn.
type watching struct {
	fixed
	ch chan struct{}
}

func (w watching) AttestWatch(context.Context, int32) ([]attestor.Selector, <-chan struct{}, error) {
	return w.sel, w.ch, w.err
}

// TestMultiWatch: Multi watches through its members: no channel when none
// watches, the member's own when one does, and with several a channel
// that closes when any of theirs does (and never when the context ends).
func TestMultiWatch(t *testing.T) {
	ctx := context.Background()
	u := fixed{name: "unix", sel: []attestor.Selector{{Type: "unix", Value: "uid:1"}}}
	if _, ch, err := (attestor.Multi{u}).AttestWatch(ctx, 1); ch != nil || err != nil {
		t.Fatalf("no watcher: %v %v", ch, err)
	}
	w1 := watching{fixed{name: "nri", sel: []attestor.Selector{{Type: "k8s", Value: "ns:demo"}}}, make(chan struct{})}
	sel, ch, err := attestor.Multi{u, w1}.AttestWatch(ctx, 1)
	if err != nil || len(sel) != 2 || ch != (<-chan struct{})(w1.ch) {
		t.Fatalf("one watcher: %v %v %v", sel, ch, err)
	}
	w2 := watching{fixed{name: "other"}, make(chan struct{})}
	_, ch, _ = attestor.Multi{w1, u, w2}.AttestWatch(ctx, 1)
	select {
	case <-ch:
		t.Fatal("closed before any member's channel")
	case <-time.After(20 * time.Millisecond):
	}
	close(w2.ch)
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("not closed after a member's channel closed")
	}
	cctx, cancel := context.WithCancel(ctx)
	w3 := watching{fixed{name: "third"}, make(chan struct{})}
	_, ch, _ = attestor.Multi{w1, w3}.AttestWatch(cctx, 1)
	cancel()
	select {
	case <-ch:
		t.Fatal("the context's end closed the channel: a stream would re-attest for nothing")
	case <-time.After(20 * time.Millisecond):
	}
	// A plain attestor through the helper has no channel.
	if _, ch, _ := attestor.AttestWatch(ctx, u, 1); ch != nil {
		t.Fatal("a plain attestor watched")
	}
	boom := errors.New("gone")
	if _, _, err := (attestor.Multi{w1, fixed{name: "x", err: boom}}).AttestWatch(ctx, 1); !errors.Is(err, boom) {
		t.Fatalf("a failing attestor: %v", err)
	}
}
