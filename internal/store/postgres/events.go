package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/ids"
	"github.com/batchd/batchd/internal/store"
)

// The SQL of events, webhook endpoints and deliveries.
const (
	// Event writers take this lock before drawing a seq and hold it to
	// their commit, so events commit in seq order: a reader paging by seq
	// (the stream hub, Last-Event-ID) never passes an event that commits
	// later with a lower seq. Only transitions that announce something
	// (create, cancel, end, test) take it.
	qLockEvents  = `SELECT pg_advisory_xact_lock(hashtext('batchd.events'), hashtext(current_schema()))`
	qEventInsert = `INSERT INTO events (id, workspace, batch_id, type, created_at, data) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (batch_id, type) DO NOTHING RETURNING seq`
	// One delivery per enabled endpoint of the workspace that wants the type.
	qEventDeliveries = `INSERT INTO deliveries (event_seq, endpoint_id, next_at)
		SELECT $1, id, $2 FROM webhook_endpoints WHERE workspace = $3 AND enabled
		AND (event_types = '' OR position(',' || $4::text || ',' in ',' || event_types || ',') > 0)`
	eventCols      = `seq, id, workspace, batch_id, type, created_at, data`
	qEventsLast    = `SELECT coalesce(max(seq), 0) FROM events WHERE workspace = $1`
	qEventsLastAll = `SELECT coalesce(max(seq), 0) FROM events`

	qEndpointExists = `SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = $1 AND workspace = $2)`
	qTestEvent      = `INSERT INTO events (id, workspace, batch_id, type, created_at, data) VALUES ($1, $2, $1, $3, $4, 'null') RETURNING seq`
	qTestDelivery   = `INSERT INTO deliveries (event_seq, endpoint_id, next_at) VALUES ($1, $2, $3) RETURNING id`

	qEndpointCreate = `INSERT INTO webhook_endpoints (id, workspace, url, description, event_types, secret, enabled, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, true, $7, $7)`
	qEndpointGet    = `SELECT ` + endpointCols + ` FROM webhook_endpoints w WHERE w.id = $1 AND w.workspace = $2`
	qEndpointList   = `SELECT ` + endpointCols + ` FROM webhook_endpoints w WHERE w.workspace = $1 ORDER BY w.created_at, w.id`
	qEndpointUpdate = `UPDATE webhook_endpoints SET url = $1, description = $2, event_types = $3, secret = $4,
		previous_secret = nullif($5, ''), previous_expires_at = $6, enabled = $7, disabled_reason = $8, failing_since = $9, updated_at = $10
		WHERE id = $11`
	qEndpointDelete   = `DELETE FROM webhook_endpoints WHERE id = $1 AND workspace = $2`
	qEndpointDropLive = `DELETE FROM deliveries WHERE endpoint_id = $1 AND state IN (0, 1)`

	qDeliveriesPending = `SELECT count(*) FROM deliveries WHERE endpoint_id = $1 AND state IN (0, 1)`
	// qDeliveriesClaimEndpoints locks the enabled endpoints that have
	// deliveries to claim, passing over those another claim (or a change
	// of the endpoint) holds: the endpoints a claim serves are its alone
	// until it commits, so that the next claim, in the fresh snapshot of
	// its own statement, counts this one's leases against the cap.
	// NO KEY UPDATE conflicts with itself but not with writers of
	// deliveries.
	qDeliveriesClaimEndpoints = `SELECT w.id FROM webhook_endpoints w
		WHERE w.enabled AND EXISTS (SELECT 1 FROM deliveries d
			WHERE d.endpoint_id = w.id AND ((d.state = 0 AND d.next_at <= $1) OR (d.state = 1 AND d.lease_expires < $1)))
		ORDER BY w.id FOR NO KEY UPDATE OF w SKIP LOCKED`
	// qDeliveriesClaim leases, for the endpoints $6 locked by
	// qDeliveriesClaimEndpoints, due deliveries and those whose lease
	// lapsed, in one statement run after the lock, so its snapshot holds
	// every earlier claim of these endpoints: each endpoint offers at most
	// $3 minus its live leases (its cap, for the whole cluster), skipping
	// rows being written; the earliest $4 of all are leased.
	qDeliveriesClaim = `WITH offered AS (
			SELECT d.id, d.next_at FROM webhook_endpoints w
			CROSS JOIN LATERAL (SELECT count(*) AS n FROM deliveries x
				WHERE x.endpoint_id = w.id AND x.state = 1 AND x.lease_expires >= $2) busy
			CROSS JOIN LATERAL (
				SELECT d.id, d.next_at FROM deliveries d
				WHERE d.endpoint_id = w.id AND ((d.state = 0 AND d.next_at <= $2) OR (d.state = 1 AND d.lease_expires < $2))
				ORDER BY d.next_at, d.id LIMIT greatest($3 - busy.n, 0) FOR UPDATE OF d SKIP LOCKED) d
			WHERE w.id = ANY($6) AND w.enabled),
		picked AS (SELECT id FROM offered ORDER BY next_at, id LIMIT $4),
		claimed AS (
			UPDATE deliveries d SET state = 1, lease_owner = $1, lease_expires = $5
			FROM picked p WHERE d.id = p.id
			RETURNING d.id, d.attempts, d.next_at, d.event_seq, d.endpoint_id)
		SELECT c.id, c.attempts, e.seq, e.id, e.workspace, e.batch_id, e.type, e.created_at, e.data, ` + endpointCols + `
		FROM claimed c JOIN events e ON e.seq = c.event_seq JOIN webhook_endpoints w ON w.id = c.endpoint_id
		ORDER BY c.next_at, c.id`
	qDeliveriesHeartbeat = `UPDATE deliveries SET lease_expires = $1 WHERE state = 1 AND lease_owner = $2`
	// qDeliveryRecord: only the lease holder's current attempt is recorded.
	qDeliveryRecord = `UPDATE deliveries SET state = $1, attempts = $2, next_at = $3, lease_owner = NULL, lease_expires = NULL
		WHERE id = $4 AND state = 1 AND lease_owner = $5 AND attempts = $6 RETURNING endpoint_id`
	// qDeliveryFreed wakes the deliverers of every process when a record
	// frees a slot of an endpoint that has more deliveries due: one held
	// back by the endpoint's cap would otherwise wait for its next poll.
	qDeliveryFreed = `SELECT pg_notify(` + qChannel + `, '` + string(store.NotifyDelivery) + `')
		WHERE EXISTS (SELECT 1 FROM deliveries WHERE endpoint_id = $1 AND state = 0 AND next_at <= $2)`
	qAttemptInsert = `INSERT INTO delivery_attempts (delivery_id, endpoint_id, attempt, at, status, error_class, duration_us, response, error, truncated)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`
	// The endpoint's row is written only when its health changes: a row
	// written by every attempt would be locked by every record, and a
	// claim passes over an endpoint whose row is locked.
	qEndpointHealthy = `UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL`
	qEndpointFailing = `UPDATE webhook_endpoints SET failing_since = $1 WHERE id = $2 AND failing_since IS NULL`
	qEndpointDisable = `UPDATE webhook_endpoints SET enabled = false, disabled_reason = $1, updated_at = $2 WHERE id = $3`
	// qDeliveryNextDue: a disabled endpoint's pending deliveries wait, so
	// they are never due; the earliest of the others, along deliveries_due.
	qDeliveryNextDue = `SELECT min(next_at) FROM (SELECT d.next_at FROM deliveries d WHERE d.state = 0
		AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.id = d.endpoint_id AND w.enabled) ORDER BY d.next_at LIMIT 1) due`
	qDeliveryAttempts = `SELECT a.id, a.delivery_id, e.id, a.attempt, a.at, a.status, a.error_class, a.duration_us, a.response, a.error, a.truncated
		FROM delivery_attempts a JOIN webhook_endpoints w ON w.id = a.endpoint_id AND w.workspace = $1
		JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.seq = d.event_seq
		WHERE a.endpoint_id = $2 ORDER BY a.id DESC LIMIT $3`
	qDeliveryResend = `UPDATE deliveries SET state = 0, next_at = $1, lease_owner = NULL, lease_expires = NULL
		WHERE id = $2 AND state != 1 AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE workspace = $3)`
	qEndpointLock          = `SELECT id FROM webhook_endpoints WHERE id = $1 AND workspace = $2 FOR UPDATE`
	qDeliveriesRetryFailed = `UPDATE deliveries SET state = 0, next_at = $1 WHERE endpoint_id = $2 AND state = 3
		AND event_seq IN (SELECT seq FROM events WHERE created_at >= $3)`
	// Replay what an endpoint missed: every event since then (and since it
	// exists) of a type it subscribes to that has no delivery for it;
	// webhook.test events belong to the endpoint they were sent to.
	qDeliveriesReplay = `INSERT INTO deliveries (event_seq, endpoint_id, next_at)
		SELECT e.seq, ep.id, $1 FROM webhook_endpoints ep JOIN events e ON e.workspace = ep.workspace
		WHERE ep.id = $2 AND e.created_at >= greatest($3, ep.created_at) AND e.type != $4
		AND (ep.event_types = '' OR position(',' || e.type || ',' in ',' || ep.event_types || ',') > 0)
		AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.endpoint_id = ep.id)
		ORDER BY e.seq`
)

const endpointCols = `w.id, w.workspace, w.url, w.description, w.event_types, w.secret, coalesce(w.previous_secret, ''), w.previous_expires_at,
	w.enabled, w.disabled_reason, w.failing_since, w.created_at, w.updated_at`

// recordEvent writes the event of a batch change to the outbox, with one
// delivery per enabled endpoint that wants its type, in the transaction of
// the change itself. The (batch, type) key makes a replayed transition
// write nothing.
func recordEvent(ctx context.Context, tx pgx.Tx, b *store.Batch, typ string, now time.Time) error {
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, qLockEvents); err != nil {
		return err
	}
	var seq int64
	err = tx.QueryRow(ctx, qEventInsert, ids.New("evt_"), b.Workspace, b.ID, typ, micros(now), data).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // written already
	}
	if err != nil {
		return err
	}
	if _, err = tx.Exec(ctx, qEventDeliveries, seq, micros(now), b.Workspace, typ); err != nil {
		return err
	}
	// Every process hears of the transition (and of the event and its
	// deliveries) once this commits, and never if it rolls back.
	return notifyEvent(ctx, tx, typ, b.Seq)
}

func scanEvent(row scanner, e *store.Event) error {
	var created int64
	var data []byte
	if err := row.Scan(&e.Seq, &e.ID, &e.Workspace, &e.BatchID, &e.Type, &created, &data); err != nil {
		return err
	}
	e.CreatedAt = fromMicros(created)
	if err := json.Unmarshal(data, &e.Batch); err != nil {
		return fmt.Errorf("event %s: %w", e.ID, err)
	}
	return nil
}

// EventsList implements store.Store.
func (s *Store) EventsList(ctx context.Context, p store.EventsListParams) ([]*store.Event, error) {
	q := `SELECT ` + eventCols + ` FROM events WHERE seq > $1`
	args := []any{p.AfterSeq}
	if !p.AllWorkspaces {
		args = append(args, p.Workspace)
		q += fmt.Sprintf(` AND workspace = $%d`, len(args))
	}
	if p.BatchID != "" {
		args = append(args, p.BatchID)
		q += fmt.Sprintf(` AND batch_id = $%d`, len(args))
	}
	if !p.Since.IsZero() {
		args = append(args, micros(p.Since))
		q += fmt.Sprintf(` AND created_at >= $%d`, len(args))
	}
	args = append(args, p.Limit)
	q += fmt.Sprintf(` ORDER BY seq LIMIT $%d`, len(args))
	var out []*store.Event
	err := s.read(ctx, "list events", func(qr querier) error {
		rows, err := qr.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*store.Event, error) {
			var e store.Event
			return &e, scanEvent(r, &e)
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// EventsLast implements store.Store.
func (s *Store) EventsLast(ctx context.Context, workspace string) (int64, error) {
	var v int64
	err := s.read(ctx, "last event", func(q querier) error {
		if workspace == "" {
			return q.QueryRow(ctx, qEventsLastAll).Scan(&v)
		}
		return q.QueryRow(ctx, qEventsLast, workspace).Scan(&v)
	})
	return v, err
}

// EventTestInsert implements store.Store.
func (s *Store) EventTestInsert(ctx context.Context, workspace, endpointID string, now time.Time) (string, int64, error) {
	evID := ids.New("evt_")
	var deliveryID int64
	err := s.tx(ctx, "insert test event", func(tx pgx.Tx) error {
		var ok bool
		if err := tx.QueryRow(ctx, qEndpointExists, endpointID, workspace).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return store.ErrNotFound
		}
		if _, err := tx.Exec(ctx, qLockEvents); err != nil {
			return err
		}
		// A test event belongs to no batch; its batch_id is its own id,
		// which keeps the (batch, type) key unique.
		var seq int64
		if err := tx.QueryRow(ctx, qTestEvent, evID, workspace, store.EventTest, micros(now)).Scan(&seq); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, qTestDelivery, seq, endpointID, micros(now)).Scan(&deliveryID); err != nil {
			return err
		}
		return notify(ctx, tx, store.NotifyEvent, 0)
	})
	if err != nil {
		return "", 0, err
	}
	return evID, deliveryID, nil
}

func scanEndpoint(row scanner) (*store.WebhookEndpoint, error) {
	var (
		e                store.WebhookEndpoint
		types            string
		prevExp, failing *int64
		created, updated int64
	)
	err := row.Scan(&e.ID, &e.Workspace, &e.URL, &e.Description, &types, &e.Secret, &e.PreviousSecret, &prevExp,
		&e.Enabled, &e.DisabledReason, &failing, &created, &updated)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	e.EventTypes = splitList(types)
	e.PreviousExpiresAt, e.FailingSince = fromNullMicros(prevExp), fromNullMicros(failing)
	e.CreatedAt, e.UpdatedAt = fromMicros(created), fromMicros(updated)
	return &e, nil
}

// WebhookEndpointCreate implements store.Store.
func (s *Store) WebhookEndpointCreate(ctx context.Context, e *store.WebhookEndpoint) error {
	_, err := s.execAffected(ctx, "create webhook endpoint", qEndpointCreate, e.ID, e.Workspace, e.URL, e.Description,
		strings.Join(e.EventTypes, ","), e.Secret, micros(e.CreatedAt))
	if err != nil {
		return err
	}
	e.Enabled, e.UpdatedAt = true, e.CreatedAt
	return nil
}

// WebhookEndpointGet implements store.Store.
func (s *Store) WebhookEndpointGet(ctx context.Context, workspace, id string) (*store.WebhookEndpoint, error) {
	var e *store.WebhookEndpoint
	err := s.read(ctx, "get webhook endpoint", func(q querier) error {
		var err error
		e, err = scanEndpoint(q.QueryRow(ctx, qEndpointGet, id, workspace))
		return err
	})
	return e, err
}

// WebhookEndpointList implements store.Store.
func (s *Store) WebhookEndpointList(ctx context.Context, workspace string) ([]*store.WebhookEndpoint, error) {
	var out []*store.WebhookEndpoint
	err := s.read(ctx, "list webhook endpoints", func(q querier) error {
		rows, err := q.Query(ctx, qEndpointList, workspace)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*store.WebhookEndpoint, error) { return scanEndpoint(r) })
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// WebhookEndpointUpdate implements store.Store.
func (s *Store) WebhookEndpointUpdate(ctx context.Context, p store.WebhookEndpointUpdateParams) (*store.WebhookEndpoint, error) {
	var e *store.WebhookEndpoint
	err := s.tx(ctx, "update webhook endpoint", func(tx pgx.Tx) error {
		var err error
		if e, err = scanEndpoint(tx.QueryRow(ctx, qEndpointGet+` FOR UPDATE`, p.ID, p.Workspace)); err != nil {
			return err
		}
		p.Apply(e)
		_, err = tx.Exec(ctx, qEndpointUpdate, e.URL, e.Description, strings.Join(e.EventTypes, ","), e.Secret, e.PreviousSecret,
			nullMicros(e.PreviousExpiresAt), e.Enabled, e.DisabledReason, nullMicros(e.FailingSince), micros(p.Now), e.ID)
		return err
	})
	if err != nil {
		return nil, err
	}
	return e, nil
}

// WebhookEndpointDelete implements store.Store. Its deliveries not yet
// settled go with it.
func (s *Store) WebhookEndpointDelete(ctx context.Context, workspace, id string) error {
	return s.tx(ctx, "delete webhook endpoint", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, qEndpointDelete, id, workspace)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return store.ErrNotFound
		}
		_, err = tx.Exec(ctx, qEndpointDropLive, id)
		return err
	})
}

// DeliveriesPending implements store.Store.
func (s *Store) DeliveriesPending(ctx context.Context, endpointID string) (int, error) {
	var n int
	err := s.read(ctx, "count deliveries", func(q querier) error { return q.QueryRow(ctx, qDeliveriesPending, endpointID).Scan(&n) })
	return n, err
}

var deliveryStates = []string{store.DeliveryPending, store.DeliveryInFlight, store.DeliverySucceeded, store.DeliveryFailed}

func deliveryState(name string) int {
	for i, s := range deliveryStates {
		if s == name {
			return i
		}
	}
	return -1
}

// DeliveriesClaim implements store.Store.
func (s *Store) DeliveriesClaim(ctx context.Context, p store.DeliveriesClaimParams) ([]*store.Delivery, error) {
	per := p.PerEndpoint
	if per <= 0 {
		per = p.Limit
	}
	var out []*store.Delivery
	err := s.tx(ctx, "claim deliveries", func(tx pgx.Tx) error {
		out = nil // a retry starts over
		rows, err := tx.Query(ctx, qDeliveriesClaimEndpoints, micros(p.Now))
		if err != nil {
			return err
		}
		endpoints, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil || len(endpoints) == 0 {
			return err
		}
		rows, err = tx.Query(ctx, qDeliveriesClaim, p.Owner, micros(p.Now), per, p.Limit, micros(p.LeaseUntil), endpoints)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*store.Delivery, error) {
			d := &store.Delivery{State: store.DeliveryInFlight, Event: &store.Event{}}
			var created int64
			var data []byte
			var types string
			var prevExp, failing *int64
			var epCreated, epUpdated int64
			ep := &store.WebhookEndpoint{}
			e := d.Event
			if err := r.Scan(&d.ID, &d.Attempt, &e.Seq, &e.ID, &e.Workspace, &e.BatchID, &e.Type, &created, &data,
				&ep.ID, &ep.Workspace, &ep.URL, &ep.Description, &types, &ep.Secret, &ep.PreviousSecret, &prevExp,
				&ep.Enabled, &ep.DisabledReason, &failing, &epCreated, &epUpdated); err != nil {
				return nil, err
			}
			d.Attempt++ // the attempt this claim is for
			e.CreatedAt = fromMicros(created)
			if err := json.Unmarshal(data, &e.Batch); err != nil {
				return nil, fmt.Errorf("event %s: %w", e.ID, err)
			}
			ep.EventTypes = splitList(types)
			ep.PreviousExpiresAt, ep.FailingSince = fromNullMicros(prevExp), fromNullMicros(failing)
			ep.CreatedAt, ep.UpdatedAt = fromMicros(epCreated), fromMicros(epUpdated)
			d.Endpoint = ep
			return d, nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeliveriesHeartbeat implements store.Store.
func (s *Store) DeliveriesHeartbeat(ctx context.Context, p store.DeliveriesHeartbeatParams) error {
	_, err := s.execAffected(ctx, "heartbeat deliveries", qDeliveriesHeartbeat, micros(p.LeaseUntil), p.Owner)
	return err
}

// DeliveryRecord implements store.Store.
func (s *Store) DeliveryRecord(ctx context.Context, p store.DeliveryRecordParams) error {
	state := deliveryState(p.State)
	if state < 0 || state == 1 {
		return fmt.Errorf("record delivery: bad delivery state %q", p.State)
	}
	return s.tx(ctx, "record delivery", func(tx pgx.Tx) error {
		var endpoint string
		err := tx.QueryRow(ctx, qDeliveryRecord, state, p.Attempt, micros(p.RetryAt), p.ID, p.Owner, p.Attempt-1).Scan(&endpoint)
		if errors.Is(err, pgx.ErrNoRows) {
			return store.ErrConflict // no longer ours: the lease lapsed and another took it
		}
		if err != nil {
			return err
		}
		r := p.Record
		if _, err := tx.Exec(ctx, qAttemptInsert, p.ID, endpoint, p.Attempt, micros(p.Now), r.Status, r.ErrorClass,
			r.Duration.Microseconds(), r.Response, r.Error, r.Truncated); err != nil {
			return err
		}
		// The endpoint's health: failing since the first failure after a
		// success, disabled when asked.
		if p.State == store.DeliverySucceeded {
			_, err = tx.Exec(ctx, qEndpointHealthy, endpoint)
		} else {
			_, err = tx.Exec(ctx, qEndpointFailing, micros(p.Now), endpoint)
		}
		if err != nil {
			return err
		}
		if p.Disable != "" {
			_, err = tx.Exec(ctx, qEndpointDisable, p.Disable, micros(p.Now), endpoint)
			return err
		}
		_, err = tx.Exec(ctx, qDeliveryFreed, endpoint, micros(p.Now))
		return err
	})
}

// DeliveryNextDue implements store.Store.
func (s *Store) DeliveryNextDue(ctx context.Context) (time.Time, error) {
	return s.minTime(ctx, "next delivery", qDeliveryNextDue)
}

// DeliveryAttempts implements store.Store.
func (s *Store) DeliveryAttempts(ctx context.Context, workspace, endpointID string, limit int) ([]*store.Attempt, error) {
	var out []*store.Attempt
	err := s.read(ctx, "list attempts", func(q querier) error {
		rows, err := q.Query(ctx, qDeliveryAttempts, workspace, endpointID, limit)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*store.Attempt, error) {
			var a store.Attempt
			var at, dur int64
			err := r.Scan(&a.ID, &a.DeliveryID, &a.EventID, &a.Attempt, &at, &a.Status, &a.ErrorClass, &dur, &a.Response, &a.Error, &a.Truncated)
			a.At, a.Duration = fromMicros(at), time.Duration(dur)*time.Microsecond
			return &a, err
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeliveryResend implements store.Store.
func (s *Store) DeliveryResend(ctx context.Context, workspace string, deliveryID int64, now time.Time) error {
	n, err := s.execAffected(ctx, "resend delivery", qDeliveryResend, micros(now), deliveryID, workspace)
	if err == nil && n == 0 {
		err = fmt.Errorf("resend delivery: %w", store.ErrNotFound)
	}
	return err
}

// DeliveriesRecover implements store.Store.
func (s *Store) DeliveriesRecover(ctx context.Context, workspace, endpointID string, since, now time.Time) (int, error) {
	n := 0
	err := s.tx(ctx, "recover deliveries", func(tx pgx.Tx) error {
		// The endpoint row is locked so that two recovers of it never both
		// replay one event (the unique key would fail one of them).
		var id string
		if err := tx.QueryRow(ctx, qEndpointLock, endpointID, workspace).Scan(&id); err != nil {
			return err // no row: classify makes it store.ErrNotFound
		}
		tag, err := tx.Exec(ctx, qDeliveriesRetryFailed, micros(now), endpointID, micros(since))
		if err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		tag, err = tx.Exec(ctx, qDeliveriesReplay, micros(now), endpointID, micros(since), store.EventTest)
		if err != nil {
			return err
		}
		n += int(tag.RowsAffected())
		if n == 0 {
			return nil
		}
		return notify(ctx, tx, store.NotifyEvent, 0) // deliveries are due
	})
	return n, err
}
