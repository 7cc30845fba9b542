package periodic

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type buf struct {
	mu sync.Mutex
	sb strings.Builder
}

func (b *buf) Write(p []byte) (int, error) { b.mu.Lock(); defer b.mu.Unlock(); return b.sb.Write(p) }

func TestRunCallsBoundedAndLogsFailures(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var b buf
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
	b.mu.Lock()
	defer b.mu.Unlock()
	if !strings.Contains(b.sb.String(), "rotation") || !strings.Contains(b.sb.String(), "boom") {
		t.Fatalf("failure not logged: %s", b.sb.String())
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
