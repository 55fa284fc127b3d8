package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/batchd/batchd/internal/ids"
	"github.com/batchd/batchd/internal/store"
)

// recordEvent writes the event of a batch change to the outbox, with one
// delivery per enabled endpoint of the workspace that wants its type, in
// the transaction of the change itself: the change and its notification
// commit together or not at all. The (batch, type) key makes a replayed
// transition write nothing.
func recordEvent(ctx context.Context, tx *sql.Tx, b *store.Batch, typ string, now time.Time) error {
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO events (id, workspace, batch_id, type, created_at, data) VALUES (?, ?, ?, ?, ?, ?)`,
		ids.New("evt_"), b.Workspace, b.ID, typ, micros(now), data)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO deliveries (event_seq, endpoint_id, next_at)
		SELECT ?, id, ? FROM webhook_endpoints WHERE workspace = ? AND enabled = 1
		AND (event_types = '' OR instr(',' || event_types || ',', ',' || ? || ',') > 0)`, seq, micros(now), b.Workspace, typ)
	return err
}

// EventsList implements store.Store.
func (s *Store) EventsList(ctx context.Context, p store.EventsListParams) ([]*store.Event, error) {
	q := `SELECT seq, id, workspace, batch_id, type, created_at, data FROM events WHERE seq > ?`
	args := []any{p.AfterSeq}
	if !p.AllWorkspaces {
		q += ` AND workspace = ?`
		args = append(args, p.Workspace)
	}
	if p.BatchID != "" {
		q += ` AND batch_id = ?`
		args = append(args, p.BatchID)
	}
	if !p.Since.IsZero() {
		q += ` AND created_at >= ?`
		args = append(args, micros(p.Since))
	}
	rows, err := s.r.QueryContext(ctx, q+` ORDER BY seq LIMIT ?`, append(args, p.Limit)...)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	defer rows.Close()
	var out []*store.Event
	for rows.Next() {
		var e store.Event
		var created int64
		var data []byte
		if err := rows.Scan(&e.Seq, &e.ID, &e.Workspace, &e.BatchID, &e.Type, &created, &data); err != nil {
			return nil, fmt.Errorf("list events: %w", err)
		}
		e.CreatedAt = fromMicros(created)
		if err := json.Unmarshal(data, &e.Batch); err != nil {
			return nil, fmt.Errorf("list events: %s: %w", e.ID, err)
		}
		out = append(out, &e)
	}
	return out, rows.Err()
}

// EventsLast implements store.Store.
func (s *Store) EventsLast(ctx context.Context, workspace string) (int64, error) {
	var v sql.NullInt64
	q, args := `SELECT max(seq) FROM events WHERE workspace = ?`, []any{workspace}
	if workspace == "" {
		q, args = `SELECT max(seq) FROM events`, nil
	}
	if err := s.r.QueryRowContext(ctx, q, args...).Scan(&v); err != nil {
		return 0, fmt.Errorf("last event: %w", err)
	}
	return v.Int64, nil
}

// EventTestInsert implements store.Store.
func (s *Store) EventTestInsert(ctx context.Context, workspace, endpointID string, now time.Time) (string, int64, error) {
	evID := ids.New("evt_")
	var deliveryID int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM webhook_endpoints WHERE id = ? AND workspace = ?`, endpointID, workspace).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return store.ErrNotFound
		}
		// A test event belongs to no batch; its batch_id is its own id,
		// which keeps the (batch, type) key unique.
		res, err := tx.ExecContext(ctx, `INSERT INTO events (id, workspace, batch_id, type, created_at, data) VALUES (?, ?, ?, ?, ?, 'null')`,
			evID, workspace, evID, store.EventTest, micros(now))
		if err != nil {
			return err
		}
		seq, err := res.LastInsertId()
		if err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `INSERT INTO deliveries (event_seq, endpoint_id, next_at) VALUES (?, ?, ?) RETURNING id`,
			seq, endpointID, micros(now)).Scan(&deliveryID)
	})
	if err != nil {
		return "", 0, fmt.Errorf("insert test event: %w", err)
	}
	return evID, deliveryID, nil
}

const endpointCols = `id, workspace, url, description, event_types, secret, coalesce(previous_secret, ''), previous_expires_at,
	enabled, disabled_reason, failing_since, created_at, updated_at`

func scanEndpoint(row scanner) (*store.WebhookEndpoint, error) {
	var (
		e                store.WebhookEndpoint
		types            string
		prevExp, failing sql.NullInt64
		created, updated int64
		enabled          int
	)
	err := row.Scan(&e.ID, &e.Workspace, &e.URL, &e.Description, &types, &e.Secret, &e.PreviousSecret, &prevExp,
		&enabled, &e.DisabledReason, &failing, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	e.EventTypes = splitBetas(types)
	e.PreviousExpiresAt, e.FailingSince = fromNullMicros(prevExp), fromNullMicros(failing)
	e.Enabled = enabled == 1
	e.CreatedAt, e.UpdatedAt = fromMicros(created), fromMicros(updated)
	return &e, nil
}

// WebhookEndpointCreate implements store.Store.
func (s *Store) WebhookEndpointCreate(ctx context.Context, e *store.WebhookEndpoint) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO webhook_endpoints (id, workspace, url, description, event_types, secret, enabled, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)`, e.ID, e.Workspace, e.URL, e.Description, strings.Join(e.EventTypes, ","), e.Secret,
			micros(e.CreatedAt), micros(e.CreatedAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("create webhook endpoint: %w", err)
	}
	e.Enabled, e.UpdatedAt = true, e.CreatedAt
	return nil
}

// WebhookEndpointGet implements store.Store.
func (s *Store) WebhookEndpointGet(ctx context.Context, workspace, id string) (*store.WebhookEndpoint, error) {
	e, err := scanEndpoint(s.r.QueryRowContext(ctx, `SELECT `+endpointCols+` FROM webhook_endpoints WHERE id = ? AND workspace = ?`, id, workspace))
	if err != nil {
		return nil, fmt.Errorf("get webhook endpoint: %w", err)
	}
	return e, nil
}

// WebhookEndpointList implements store.Store.
func (s *Store) WebhookEndpointList(ctx context.Context, workspace string) ([]*store.WebhookEndpoint, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+endpointCols+` FROM webhook_endpoints WHERE workspace = ? ORDER BY created_at, id`, workspace)
	if err != nil {
		return nil, fmt.Errorf("list webhook endpoints: %w", err)
	}
	defer rows.Close()
	var out []*store.WebhookEndpoint
	for rows.Next() {
		e, err := scanEndpoint(rows)
		if err != nil {
			return nil, fmt.Errorf("list webhook endpoints: %w", err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// WebhookEndpointUpdate implements store.Store.
func (s *Store) WebhookEndpointUpdate(ctx context.Context, p store.WebhookEndpointUpdateParams) (*store.WebhookEndpoint, error) {
	var e *store.WebhookEndpoint
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if e, err = scanEndpoint(tx.QueryRowContext(ctx, `SELECT `+endpointCols+` FROM webhook_endpoints WHERE id = ? AND workspace = ?`, p.ID, p.Workspace)); err != nil {
			return err
		}
		p.Apply(e)
		var prevExp any
		if e.PreviousExpiresAt != nil {
			prevExp = micros(*e.PreviousExpiresAt)
		}
		var failing any
		if e.FailingSince != nil {
			failing = micros(*e.FailingSince)
		}
		enabled := 0
		if e.Enabled {
			enabled = 1
		}
		_, err = tx.ExecContext(ctx, `UPDATE webhook_endpoints SET url = ?, description = ?, event_types = ?, secret = ?,
			previous_secret = nullif(?, ''), previous_expires_at = ?, enabled = ?, disabled_reason = ?, failing_since = ?, updated_at = ?
			WHERE id = ?`, e.URL, e.Description, strings.Join(e.EventTypes, ","), e.Secret, e.PreviousSecret, prevExp, enabled,
			e.DisabledReason, failing, micros(p.Now), e.ID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("update webhook endpoint: %w", err)
	}
	return e, nil
}

// WebhookEndpointDelete implements store.Store. Its pending deliveries go
// with it.
func (s *Store) WebhookEndpointDelete(ctx context.Context, workspace, id string) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM webhook_endpoints WHERE id = ? AND workspace = ?`, id, workspace)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrNotFound
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM deliveries WHERE endpoint_id = ? AND state IN (0, 1)`, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete webhook endpoint: %w", err)
	}
	return nil
}

// DeliveriesPending implements store.Store.
func (s *Store) DeliveriesPending(ctx context.Context, endpointID string) (int, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM deliveries WHERE endpoint_id = ? AND state IN (0, 1)`, endpointID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count deliveries: %w", err)
	}
	return n, nil
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
	var out []*store.Delivery
	err := s.tx(ctx, func(tx *sql.Tx) error {
		out = nil
		per := p.PerEndpoint
		if per <= 0 {
			per = p.Limit
		}
		rows, err := tx.QueryContext(ctx, `UPDATE deliveries SET state = 1, lease_owner = ?, lease_expires = ?
			WHERE id IN (
				SELECT id FROM (
					SELECT d.id, d.next_at,
						row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_at, d.id) AS rn,
						(SELECT count(*) FROM deliveries x WHERE x.endpoint_id = d.endpoint_id AND x.state = 1 AND x.lease_expires >= ?) AS busy
					FROM deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.enabled = 1
					WHERE (d.state = 0 AND d.next_at <= ?) OR (d.state = 1 AND d.lease_expires < ?))
				WHERE rn + busy <= ? ORDER BY next_at LIMIT ?)
			RETURNING id, attempts, event_seq, endpoint_id`, p.Owner, micros(p.LeaseUntil), micros(p.Now), micros(p.Now), micros(p.Now), per, p.Limit)
		if err != nil {
			return err
		}
		type claimed struct {
			d        *store.Delivery
			eventSeq int64
			endpoint string
		}
		var cs []claimed
		for rows.Next() {
			c := claimed{d: &store.Delivery{State: store.DeliveryInFlight}}
			if err := rows.Scan(&c.d.ID, &c.d.Attempt, &c.eventSeq, &c.endpoint); err != nil {
				rows.Close()
				return err
			}
			c.d.Attempt++
			cs = append(cs, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, c := range cs {
			var e store.Event
			var created int64
			var data []byte
			err := tx.QueryRowContext(ctx, `SELECT seq, id, workspace, batch_id, type, created_at, data FROM events WHERE seq = ?`, c.eventSeq).
				Scan(&e.Seq, &e.ID, &e.Workspace, &e.BatchID, &e.Type, &created, &data)
			if err != nil {
				return err
			}
			e.CreatedAt = fromMicros(created)
			if err := json.Unmarshal(data, &e.Batch); err != nil {
				return err
			}
			ep, err := scanEndpoint(tx.QueryRowContext(ctx, `SELECT `+endpointCols+` FROM webhook_endpoints WHERE id = ?`, c.endpoint))
			if err != nil {
				return err
			}
			c.d.Event, c.d.Endpoint = &e, ep
			out = append(out, c.d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim deliveries: %w", err)
	}
	return out, nil
}

// DeliveriesHeartbeat implements store.Store.
func (s *Store) DeliveriesHeartbeat(ctx context.Context, p store.DeliveriesHeartbeatParams) error {
	_, err := s.execAffected(ctx, "heartbeat deliveries", `UPDATE deliveries SET lease_expires = ? WHERE state = 1 AND lease_owner = ?`,
		micros(p.LeaseUntil), p.Owner)
	return err
}

// DeliveryRecord implements store.Store.
func (s *Store) DeliveryRecord(ctx context.Context, p store.DeliveryRecordParams) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		state := deliveryState(p.State)
		if state < 0 || state == 1 {
			return fmt.Errorf("bad delivery state %q", p.State)
		}
		var endpoint string
		err := tx.QueryRowContext(ctx, `UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, lease_owner = NULL, lease_expires = NULL
			WHERE id = ? AND state = 1 AND lease_owner = ? AND attempts = ? RETURNING endpoint_id`,
			state, p.Attempt, micros(p.RetryAt), p.ID, p.Owner, p.Attempt-1).Scan(&endpoint)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrConflict // no longer ours: the lease lapsed and another took it
		}
		if err != nil {
			return err
		}
		r := p.Record
		if _, err := tx.ExecContext(ctx, `INSERT INTO delivery_attempts (delivery_id, endpoint_id, attempt, at, status, error_class, duration_us, response, error, truncated)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, p.ID, endpoint, p.Attempt, micros(p.Now), r.Status, r.ErrorClass, r.Duration.Microseconds(), r.Response, r.Error, r.Truncated); err != nil {
			return err
		}
		// The endpoint's health: failing since the first failure after a
		// success, disabled when asked.
		if p.State == store.DeliverySucceeded {
			_, err = tx.ExecContext(ctx, `UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ?`, endpoint)
		} else {
			_, err = tx.ExecContext(ctx, `UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, ?) WHERE id = ?`, micros(p.Now), endpoint)
		}
		if err != nil {
			return err
		}
		if p.Disable != "" {
			_, err = tx.ExecContext(ctx, `UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ? WHERE id = ?`, p.Disable, micros(p.Now), endpoint)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("record delivery: %w", err)
	}
	return nil
}

// DeliveryNextDue implements store.Store.
func (s *Store) DeliveryNextDue(ctx context.Context) (time.Time, error) {
	var v sql.NullInt64
	// A disabled endpoint's pending deliveries wait, so they are never due.
	if err := s.r.QueryRowContext(ctx, `SELECT min(next_at) FROM (SELECT d.next_at FROM deliveries d WHERE d.state = 0
		AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.id = d.endpoint_id AND w.enabled = 1) ORDER BY d.next_at LIMIT 1)`).Scan(&v); err != nil {
		return time.Time{}, fmt.Errorf("next delivery: %w", err)
	}
	if !v.Valid {
		return time.Time{}, nil
	}
	return fromMicros(v.Int64), nil
}

// DeliveryAttempts implements store.Store.
func (s *Store) DeliveryAttempts(ctx context.Context, workspace, endpointID string, limit int) ([]*store.Attempt, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT a.id, a.delivery_id, e.id, a.attempt, a.at, a.status, a.error_class, a.duration_us, a.response, a.error, a.truncated
		FROM delivery_attempts a JOIN webhook_endpoints w ON w.id = a.endpoint_id AND w.workspace = ?
		JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.seq = d.event_seq
		WHERE a.endpoint_id = ? ORDER BY a.id DESC LIMIT ?`, workspace, endpointID, limit)
	if err != nil {
		return nil, fmt.Errorf("list attempts: %w", err)
	}
	defer rows.Close()
	var out []*store.Attempt
	for rows.Next() {
		var a store.Attempt
		var at, dur int64
		if err := rows.Scan(&a.ID, &a.DeliveryID, &a.EventID, &a.Attempt, &at, &a.Status, &a.ErrorClass, &dur, &a.Response, &a.Error, &a.Truncated); err != nil {
			return nil, fmt.Errorf("list attempts: %w", err)
		}
		a.At, a.Duration = fromMicros(at), time.Duration(dur)*time.Microsecond
		out = append(out, &a)
	}
	return out, rows.Err()
}

// DeliveryResend implements store.Store.
func (s *Store) DeliveryResend(ctx context.Context, workspace string, deliveryID int64, now time.Time) error {
	n, err := s.execAffected(ctx, "resend delivery", `UPDATE deliveries SET state = 0, next_at = ?, lease_owner = NULL, lease_expires = NULL
		WHERE id = ? AND state != 1 AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE workspace = ?)`, micros(now), deliveryID, workspace)
	if err == nil && n == 0 {
		err = fmt.Errorf("resend delivery: %w", store.ErrNotFound)
	}
	return err
}

// DeliveriesRecover implements store.Store.
func (s *Store) DeliveriesRecover(ctx context.Context, workspace, endpointID string, since, now time.Time) (int, error) {
	n := 0
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var owned int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM webhook_endpoints WHERE id = ? AND workspace = ?`, endpointID, workspace).Scan(&owned); err != nil {
			return err
		}
		if owned == 0 {
			return store.ErrNotFound
		}
		res, err := tx.ExecContext(ctx, `UPDATE deliveries SET state = 0, next_at = ? WHERE endpoint_id = ? AND state = 3
			AND event_seq IN (SELECT seq FROM events WHERE created_at >= ?)`, micros(now), endpointID, micros(since))
		if err != nil {
			return err
		}
		m, _ := res.RowsAffected()
		n = int(m)
		// Replay what it missed: every event since then (and since the
		// endpoint exists) of a type it subscribes to that has no delivery
		// for it, because the endpoint was disabled when it happened. The
		// unique (event_seq, endpoint_id) keeps it to one delivery each;
		// webhook.test events belong to the endpoint they were sent to.
		res, err = tx.ExecContext(ctx, `INSERT INTO deliveries (event_seq, endpoint_id, next_at)
			SELECT e.seq, ep.id, ? FROM webhook_endpoints ep JOIN events e ON e.workspace = ep.workspace
			WHERE ep.id = ? AND e.created_at >= max(?, ep.created_at) AND e.type != ?
			AND (ep.event_types = '' OR instr(',' || ep.event_types || ',', ',' || e.type || ',') > 0)
			AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.endpoint_id = ep.id)
			ORDER BY e.seq`, micros(now), endpointID, micros(since), store.EventTest)
		if err != nil {
			return err
		}
		m, _ = res.RowsAffected()
		n += int(m)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("recover deliveries: %w", err)
	}
	return n, nil
}

// pruneEvents deletes events older than the retention, with their
// deliveries and attempts, a bounded chunk per sweep.
func pruneEvents(ctx context.Context, tx *sql.Tx, before time.Time) error {
	seqs, err := querySeqs(ctx, tx, `SELECT seq FROM events WHERE created_at <= ? ORDER BY created_at LIMIT 1000`, micros(before))
	if err != nil || len(seqs) == 0 {
		return err
	}
	list := make([]byte, 0, 8*len(seqs))
	list = append(list, '[')
	for i, seq := range seqs {
		if i > 0 {
			list = append(list, ',')
		}
		list = strconv.AppendInt(list, seq, 10)
	}
	list = append(list, ']')
	for _, q := range []string{
		`DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_seq IN (SELECT value FROM json_each(?)))`,
		`DELETE FROM deliveries WHERE event_seq IN (SELECT value FROM json_each(?))`,
		`DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))`,
	} {
		if _, err := tx.ExecContext(ctx, q, string(list)); err != nil {
			return err
		}
	}
	return nil
}
