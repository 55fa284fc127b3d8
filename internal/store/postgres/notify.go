package postgres

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/store"
)

// The SQL of notifications. The channel is the schema's own, so that
// clusters (or tests) in different schemas of one database never wake each
// other: "batchd_" and the schema's name, or its md5 where that would pass
// the 63 bytes PostgreSQL allows a channel (pg_notify refuses longer ones).
const (
	qChannel = `CASE WHEN octet_length('batchd_' || current_schema()) <= 63 THEN 'batchd_' || current_schema()
		ELSE 'batchd_' || md5(current_schema()) END`
	qNotify        = `SELECT pg_notify(` + qChannel + `, $1)`
	qChannelSelect = `SELECT ` + qChannel
)

// Reconnection backoff of the listener: doubled from listenBackoffMin up
// to listenBackoffMax, with jitter, reset once it listens again.
const (
	listenBackoffMin = 50 * time.Millisecond
	listenBackoffMax = 5 * time.Second
)

// listenBuffer is how many notifications wait for a slow reader before
// the listener stops reading its connection (PostgreSQL queues the rest).
const listenBuffer = 256

var _ store.Notifier = (*Store)(nil)

// notify sends a notification of kind (about batch seq, 0 for none) when
// tx commits, and never if it rolls back. PostgreSQL folds identical
// notifications of one transaction into one.
func notify(ctx context.Context, tx pgx.Tx, kind store.NotifyKind, seq int64) error {
	payload := string(kind)
	if seq != 0 {
		payload += ":" + strconv.FormatInt(seq, 10)
	}
	_, err := tx.Exec(ctx, qNotify, payload)
	return err
}

// notifyEvent is the notification of an event of type typ about batch
// seq: the batch transition it records.
func notifyEvent(ctx context.Context, tx pgx.Tx, typ string, seq int64) error {
	switch typ {
	case store.EventBatchCreated:
		return notify(ctx, tx, store.NotifyCreated, seq)
	case store.EventBatchCanceling:
		return notify(ctx, tx, store.NotifyCanceled, seq)
	case store.EventBatchEnded:
		return notify(ctx, tx, store.NotifyEnded, seq)
	default:
		return notify(ctx, tx, store.NotifyEvent, 0)
	}
}

// parseNotification reads a payload written by notify.
func parseNotification(payload string) (store.Notification, bool) {
	kind, seq, _ := strings.Cut(payload, ":")
	n := store.Notification{Kind: store.NotifyKind(kind)}
	switch n.Kind {
	case store.NotifyCreated, store.NotifyCanceled, store.NotifyEnded:
		v, err := strconv.ParseInt(seq, 10, 64)
		if err != nil {
			return n, false
		}
		n.BatchSeq = v
	case store.NotifyEvent, store.NotifyDelivery:
	default:
		return n, false
	}
	return n, true
}

// Listen implements store.Notifier on a connection of its own, outside the
// pool, that LISTENs on the schema's channel; when the connection is lost
// it connects again with backoff and sends store.NotifyResync.
func (s *Store) Listen(ctx context.Context) (<-chan store.Notification, error) {
	var channel string
	if err := s.read(ctx, "listen", func(q querier) error { return q.QueryRow(ctx, qChannelSelect).Scan(&channel) }); err != nil {
		return nil, err
	}
	out := make(chan store.Notification, listenBuffer)
	go s.listen(ctx, channel, out)
	return out, nil
}

func (s *Store) listen(ctx context.Context, channel string, out chan<- store.Notification) {
	defer close(out)
	send := func(n store.Notification) bool {
		select {
		case out <- n:
			return true
		case <-ctx.Done():
			return false
		}
	}
	backoff := time.Duration(0)
	var lost error // why the last connection ended
	for ctx.Err() == nil {
		conn, err := s.listenConn(ctx, channel)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			lost = err
			backoff = min(max(2*backoff, listenBackoffMin), listenBackoffMax)
			t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		backoff = 0
		if !send(store.Notification{Kind: store.NotifyResync, Err: lost}) {
			conn.Close(context.Background())
			return
		}
		for {
			pn, err := conn.WaitForNotification(ctx)
			if err != nil {
				lost = fmt.Errorf("listen: %w", err)
				break
			}
			if n, ok := parseNotification(pn.Payload); ok && !send(n) {
				break
			}
		}
		conn.Close(context.Background())
	}
}

// listenConn connects as the pool does and LISTENs on channel.
func (s *Store) listenConn(ctx context.Context, channel string) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.connConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("listen: connect: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("listen: %w", err)
	}
	return conn, nil
}
