package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/store"
)

// The SQL of batches: create, publish, read, cancel, end, expire, delete,
// archive.
const (
	batchCols = `seq, id, workspace, status, total, n_succeeded, n_errored, n_canceled, n_expired,
	created_at, expires_at, ended_at, cancel_initiated_at, archived_at, betas`

	// Batches of a workspace are counted under a lock on the workspace, so
	// two creates never both pass the cap.
	qLockWorkspace = `SELECT pg_advisory_xact_lock(hashtext('batchd.workspace'), hashtext($1))`
	qCountOpen     = `SELECT count(*) FROM batches WHERE workspace = $1 AND status != 'ended'`
	qBatchInsert   = `INSERT INTO batches (id, workspace, status, created_at, expires_at, betas, upload_expires)
		VALUES ($1, $2, 'creating', $3, $4, $5, $6) RETURNING ` + batchCols
	qUploadRenew  = `UPDATE batches SET upload_expires = $1 WHERE seq = $2 AND status = 'creating'`
	qBatchPublish = `UPDATE batches SET status = 'in_progress', total = $1, max_cost_usd = $3
		WHERE seq = $2 AND status = 'creating' RETURNING ` + batchCols
	// qBudgetReserved sums what the other batches in progress of batch
	// $1's workspace may still cost; it runs under the workspace's lock.
	qBudgetReserved = `SELECT coalesce(sum(max_cost_usd), 0) FROM batches
		WHERE workspace = (SELECT workspace FROM batches WHERE seq = $1) AND status IN ('in_progress', 'canceling') AND seq != $1`
	qBatchWorkspace = `SELECT workspace FROM batches WHERE seq = $1`

	qBatchDelete = `DELETE FROM batches WHERE seq = $1`
	qPurgeAdd    = `INSERT INTO purges (batch_seq) VALUES ($1) ON CONFLICT DO NOTHING`
	qDiscard     = `WITH gone AS (DELETE FROM batches WHERE status = 'creating' AND upload_expires < $1 RETURNING seq),
		queued AS (INSERT INTO purges (batch_seq) SELECT seq FROM gone ON CONFLICT DO NOTHING)
		SELECT count(*) FROM gone`

	qBatchGet = `SELECT ` + batchCols + ` FROM batches
		WHERE id = $1 AND workspace = $2 AND status != 'creating'`
	qBatchGetLocked = qBatchGet + ` FOR NO KEY UPDATE`
	qBatchCursor    = `SELECT seq FROM batches WHERE id = $1 AND workspace = $2 AND status != 'creating'`
	qBatchOlder     = `SELECT ` + batchCols + ` FROM batches WHERE workspace = $1 AND status != 'creating' AND seq < $2
		ORDER BY seq DESC LIMIT $3`
	qBatchNewer = `SELECT ` + batchCols + ` FROM batches WHERE workspace = $1 AND status != 'creating' AND seq > $2
		ORDER BY seq ASC LIMIT $3`
	qBatchBySeq = `SELECT ` + batchCols + ` FROM batches WHERE seq = $1`

	qBatchCanceling = `UPDATE batches SET status = 'canceling', cancel_initiated_at = $1
		WHERE seq = $2 RETURNING ` + batchCols

	// settle: a count delta, then the end, guarded by status and counts so
	// that it happens exactly once.
	qAddCounts = `UPDATE batches SET n_succeeded = n_succeeded + $1, n_errored = n_errored + $2,
		n_canceled = n_canceled + $3, n_expired = n_expired + $4 WHERE seq = $5`
	qEndIfDone = `UPDATE batches SET status = 'ended', ended_at = $1
		WHERE seq = $2 AND status IN ('in_progress', 'canceling')
		AND n_succeeded + n_errored + n_canceled + n_expired >= total RETURNING ` + batchCols

	// settlePending moves pending tasks to results; %s is a condition on t.
	qSettlePending = `WITH moved AS (
			DELETE FROM tasks t USING requests r
			WHERE r.id = t.id AND t.batch_seq = $1 AND t.state = 0 %s
			RETURNING t.id, t.batch_seq, r.custom_id, t.last_error)
		INSERT INTO results (id, batch_seq, custom_id, result_type, result)
		SELECT id, batch_seq, custom_id, $2::text, CASE WHEN $3::boolean THEN last_error END FROM moved`

	qExpiring = `SELECT seq FROM batches WHERE status IN ('in_progress', 'canceling') AND expires_at <= $1
		ORDER BY seq FOR NO KEY UPDATE`
	qArchive = `WITH archived AS (
			UPDATE batches SET archived_at = $1
			WHERE status = 'ended' AND archived_at IS NULL AND created_at <= $2 RETURNING seq),
		queued AS (INSERT INTO purges (batch_seq) SELECT seq FROM archived ON CONFLICT DO NOTHING)
		SELECT count(*) FROM archived`
	// pruneEvents deletes events older than the retention, with their
	// deliveries and attempts, a bounded chunk per sweep.
	qPruneEvents = `WITH old AS (SELECT seq FROM events WHERE created_at <= $1 ORDER BY created_at LIMIT 1000),
		ds AS (SELECT id FROM deliveries WHERE event_seq IN (SELECT seq FROM old)),
		atts AS (DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM ds)),
		dels AS (DELETE FROM deliveries WHERE id IN (SELECT id FROM ds))
		DELETE FROM events WHERE seq IN (SELECT seq FROM old)`
	qNextExpiry = `SELECT min(expires_at) FROM batches WHERE status IN ('in_progress', 'canceling')`
)

type scanner interface{ Scan(dest ...any) error }

func scanBatch(row scanner) (*store.Batch, error) {
	var (
		b                          store.Batch
		created, expires           int64
		ended, cancelInit, archivd *int64
		betas                      string
	)
	err := row.Scan(&b.Seq, &b.ID, &b.Workspace, &b.Status, &b.Total, &b.Counts.Succeeded, &b.Counts.Errored,
		&b.Counts.Canceled, &b.Counts.Expired, &created, &expires, &ended, &cancelInit, &archivd, &betas)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	b.CreatedAt, b.ExpiresAt = fromMicros(created), fromMicros(expires)
	b.EndedAt, b.CancelInitiatedAt, b.ArchivedAt = fromNullMicros(ended), fromNullMicros(cancelInit), fromNullMicros(archivd)
	b.Betas = splitList(betas)
	b.Counts.Processing = b.Total - b.Counts.Succeeded - b.Counts.Errored - b.Counts.Canceled - b.Counts.Expired
	return &b, nil
}

// BatchInsert implements store.Store.
func (s *Store) BatchInsert(ctx context.Context, p store.BatchInsertParams) (*store.Batch, error) {
	var b *store.Batch
	err := s.tx(ctx, "insert batch", func(tx pgx.Tx) error {
		if p.MaxInProgress > 0 {
			if _, err := tx.Exec(ctx, qLockWorkspace, p.Workspace); err != nil {
				return err
			}
			var n int
			if err := tx.QueryRow(ctx, qCountOpen, p.Workspace).Scan(&n); err != nil {
				return err
			}
			if n >= p.MaxInProgress {
				return store.ErrTooManyBatches
			}
		}
		var err error
		b, err = scanBatch(tx.QueryRow(ctx, qBatchInsert, p.ID, p.Workspace, micros(p.CreatedAt), micros(p.ExpiresAt), strings.Join(p.Betas, ","),
			micros(cmpTime(p.UploadUntil, p.CreatedAt))))
		return err
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// BatchPublish implements store.Store.
func (s *Store) BatchPublish(ctx context.Context, p store.BatchPublishParams) (*store.Batch, error) {
	var b *store.Batch
	err := s.tx(ctx, "publish batch", func(tx pgx.Tx) error {
		var cost *float64 // NULL: no budget holds it
		if bg := p.Budget; bg != nil {
			var ws string
			if err := tx.QueryRow(ctx, qBatchWorkspace, p.BatchSeq).Scan(&ws); err != nil {
				return err
			}
			// Two creates of one workspace, in any processes, check in turn.
			if _, err := tx.Exec(ctx, qLockWorkspace, ws); err != nil {
				return err
			}
			var reserved float64
			if err := tx.QueryRow(ctx, qBudgetReserved, p.BatchSeq).Scan(&reserved); err != nil {
				return err
			}
			if bg.Exceeded(reserved) {
				return &store.BudgetError{Budget: *bg, ReservedUSD: reserved}
			}
			cost = &bg.CostUSD
		}
		var err error
		if b, err = scanBatch(tx.QueryRow(ctx, qBatchPublish, p.Total, p.BatchSeq, cost)); err != nil {
			return err
		}
		return recordEvent(ctx, tx, b, store.EventBatchCreated, b.CreatedAt)
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// BatchDiscard implements store.Store.
func (s *Store) BatchDiscard(ctx context.Context, batchSeq int64) error {
	return s.tx(ctx, "discard batch", func(tx pgx.Tx) error { return deleteBatch(ctx, tx, batchSeq) })
}

// deleteBatch removes a batch row at once and queues its requests and
// results for the background purge.
func deleteBatch(ctx context.Context, tx pgx.Tx, seq int64) error {
	if _, err := tx.Exec(ctx, qBatchDelete, seq); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, qPurgeAdd, seq)
	return err
}

// cmpTime is t, or def when t is zero.
func cmpTime(t, def time.Time) time.Time {
	if t.IsZero() {
		return def
	}
	return t
}

// BatchUploadRenew implements store.Store.
func (s *Store) BatchUploadRenew(ctx context.Context, p store.BatchUploadRenewParams) error {
	n, err := s.execAffected(ctx, "renew upload", qUploadRenew, micros(p.Until), p.BatchSeq)
	if err == nil && n == 0 {
		err = fmt.Errorf("renew upload: %w", store.ErrNotFound)
	}
	return err
}

// BatchesDiscardStale implements store.Store.
func (s *Store) BatchesDiscardStale(ctx context.Context, p store.BatchesDiscardStaleParams) (int, error) {
	n := 0
	err := s.tx(ctx, "discard stale batches", func(tx pgx.Tx) error {
		if err := checkLead(ctx, tx, p.Lead, micros(p.Now)); err != nil {
			return err
		}
		return tx.QueryRow(ctx, qDiscard, micros(p.Now)).Scan(&n)
	})
	return n, err
}

// BatchGet implements store.Store.
func (s *Store) BatchGet(ctx context.Context, p store.BatchGetParams) (*store.Batch, error) {
	var b *store.Batch
	err := s.read(ctx, "get batch", func(q querier) error {
		var err error
		b, err = scanBatch(q.QueryRow(ctx, qBatchGet, p.ID, p.Workspace))
		return err
	})
	return b, err
}

// BatchList implements store.Store.
func (s *Store) BatchList(ctx context.Context, p store.BatchListParams) (*store.BatchPage, error) {
	cursor, backwards := p.AfterID, false
	if p.BeforeID != "" {
		cursor, backwards = p.BeforeID, true
	}
	var page *store.BatchPage
	err := s.read(ctx, "list batches", func(q querier) error {
		page = &store.BatchPage{}
		var from int64 = 1 << 62 // older than nothing: every batch
		if cursor != "" {
			if err := q.QueryRow(ctx, qBatchCursor, cursor, p.Workspace).Scan(&from); err != nil {
				if errors.Is(err, pgx.ErrNoRows) {
					return fmt.Errorf("cursor: %w", store.ErrNotFound)
				}
				return err
			}
		}
		sql := qBatchOlder
		if backwards {
			sql = qBatchNewer
		}
		rows, err := q.Query(ctx, sql, p.Workspace, from, p.Limit+1)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			b, err := scanBatch(rows)
			if err != nil {
				return err
			}
			page.Batches = append(page.Batches, b)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	if len(page.Batches) > p.Limit {
		page.HasMore = true
		page.Batches = page.Batches[:p.Limit]
	}
	if backwards {
		// Fetched oldest-first to take the ones nearest the cursor; the page
		// itself is still newest-first.
		slices.Reverse(page.Batches)
	}
	return page, nil
}

// settle applies a count delta and ends the batch if every request is now
// settled. The end is guarded by status, so it happens exactly once; the
// caller holds the batch row (lockBatches).
func settle(ctx context.Context, tx pgx.Tx, seq int64, d store.Counts, now time.Time) (*store.BatchChange, error) {
	if d != (store.Counts{}) {
		if _, err := tx.Exec(ctx, qAddCounts, d.Succeeded, d.Errored, d.Canceled, d.Expired, seq); err != nil {
			return nil, err
		}
	}
	b, err := scanBatch(tx.QueryRow(ctx, qEndIfDone, micros(now), seq))
	if err == nil {
		if err := recordEvent(ctx, tx, b, store.EventBatchEnded, now); err != nil {
			return nil, err
		}
		return &store.BatchChange{Batch: b, Ended: true}, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if b, err = scanBatch(tx.QueryRow(ctx, qBatchBySeq, seq)); err != nil {
		return nil, err
	}
	return &store.BatchChange{Batch: b}, nil
}

// settlePending moves a batch's pending tasks matching cond (on t) to
// results of resultType, with the task's last error as the result when
// lastError is set, returning how many it moved.
func settlePending(ctx context.Context, tx pgx.Tx, seq int64, resultType string, lastError bool, cond string) (int64, error) {
	tag, err := tx.Exec(ctx, strings.Replace(qSettlePending, "%s", cond, 1), seq, resultType, lastError)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// BatchCancel implements store.Store.
func (s *Store) BatchCancel(ctx context.Context, p store.BatchCancelParams) (*store.BatchChange, error) {
	var ch *store.BatchChange
	err := s.tx(ctx, "cancel batch", func(tx pgx.Tx) error {
		b, err := scanBatch(tx.QueryRow(ctx, qBatchGetLocked, p.ID, p.Workspace))
		if err != nil {
			return err
		}
		switch b.Status {
		case store.StatusEnded:
			return store.ErrConflict
		case store.StatusCanceling:
			ch = &store.BatchChange{Batch: b}
			return nil
		}
		canceling, err := scanBatch(tx.QueryRow(ctx, qBatchCanceling, micros(p.Now), b.Seq))
		if err != nil {
			return err
		}
		if err := recordEvent(ctx, tx, canceling, store.EventBatchCanceling, p.Now); err != nil {
			return err
		}
		n, err := settlePending(ctx, tx, b.Seq, store.ResultCanceled, false, "")
		if err != nil {
			return err
		}
		ch, err = settle(ctx, tx, b.Seq, store.Counts{Canceled: n}, p.Now)
		return err
	})
	if err != nil {
		return nil, err
	}
	return ch, nil
}

// BatchDelete implements store.Store.
func (s *Store) BatchDelete(ctx context.Context, p store.BatchGetParams) error {
	return s.tx(ctx, "delete batch", func(tx pgx.Tx) error {
		b, err := scanBatch(tx.QueryRow(ctx, qBatchGetLocked, p.ID, p.Workspace))
		if err != nil {
			return err
		}
		if b.Status != store.StatusEnded {
			return store.ErrConflict
		}
		return deleteBatch(ctx, tx, b.Seq)
	})
}

// BatchesExpire implements store.Store.
func (s *Store) BatchesExpire(ctx context.Context, p store.BatchesExpireParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	err := s.tx(ctx, "expire batches", func(tx pgx.Tx) error {
		out = nil
		if err := checkLead(ctx, tx, p.Lead, micros(p.Now)); err != nil {
			return err
		}
		seqs, err := querySeqs(ctx, tx, qExpiring, micros(p.Now)) // locks them
		if err != nil {
			return err
		}
		for _, seq := range seqs {
			// No answer before the expiry (never sent, or rescued from a
			// process that died with it): expired. Failed and waiting to
			// retry: errored with the last error.
			expired, err := settlePending(ctx, tx, seq, store.ResultExpired, false, `AND t.last_error IS NULL`)
			if err != nil {
				return err
			}
			errored, err := settlePending(ctx, tx, seq, store.ResultErrored, true, `AND t.last_error IS NOT NULL`)
			if err != nil {
				return err
			}
			ch, err := settle(ctx, tx, seq, store.Counts{Expired: expired, Errored: errored}, p.Now)
			if err != nil {
				return err
			}
			if expired+errored > 0 || ch.Ended {
				out = append(out, ch)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// BatchesArchive implements store.Store.
func (s *Store) BatchesArchive(ctx context.Context, p store.BatchesArchiveParams) (int, error) {
	n := 0
	err := s.tx(ctx, "archive batches", func(tx pgx.Tx) error {
		if err := checkLead(ctx, tx, p.Lead, micros(p.Now)); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, qArchive, micros(p.Now), micros(p.CreatedBefore)).Scan(&n); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, qPruneEvents, micros(p.CreatedBefore))
		return err
	})
	return n, err
}

// BatchNextExpiry implements store.Store.
func (s *Store) BatchNextExpiry(ctx context.Context) (time.Time, error) {
	return s.minTime(ctx, "next expiry", qNextExpiry)
}

// minTime reads one nullable microsecond time, zero when NULL.
func (s *Store) minTime(ctx context.Context, action, sql string, args ...any) (time.Time, error) {
	var v *int64
	err := s.read(ctx, action, func(q querier) error { return q.QueryRow(ctx, sql, args...).Scan(&v) })
	if err != nil || v == nil {
		return time.Time{}, err
	}
	return fromMicros(*v), nil
}
