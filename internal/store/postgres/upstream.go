package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/store"
)

// The SQL of upstream batches: requests delegated to an upstream Message
// Batches API, marked before the upstream create call so that no rescue
// resends them.
const (
	qUpstreamInsert = `INSERT INTO upstream_batches (backend, owner, batch_seq, created_at, lease_expires) VALUES ($1, $2, $3, $4, $5) RETURNING id`
	// Only requests still running under the owner's lease, and delegated
	// nowhere yet, are marked; the caller checks that all of them were.
	qUpstreamMark = `UPDATE tasks SET upstream = $1
		WHERE id = ANY($2) AND batch_seq = $3 AND state = 1 AND lease_owner = $4 AND upstream IS NULL`
	qUpstreamStart = `UPDATE upstream_batches SET upstream_id = $1 WHERE id = $2 AND upstream_id IS NULL`
	qUpstreamList  = `SELECT u.id, u.backend, u.owner, u.batch_seq, coalesce(u.upstream_id, ''), u.created_at,
		u.lease_expires, coalesce(b.status, 'ended') FROM upstream_batches u LEFT JOIN batches b ON b.seq = u.batch_seq
		WHERE u.backend = $1 ORDER BY u.id`
	qUpstreamRequests = `SELECT t.id, t.batch_seq, t.attempts, r.custom_id, b.id, b.expires_at
		FROM tasks t JOIN requests r ON r.id = t.id JOIN batches b ON b.seq = t.batch_seq
		WHERE t.upstream = $1 AND t.state = 1 ORDER BY t.id`
	qUpstreamGet = `SELECT upstream_id, batch_seq FROM upstream_batches WHERE id = $1 FOR UPDATE`
	// Abandon: as in rescue, a canceling batch's requests settle canceled,
	// every other one goes back to pending.
	qUpstreamCancel = `WITH lost AS (
			DELETE FROM tasks t USING requests r, batches b
			WHERE r.id = t.id AND b.seq = t.batch_seq AND b.status = 'canceling' AND t.upstream = $1 AND t.state = 1
			RETURNING t.id, t.batch_seq, r.custom_id)
		INSERT INTO results (id, batch_seq, custom_id, result_type, result)
		SELECT id, batch_seq, custom_id, 'canceled', NULL FROM lost`
	qUpstreamRelease = `UPDATE tasks SET state = 0, upstream = NULL, lease_owner = NULL, lease_expires = NULL
		WHERE upstream = $1 AND state = 1`
	qUpstreamDelete = `DELETE FROM upstream_batches WHERE id = $1`

	qUpstreamHeartbeat = `UPDATE upstream_batches SET lease_expires = $1 WHERE owner = $2 AND ($3 = '' OR backend = $3)`
	// Adopt: only a lapsed lease changes hands, with the requests it holds.
	qUpstreamAdopt = `UPDATE upstream_batches SET owner = $1, lease_expires = $2
		WHERE id = $3 AND lease_expires < $4 RETURNING id`
	qUpstreamAdoptTasks = `UPDATE tasks SET lease_owner = $1 WHERE upstream = $2 AND state = 1`
	qUpstreamLeft       = `SELECT count(*) FROM tasks WHERE upstream = $1`
)

// UpstreamBatchInsert implements store.Store.
func (s *Store) UpstreamBatchInsert(ctx context.Context, p store.UpstreamBatchInsertParams) (*store.UpstreamBatch, error) {
	ub := &store.UpstreamBatch{Backend: p.Backend, Owner: p.Owner, BatchSeq: p.BatchSeq, CreatedAt: p.Now.UTC(),
		LeaseExpires: p.LeaseUntil.UTC(), BatchStatus: store.StatusInProgress}
	err := s.tx(ctx, "insert upstream batch", func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, qUpstreamInsert, p.Backend, p.Owner, p.BatchSeq, micros(p.Now), micros(p.LeaseUntil)).Scan(&ub.ID); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, qUpstreamMark, ub.ID, p.RequestIDs, p.BatchSeq, p.Owner)
		if err != nil {
			return err
		}
		if n := tag.RowsAffected(); n != int64(len(p.RequestIDs)) {
			return fmt.Errorf("%d of %d requests are not held by %s: %w", int64(len(p.RequestIDs))-n, len(p.RequestIDs), p.Owner, store.ErrConflict)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ub, nil
}

// UpstreamBatchStart implements store.Store.
func (s *Store) UpstreamBatchStart(ctx context.Context, p store.UpstreamBatchStartParams) error {
	n, err := s.execAffected(ctx, "start upstream batch", qUpstreamStart, p.UpstreamID, p.ID)
	if err == nil && n == 0 {
		err = fmt.Errorf("start upstream batch: %w", store.ErrConflict)
	}
	return err
}

// UpstreamBatchesHeartbeat implements store.Store.
func (s *Store) UpstreamBatchesHeartbeat(ctx context.Context, p store.UpstreamBatchesHeartbeatParams) error {
	_, err := s.execAffected(ctx, "heartbeat upstream batches", qUpstreamHeartbeat, micros(p.LeaseUntil), p.Owner, p.Backend)
	return err
}

// UpstreamBatchAdopt implements store.Store.
func (s *Store) UpstreamBatchAdopt(ctx context.Context, p store.UpstreamBatchAdoptParams) error {
	return s.tx(ctx, "adopt upstream batch", func(tx pgx.Tx) error {
		if err := checkLead(ctx, tx, p.Lead, micros(p.Now)); err != nil {
			return err
		}
		var id int64
		err := tx.QueryRow(ctx, qUpstreamAdopt, p.Owner, micros(p.LeaseUntil), p.ID, micros(p.Now)).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return store.ErrConflict // gone, or its lease is live
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, qUpstreamAdoptTasks, p.Owner, p.ID)
		return err
	})
}

// UpstreamBatchesList implements store.Store.
func (s *Store) UpstreamBatchesList(ctx context.Context, backend string) ([]*store.UpstreamBatch, error) {
	var out []*store.UpstreamBatch
	err := s.read(ctx, "list upstream batches", func(q querier) error {
		rows, err := q.Query(ctx, qUpstreamList, backend)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*store.UpstreamBatch, error) {
			var ub store.UpstreamBatch
			var created, lease int64
			err := r.Scan(&ub.ID, &ub.Backend, &ub.Owner, &ub.BatchSeq, &ub.UpstreamID, &created, &lease, &ub.BatchStatus)
			ub.CreatedAt, ub.LeaseExpires = fromMicros(created), fromMicros(lease)
			return &ub, err
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UpstreamBatchRequests implements store.Store.
func (s *Store) UpstreamBatchRequests(ctx context.Context, id int64) ([]store.ClaimedRequest, error) {
	var out []store.ClaimedRequest
	err := s.read(ctx, "list upstream batch requests", func(q querier) error {
		rows, err := q.Query(ctx, qUpstreamRequests, id)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.ClaimedRequest, error) {
			var c store.ClaimedRequest
			var expires int64
			err := r.Scan(&c.ID, &c.BatchSeq, &c.Attempt, &c.CustomID, &c.BatchID, &expires)
			c.ExpiresAt = fromMicros(expires)
			return c, err
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UpstreamBatchAbandon implements store.Store.
func (s *Store) UpstreamBatchAbandon(ctx context.Context, p store.UpstreamBatchAbandonParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	err := s.tx(ctx, "abandon upstream batch", func(tx pgx.Tx) error {
		out = nil
		var upstreamID *string
		var seq int64
		if err := tx.QueryRow(ctx, qUpstreamGet, p.ID).Scan(&upstreamID, &seq); err != nil {
			return err // no row: classify makes it store.ErrNotFound
		}
		if upstreamID != nil {
			return store.ErrConflict // started: the upstream has its requests
		}
		if err := lockBatches(ctx, tx, []int64{seq}); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, qUpstreamCancel, p.ID)
		if err != nil {
			return err
		}
		canceled := tag.RowsAffected()
		if _, err := tx.Exec(ctx, qUpstreamRelease, p.ID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, qUpstreamDelete, p.ID); err != nil {
			return err
		}
		if canceled > 0 {
			ch, err := settle(ctx, tx, seq, store.Counts{Canceled: canceled}, p.Now)
			if err != nil {
				return err
			}
			out = append(out, ch)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UpstreamBatchDelete implements store.Store.
func (s *Store) UpstreamBatchDelete(ctx context.Context, id int64) error {
	return s.tx(ctx, "delete upstream batch", func(tx pgx.Tx) error {
		var left int
		if err := tx.QueryRow(ctx, qUpstreamLeft, id).Scan(&left); err != nil {
			return err
		}
		if left > 0 {
			return fmt.Errorf("%d requests unsettled: %w", left, store.ErrConflict)
		}
		_, err := tx.Exec(ctx, qUpstreamDelete, id)
		return err
	})
}
