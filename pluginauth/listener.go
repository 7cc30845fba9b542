package pluginauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Listener wraps a net.Listener so that Accept returns only connections
// whose plugin passed the handshake, as *Conn values carrying their
// Identity. Each handshake runs in its own goroutine under the server's
// timeouts (a short one for the plugin's first frame), so a stalled or
// hostile peer never holds up another. At most max_pending_handshakes run
// at once, and at most max_pending_handshakes_per_uid for one peer uid
// (read with SO_PEERCRED), so that one user's silent connections cannot
// take every slot. Peers outside allowed_peer_uids/allowed_peer_gids, when
// set, are closed before the handshake.
type Listener struct {
	inner  net.Listener
	s      *Server
	ready  chan *Conn
	ctx    context.Context
	cancel context.CancelFunc
	slots  chan struct{}
	perUID *pendingByUID
	wg     sync.WaitGroup
	once   sync.Once
}

// Listen starts authenticating connections accepted from inner. Closing the
// returned Listener closes inner and cancels handshakes in flight.
func (s *Server) Listen(inner net.Listener) *Listener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		inner:  inner,
		s:      s,
		ready:  make(chan *Conn),
		ctx:    ctx,
		cancel: cancel,
		slots:  make(chan struct{}, s.maxPending),
		perUID: newPendingByUID(s.maxPendingUID),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.ctx.Done():
			return
		}
		c, err := l.inner.Accept()
		if err != nil {
			<-l.slots
			if l.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				l.cancel()
				return
			}
			l.s.log.Warn("pluginauth: accept failed; retrying", slog.String("error", err.Error()), slog.Duration("backoff", backoff))
			select {
			case <-time.After(backoff):
			case <-l.ctx.Done():
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		pc, credErr := l.s.peerCred(c)
		why := l.s.admit(pc, credErr)
		if why == "" && credErr == nil && !l.perUID.acquire(pc.UID) {
			why = fmt.Sprintf("peer uid %d already has %d handshakes pending (max_pending_handshakes_per_uid)", pc.UID, l.s.maxPendingUID)
		}
		if why != "" {
			r := Refusal{Remote: remoteAddr(c), Reason: why}
			if credErr == nil {
				r.Peer = &pc
			}
			l.s.refuse(l.ctx, r, []slog.Attr{slog.String("remote", r.Remote), slog.String("reason", why)})
			c.Close()
			<-l.slots
			continue
		}
		l.wg.Add(1)
		go l.handshake(c, pc, credErr == nil)
	}
}

// handshake authenticates c; uid's per-uid slot is released after it when
// counted is set.
func (l *Listener) handshake(c net.Conn, pc PeerCred, counted bool) {
	defer l.wg.Done()
	id, err := l.s.Handshake(l.ctx, c)
	if counted {
		l.perUID.release(pc.UID)
	}
	<-l.slots
	if err != nil {
		c.Close() // the reason is logged by Handshake
		return
	}
	select {
	case l.ready <- &Conn{Conn: c, id: id}:
	case <-l.ctx.Done():
		c.Close()
	}
}

// Accept waits for the next authenticated connection. After Close it
// returns an error wrapping net.ErrClosed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.ctx.Done():
		return nil, fmt.Errorf("pluginauth: accept: %w", net.ErrClosed)
	}
}

// Close stops accepting, closes the inner listener, cancels handshakes in
// flight and waits for them to end.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		l.cancel()
		err = l.inner.Close()
		l.wg.Wait()
	})
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("pluginauth: close listener: %w", err)
	}
	return nil
}

// Addr returns the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }
