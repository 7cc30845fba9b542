package agentapi

import "sync"

// Notifier tells waiting long polls that entries or agents may have
// changed. The store's change notifications (PostgreSQL LISTEN/NOTIFY, an
// in-process notifier for SQLite) plug in here.
type Notifier interface {
	// Changed returns a channel that is closed at the next change after
	// the call.
	Changed() <-chan struct{}
}

// Broadcaster is an in-process Notifier: Notify closes the channel every
// current waiter holds.
type Broadcaster struct {
	mu sync.Mutex
	ch chan struct{}
}

// NewBroadcaster returns a Broadcaster.
func NewBroadcaster() *Broadcaster { return &Broadcaster{ch: make(chan struct{})} }

// Changed implements Notifier.
func (b *Broadcaster) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

// Notify wakes every waiter.
func (b *Broadcaster) Notify() {
	b.mu.Lock()
	close(b.ch)
	b.ch = make(chan struct{})
	b.mu.Unlock()
}
