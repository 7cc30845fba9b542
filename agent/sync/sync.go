// Package sync keeps the node agent's cache in step with the broker: the
// authorized entries by long poll (the broker answers as soon as they
// change), with periodic polling and backoff as the fallback while the
// broker fails, and the trust bundle, fetched again at its refresh hint so
// that CA rotation reaches the workloads. While the broker is unreachable
// the cache keeps what it has.
package sync

import (
	"context"
	"log/slog"
	gosync "sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/trustgate/trustgate/agent/brokerclient"
	"github.com/trustgate/trustgate/agent/cache"
)

// Config configures a Syncer.
type Config struct {
	// Broker is the agent API client.
	Broker *brokerclient.Client
	// Cache receives the entries and bundles.
	Cache *cache.Cache
	// Wait is the long poll's wait (0: plain polling every PollInterval).
	Wait time.Duration
	// PollInterval is the delay after a failed sync, doubling up to 8x.
	PollInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Observe, when set, is told how long each successful entries sync
	// took (a long poll's wait included) and whether it brought a change.
	Observe func(d time.Duration, changed bool)
	// OnError, when set, is called with every failed sync.
	OnError func(err error)
	// OnBundle, when set, is given every new bundle before the cache;
	// its error fails that bundle sync, which is retried.
	OnBundle func(b *spiffebundle.Bundle) error
}

// Syncer runs the sync.
type Syncer struct {
	cfg Config
	log *slog.Logger

	mu         gosync.Mutex
	haveBundle bool
	haveEnts   bool
	bundleSeq  uint64
	bundleSet  bool
}

// New returns a Syncer.
func New(cfg Config) *Syncer {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 5 * time.Second
	}
	return &Syncer{cfg: cfg, log: cfg.Logger}
}

// Synced says whether a bundle and the entries were received at least once.
func (s *Syncer) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.haveBundle && s.haveEnts
}

// Run syncs until ctx ends. The bundle is set before the first entries.
func (s *Syncer) Run(ctx context.Context) error {
	var wg gosync.WaitGroup
	wg.Add(1)
	first := make(chan struct{})
	go func() {
		defer wg.Done()
		s.bundles(ctx, first)
	}()
	select {
	case <-first:
	case <-ctx.Done():
	}
	s.entries(ctx)
	wg.Wait()
	return nil
}

func (s *Syncer) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (s *Syncer) failed(what string, err error) {
	if brokerclient.IsDenied(err) {
		s.log.Error(what+": the broker refuses the agent (evicted?)", "err", err)
	} else {
		s.log.Warn(what+" failed; will retry", "err", err)
	}
	if s.cfg.OnError != nil {
		s.cfg.OnError(err)
	}
}

// bundles fetches the bundle, again at its refresh hint (bounded to 1 s..5
// min); first is closed after the first bundle was set.
func (s *Syncer) bundles(ctx context.Context, first chan struct{}) {
	delay := s.cfg.PollInterval
	for ctx.Err() == nil {
		b, hint, err := s.cfg.Broker.Bundle(ctx)
		if err == nil {
			err = s.setBundle(b)
		}
		next := delay
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.failed("bundle sync", err)
			delay = min(2*delay, 8*s.cfg.PollInterval)
		} else {
			delay = s.cfg.PollInterval
			next = min(max(hint, time.Second), 5*time.Minute)
			if first != nil {
				close(first)
				first = nil
			}
		}
		if !s.sleep(ctx, next) {
			return
		}
	}
}

func (s *Syncer) setBundle(b *spiffebundle.Bundle) error {
	seq, _ := b.SequenceNumber()
	s.mu.Lock()
	same := s.bundleSet && seq == s.bundleSeq && seq != 0
	s.mu.Unlock()
	if same {
		return nil
	}
	if s.cfg.OnBundle != nil {
		if err := s.cfg.OnBundle(b); err != nil {
			return err
		}
	}
	if err := s.cfg.Cache.SetBundles([]*spiffebundle.Bundle{b}); err != nil {
		return err
	}
	s.mu.Lock()
	s.bundleSeq, s.bundleSet, s.haveBundle = seq, true, true
	s.mu.Unlock()
	s.log.Debug("bundle set", "sequence", seq, "x509_authorities", len(b.X509Authorities()))
	return nil
}

// entries long-polls the entries; after an error it polls at PollInterval,
// doubling while the errors go on.
func (s *Syncer) entries(ctx context.Context) {
	rev := int64(-1)
	delay := s.cfg.PollInterval
	for ctx.Err() == nil {
		start := time.Now()
		wait := s.cfg.Wait
		if rev < 0 {
			wait = 0
		}
		got, entries, err := s.cfg.Broker.Entries(ctx, rev, wait)
		if err == nil {
			err = s.cfg.Cache.SetEntries(entries)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.failed("entries sync", err)
			rev = -1 // a fresh answer at once when the broker returns
			if !s.sleep(ctx, delay) {
				return
			}
			delay = min(2*delay, 8*s.cfg.PollInterval)
			continue
		}
		delay = s.cfg.PollInterval
		changed := got != rev
		rev = got
		s.mu.Lock()
		s.haveEnts = true
		s.mu.Unlock()
		if s.cfg.Observe != nil {
			s.cfg.Observe(time.Since(start), changed)
		}
		if changed {
			s.log.Debug("entries synced", "revision", rev, "entries", len(entries))
		}
		if s.cfg.Wait == 0 && !s.sleep(ctx, s.cfg.PollInterval) {
			return
		}
	}
}
