package store

import (
	"context"
	"sync"
)

// Topics of the changes that every implementation announces by itself when
// a write commits. Callers may announce their own topics with Notify.
const (
	// TopicEntries: a registration entry was created or deleted.
	TopicEntries = "entries"
	// TopicKeys: key material was created or deleted.
	TopicKeys = "keys"
	// TopicPolicies: a policy document was written.
	TopicPolicies = "policies"
)

// Change is one change notification.
type Change struct {
	// Topic names what changed, e.g. TopicEntries.
	Topic string
	// Payload is the notifier's detail, if any (e.g. an agent's ID).
	Payload string
	// Reset means notifications may have been lost (the connection that
	// carries them was down): subscribers must treat everything under
	// their topic as changed. Topic is the subscriber's, Payload empty.
	Reset bool
}

// Changes carries change notifications between every server sharing the
// store, so that caches are invalidated within a second of a write on any
// replica. Delivery is at most once; a Reset stands for whatever may have
// been lost.
type Changes interface {
	// Notify announces a change under topic to every subscriber of every
	// server sharing the store, this one included.
	Notify(ctx context.Context, topic, payload string) error
	// Subscribe calls fn for every change under topic, and for every
	// Reset, until cancel is called. fn runs on the notifier's goroutine
	// (or, on a single-process store, on the writer's, before the write
	// returns): it must be quick and must not call the store.
	Subscribe(topic string, fn func(Change)) (cancel func())
}

// Locks coordinate the servers that share a store.
type Locks interface {
	// Do runs fn while holding the named lock: at most one caller among
	// every server sharing the store runs under a name at a time. fn may use
	// the store. The lock is released when fn returns, or when the server
	// holding it dies.
	Do(ctx context.Context, name string, fn func(context.Context) error) error
	// Lead runs fn whenever this server holds the named lease, until ctx
	// ends. At most one server holds a name's lease at a time; fn's
	// context ends when the lease is lost, and another server takes it
	// over when the holder dies or loses the database.
	Lead(ctx context.Context, name string, fn func(context.Context))
}

// Hub is an in-process Changes, for a store used by one process.
type Hub struct {
	mu   sync.RWMutex
	next int
	subs map[string]map[int]func(Change)
}

// Notify calls the topic's subscribers on the caller's goroutine.
func (h *Hub) Notify(_ context.Context, topic, payload string) error {
	h.Publish(Change{Topic: topic, Payload: payload})
	return nil
}

// Publish delivers c to the subscribers of c.Topic.
func (h *Hub) Publish(c Change) {
	h.mu.RLock()
	fns := make([]func(Change), 0, len(h.subs[c.Topic]))
	for _, fn := range h.subs[c.Topic] {
		fns = append(fns, fn)
	}
	h.mu.RUnlock()
	for _, fn := range fns {
		fn(c)
	}
}

// ResetAll delivers a Reset to every subscriber.
func (h *Hub) ResetAll() {
	h.mu.RLock()
	var calls []func()
	for topic, m := range h.subs {
		for _, fn := range m {
			calls = append(calls, func() { fn(Change{Topic: topic, Reset: true}) })
		}
	}
	h.mu.RUnlock()
	for _, c := range calls {
		c()
	}
}

// Subscribe implements Changes.
func (h *Hub) Subscribe(topic string, fn func(Change)) func() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = map[string]map[int]func(Change){}
	}
	if h.subs[topic] == nil {
		h.subs[topic] = map[int]func(Change){}
	}
	id := h.next
	h.next++
	h.subs[topic][id] = fn
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.subs[topic], id)
	}
}

// LocalLocks is Locks for a store used by one process: named mutexes, and
// a lease this process always holds.
type LocalLocks struct {
	mu    sync.Mutex
	named map[string]chan struct{}
}

// Do implements Locks.
func (l *LocalLocks) Do(ctx context.Context, name string, fn func(context.Context) error) error {
	l.mu.Lock()
	if l.named == nil {
		l.named = map[string]chan struct{}{}
	}
	ch := l.named[name]
	if ch == nil {
		ch = make(chan struct{}, 1)
		l.named[name] = ch
	}
	l.mu.Unlock()
	select {
	case ch <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	defer func() { <-ch }()
	return fn(ctx)
}

// Lead implements Locks: the single process always leads.
func (l *LocalLocks) Lead(ctx context.Context, _ string, fn func(context.Context)) {
	fn(ctx)
}

// Wake returns a channel that receives a value soon after every change under
// topic (and every Reset), coalescing bursts, until cancel is called: for
// a loop that reloads from the store when it changes.
func Wake(c Changes, topic string) (wake <-chan struct{}, cancel func()) {
	ch := make(chan struct{}, 1)
	cancel = c.Subscribe(topic, func(Change) {
		select {
		case ch <- struct{}{}:
		default:
		}
	})
	return ch, cancel
}
