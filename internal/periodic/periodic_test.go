package periodic

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/trustgate/trustgate/internal/syncbuf"
)

func TestRunCallsBoundedAndLogsFailures(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var b syncbuf.Buffer
	calls := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, time.Millisecond, 5*time.Millisecond, slog.New(slog.NewTextHandler(&b, nil)), "rotation", func(c context.Context) error {
			calls++
			if _, ok := c.Deadline(); !ok {
				t.Error("call without a deadline")
			}
			if calls == 3 {
				cancel()
			}
			return errors.New("boom")
		})
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop when its context ended")
	}
	if calls < 3 {
		t.Fatalf("%d calls", calls)
	}
	if !strings.Contains(b.String(), "rotation") || !strings.Contains(b.String(), "boom") {
		t.Fatalf("failure not logged: %s", b.String())
	}
}

func TestRunWakeCallsOnWake(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	wake := make(chan struct{})
	called := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		RunWake(ctx, time.Hour, time.Second, slog.New(slog.DiscardHandler), "reload", wake, func(context.Context) error {
			called <- struct{}{}
			return nil
		})
	}()
	wake <- struct{}{}
	select {
	case <-called:
	case <-time.After(5 * time.Second):
		t.Fatal("a wake-up did not call fn")
	}
	cancel()
	<-done
}
