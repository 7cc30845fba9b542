package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trustgate/trustgate/store"
)

// channel is the LISTEN/NOTIFY channel of the schema the connections use,
// so that stores in different schemas of one database do not hear each
// other; migration 0003's triggers notify on it too.
const channelSQL = `SELECT 'trustgate.' || current_schema()`

// notifier listens on the schema's channel on a connection of its own and
// dispatches notifications to the subscribers of this DB. When the
// connection drops it delivers a Reset to every subscriber, reconnects by
// itself and delivers another Reset once listening again.
type notifier struct {
	db        *DB
	channel   string
	hub       store.Hub
	listening atomic.Bool
	cancel    context.CancelFunc
	done      chan struct{}
	log       *slog.Logger
}

// payload separates a topic from its payload on the wire.
const payloadSep = "\x1f"

// Notify implements store.Changes with pg_notify: delivered to every
// listening replica when the statement commits.
func (n *notifier) Notify(ctx context.Context, topic, payload string) error {
	if strings.Contains(topic, payloadSep) {
		return fmt.Errorf("postgres: notify: topic %q contains a unit separator", topic)
	}
	msg := topic
	if payload != "" {
		msg += payloadSep + payload
	}
	if _, err := n.db.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, n.channel, msg); err != nil {
		return fmt.Errorf("postgres: notify %s: %w", topic, err)
	}
	return nil
}

// Subscribe implements store.Changes.
func (n *notifier) Subscribe(topic string, fn func(store.Change)) func() {
	return n.hub.Subscribe(topic, fn)
}

func (n *notifier) start() {
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan struct{})
	go func() {
		defer close(n.done)
		backoff := 50 * time.Millisecond
		for ctx.Err() == nil {
			err := n.listen(ctx)
			if ctx.Err() != nil {
				return
			}
			n.log.Warn("postgres: change notifications interrupted; reconnecting", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
		}
	}()
}

func (n *notifier) stop() {
	n.cancel()
	<-n.done
}

// listen holds one listening connection until it fails.
func (n *notifier) listen(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, err := pgx.ConnectConfig(cctx, n.db.pool.Config().ConnConfig.Copy())
	cancel()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = conn.Exec(lctx, `LISTEN `+pgx.Identifier{n.channel}.Sanitize())
	cancel()
	if err != nil {
		return err
	}
	n.listening.Store(true)
	defer func() {
		n.listening.Store(false)
		n.hub.ResetAll()
	}()
	// Anything written while nobody listened is announced by a Reset.
	n.hub.ResetAll()
	for {
		// Wake up now and then to notice a dead connection that delivers
		// nothing (a server that vanished without closing it).
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		msg, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			topic, payload, _ := strings.Cut(msg.Payload, payloadSep)
			n.hub.Publish(store.Change{Topic: topic, Payload: payload})
		case ctx.Err() != nil:
			return ctx.Err()
		case wctx.Err() != nil && !conn.IsClosed():
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
		default:
			return err
		}
	}
}
