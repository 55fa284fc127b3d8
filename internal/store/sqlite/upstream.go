package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"

	"github.com/batchd/batchd/internal/store"
)

// UpstreamBatchInsert implements store.Store.
func (s *Store) UpstreamBatchInsert(ctx context.Context, p store.UpstreamBatchInsertParams) (*store.UpstreamBatch, error) {
	ub := &store.UpstreamBatch{Backend: p.Backend, Owner: p.Owner, BatchSeq: p.BatchSeq, CreatedAt: p.Now.UTC(),
		LeaseExpires: p.LeaseUntil.UTC(), BatchStatus: store.StatusInProgress}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `INSERT INTO upstream_batches (backend, owner, batch_seq, created_at, lease_expires) VALUES (?, ?, ?, ?, ?) RETURNING id`,
			p.Backend, p.Owner, p.BatchSeq, micros(p.Now), micros(p.LeaseUntil)).Scan(&ub.ID); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE tasks SET upstream = ? WHERE id IN (SELECT value FROM json_each(?))
			AND batch_seq = ? AND state = 1 AND lease_owner = ? AND upstream IS NULL`, ub.ID, idsJSON(p.RequestIDs), p.BatchSeq, p.Owner)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != int64(len(p.RequestIDs)) {
			return fmt.Errorf("%d of %d requests are not held by %s: %w", int64(len(p.RequestIDs))-n, len(p.RequestIDs), p.Owner, store.ErrConflict)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("insert upstream batch: %w", err)
	}
	return ub, nil
}

// idsJSON is a JSON array of ids, for json_each.
func idsJSON(ids []int64) string {
	b := make([]byte, 0, len(ids)*8+2)
	b = append(b, '[')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, id, 10)
	}
	return string(append(b, ']'))
}

// UpstreamBatchStart implements store.Store.
func (s *Store) UpstreamBatchStart(ctx context.Context, p store.UpstreamBatchStartParams) error {
	n, err := s.execAffected(ctx, "start upstream batch", `UPDATE upstream_batches SET upstream_id = ? WHERE id = ? AND upstream_id IS NULL`, p.UpstreamID, p.ID)
	if err == nil && n == 0 {
		err = fmt.Errorf("start upstream batch: %w", store.ErrConflict)
	}
	return err
}

// UpstreamBatchesHeartbeat implements store.Store.
func (s *Store) UpstreamBatchesHeartbeat(ctx context.Context, p store.UpstreamBatchesHeartbeatParams) error {
	_, err := s.execAffected(ctx, "heartbeat upstream batches", `UPDATE upstream_batches SET lease_expires = ? WHERE owner = ? AND (? = '' OR backend = ?)`,
		micros(p.LeaseUntil), p.Owner, p.Backend, p.Backend)
	return err
}

// UpstreamBatchAdopt implements store.Store: only a lapsed lease changes
// hands, with the requests it holds.
func (s *Store) UpstreamBatchAdopt(ctx context.Context, p store.UpstreamBatchAdoptParams) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := checkLead(ctx, tx, p.Lead, p.Now); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE upstream_batches SET owner = ?, lease_expires = ? WHERE id = ? AND lease_expires < ?`,
			p.Owner, micros(p.LeaseUntil), p.ID, micros(p.Now))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrConflict // gone, or its lease is live
		}
		_, err = tx.ExecContext(ctx, `UPDATE tasks SET lease_owner = ? WHERE upstream = ? AND state = 1`, p.Owner, p.ID)
		return err
	})
	if err != nil {
		return fmt.Errorf("adopt upstream batch: %w", err)
	}
	return nil
}

// UpstreamBatchesList implements store.Store.
func (s *Store) UpstreamBatchesList(ctx context.Context, backend string) ([]*store.UpstreamBatch, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT u.id, u.backend, u.owner, u.batch_seq, coalesce(u.upstream_id, ''), u.created_at,
		u.lease_expires, coalesce(b.status, 'ended') FROM upstream_batches u LEFT JOIN batches b ON b.seq = u.batch_seq
		WHERE u.backend = ? ORDER BY u.id`, backend)
	if err != nil {
		return nil, fmt.Errorf("list upstream batches: %w", err)
	}
	defer rows.Close()
	var out []*store.UpstreamBatch
	for rows.Next() {
		var ub store.UpstreamBatch
		var created, lease int64
		if err := rows.Scan(&ub.ID, &ub.Backend, &ub.Owner, &ub.BatchSeq, &ub.UpstreamID, &created, &lease, &ub.BatchStatus); err != nil {
			return nil, fmt.Errorf("list upstream batches: %w", err)
		}
		ub.CreatedAt, ub.LeaseExpires = fromMicros(created), fromMicros(lease)
		out = append(out, &ub)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list upstream batches: %w", err)
	}
	return out, nil
}

// UpstreamBatchRequests implements store.Store.
func (s *Store) UpstreamBatchRequests(ctx context.Context, id int64) ([]store.ClaimedRequest, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT t.id, t.batch_seq, t.attempts, r.custom_id, b.id, b.expires_at
		FROM tasks t JOIN requests r ON r.id = t.id JOIN batches b ON b.seq = t.batch_seq
		WHERE t.upstream = ? AND t.state = 1 ORDER BY t.id`, id)
	if err != nil {
		return nil, fmt.Errorf("list upstream batch requests: %w", err)
	}
	defer rows.Close()
	var out []store.ClaimedRequest
	for rows.Next() {
		var c store.ClaimedRequest
		var expires int64
		if err := rows.Scan(&c.ID, &c.BatchSeq, &c.Attempt, &c.CustomID, &c.BatchID, &expires); err != nil {
			return nil, fmt.Errorf("list upstream batch requests: %w", err)
		}
		c.ExpiresAt = fromMicros(expires)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list upstream batch requests: %w", err)
	}
	return out, nil
}

// UpstreamBatchAbandon implements store.Store.
func (s *Store) UpstreamBatchAbandon(ctx context.Context, p store.UpstreamBatchAbandonParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	err := s.tx(ctx, func(tx *sql.Tx) error {
		out = nil
		var upstreamID sql.NullString
		var seq int64
		err := tx.QueryRowContext(ctx, `SELECT upstream_id, batch_seq FROM upstream_batches WHERE id = ?`, p.ID).Scan(&upstreamID, &seq)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		if upstreamID.Valid {
			return store.ErrConflict // started: the upstream has its requests
		}
		// As in RequestsRescue: a canceling batch's requests settle as
		// canceled, every other one goes back to pending.
		res, err := tx.ExecContext(ctx, `INSERT INTO results (id, batch_seq, custom_id, result_type, result)
			SELECT t.id, t.batch_seq, r.custom_id, 'canceled', NULL FROM tasks t JOIN requests r ON r.id = t.id
			WHERE t.upstream = ? AND t.state = 1 AND t.batch_seq IN (SELECT seq FROM batches WHERE status = 'canceling')`, p.ID)
		if err != nil {
			return err
		}
		canceled, _ := res.RowsAffected()
		if _, err := tx.ExecContext(ctx, `DELETE FROM tasks WHERE upstream = ? AND state = 1
			AND batch_seq IN (SELECT seq FROM batches WHERE status = 'canceling')`, p.ID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE tasks SET state = 0, upstream = NULL, lease_owner = NULL, lease_expires = NULL
			WHERE upstream = ? AND state = 1`, p.ID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM upstream_batches WHERE id = ?`, p.ID); err != nil {
			return err
		}
		if canceled > 0 {
			ch, err := s.settle(ctx, tx, seq, store.Counts{Canceled: canceled}, p.Now)
			if err != nil {
				return err
			}
			out = append(out, ch)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("abandon upstream batch: %w", err)
	}
	return out, nil
}

// UpstreamBatchDelete implements store.Store.
func (s *Store) UpstreamBatchDelete(ctx context.Context, id int64) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var left int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM tasks WHERE upstream = ?`, id).Scan(&left); err != nil {
			return err
		}
		if left > 0 {
			return fmt.Errorf("%d requests unsettled: %w", left, store.ErrConflict)
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM upstream_batches WHERE id = ?`, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete upstream batch: %w", err)
	}
	return nil
}
