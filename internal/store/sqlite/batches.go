package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// A batch's counts, end and reads: prepared once at Open (see prepare), as
// every completion and every GET of a batch runs them.
const (
	qAddCounts = `UPDATE batches SET n_succeeded = n_succeeded + ?, n_errored = n_errored + ?,
		n_canceled = n_canceled + ?, n_expired = n_expired + ? WHERE seq = ?`
	qEndIfDone = `UPDATE batches SET status = 'ended', ended_at = ?
		WHERE seq = ? AND status IN ('in_progress', 'canceling')
		AND n_succeeded + n_errored + n_canceled + n_expired >= total RETURNING ` + batchCols
	qBatchBySeq = `SELECT ` + batchCols + ` FROM batches WHERE seq = ?`
	qBatchGet   = `SELECT ` + batchCols + ` FROM batches WHERE id = ? AND workspace = ? AND status != 'creating'`
)

const batchCols = `seq, id, workspace, status, total, n_succeeded, n_errored, n_canceled, n_expired,
	created_at, expires_at, ended_at, cancel_initiated_at, archived_at, betas`

func scanBatch(row scanner) (*store.Batch, error) {
	var (
		b                         store.Batch
		created, expires          int64
		ended, cancelInit, archiv sql.NullInt64
		betas                     string
	)
	err := row.Scan(&b.Seq, &b.ID, &b.Workspace, &b.Status, &b.Total, &b.Counts.Succeeded, &b.Counts.Errored,
		&b.Counts.Canceled, &b.Counts.Expired, &created, &expires, &ended, &cancelInit, &archiv, &betas)
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, store.ErrNotFound
		}
		return nil, err
	}
	b.CreatedAt = fromMicros(created)
	b.ExpiresAt = fromMicros(expires)
	b.EndedAt = fromNullMicros(ended)
	b.CancelInitiatedAt = fromNullMicros(cancelInit)
	b.ArchivedAt = fromNullMicros(archiv)
	b.Betas = splitBetas(betas)
	b.Counts.Processing = b.Total - b.Counts.Succeeded - b.Counts.Errored - b.Counts.Canceled - b.Counts.Expired
	return &b, nil
}

// BatchInsert implements store.Store.
func (s *Store) BatchInsert(ctx context.Context, p store.BatchInsertParams) (*store.Batch, error) {
	var b *store.Batch
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if p.MaxInProgress > 0 {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM batches WHERE workspace = ? AND status != 'ended'`, p.Workspace).Scan(&n); err != nil {
				return err
			}
			if n >= p.MaxInProgress {
				return store.ErrTooManyBatches
			}
		}
		var err error
		upload := p.UploadUntil
		if upload.IsZero() {
			upload = p.CreatedAt
		}
		b, err = scanBatch(tx.QueryRowContext(ctx, `INSERT INTO batches (id, workspace, status, created_at, expires_at, betas, upload_expires)
			VALUES (?, ?, 'creating', ?, ?, ?, ?) RETURNING `+batchCols, p.ID, p.Workspace, micros(p.CreatedAt), micros(p.ExpiresAt),
			strings.Join(p.Betas, ","), micros(upload)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("insert batch: %w", err)
	}
	return b, nil
}

// BatchPublish implements store.Store.
func (s *Store) BatchPublish(ctx context.Context, p store.BatchPublishParams) (*store.Batch, error) {
	var b *store.Batch
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var cost any // NULL: no budget holds it
		if bg := p.Budget; bg != nil {
			// The write transaction is the only writer: the sum holds
			// until it commits.
			var reserved float64
			if err := tx.QueryRowContext(ctx, qBudgetReserved, p.BatchSeq, p.BatchSeq).Scan(&reserved); err != nil {
				return err
			}
			if bg.Exceeded(reserved) {
				return &store.BudgetError{Budget: *bg, ReservedUSD: reserved}
			}
			cost = bg.CostUSD
		}
		var err error
		b, err = scanBatch(tx.QueryRowContext(ctx, `UPDATE batches SET status = 'in_progress', total = ?, max_cost_usd = ?
			WHERE seq = ? AND status = 'creating' RETURNING `+batchCols, p.Total, cost, p.BatchSeq))
		if err != nil {
			return err
		}
		return recordEvent(ctx, tx, b, store.EventBatchCreated, b.CreatedAt)
	})
	if err != nil {
		return nil, fmt.Errorf("publish batch: %w", err)
	}
	return b, nil
}

// qBudgetReserved sums what the other batches in progress of batch ?'s
// workspace may still cost.
const qBudgetReserved = `SELECT coalesce(sum(max_cost_usd), 0) FROM batches
	WHERE workspace = (SELECT workspace FROM batches WHERE seq = ?) AND status IN ('in_progress', 'canceling') AND seq != ?`

// BatchDiscard implements store.Store.
func (s *Store) BatchDiscard(ctx context.Context, batchSeq int64) error {
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		return deleteBatch(ctx, tx, batchSeq)
	})
	if err != nil {
		return fmt.Errorf("discard batch: %w", err)
	}
	return nil
}

func deleteBatch(ctx context.Context, tx *sql.Tx, seq int64) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM batches WHERE seq = ?`, seq); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO purges (batch_seq) VALUES (?)`, seq)
	return err
}

// BatchUploadRenew implements store.Store.
func (s *Store) BatchUploadRenew(ctx context.Context, p store.BatchUploadRenewParams) error {
	n, err := s.execAffected(ctx, "renew upload", `UPDATE batches SET upload_expires = ? WHERE seq = ? AND status = 'creating'`,
		micros(p.Until), p.BatchSeq)
	if err == nil && n == 0 {
		err = fmt.Errorf("renew upload: %w", store.ErrNotFound)
	}
	return err
}

// BatchesDiscardStale implements store.Store.
func (s *Store) BatchesDiscardStale(ctx context.Context, p store.BatchesDiscardStaleParams) (int, error) {
	n := 0
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		if err := checkLead(ctx, tx, p.Lead, p.Now); err != nil {
			return err
		}
		seqs, err := querySeqs(ctx, tx, `SELECT seq FROM batches WHERE status = 'creating' AND upload_expires < ?`, micros(p.Now))
		if err != nil {
			return err
		}
		for _, seq := range seqs {
			if err := deleteBatch(ctx, tx, seq); err != nil {
				return err
			}
		}
		n = len(seqs)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("discard stale batches: %w", err)
	}
	return n, nil
}

// BatchGet implements store.Store.
func (s *Store) BatchGet(ctx context.Context, p store.BatchGetParams) (*store.Batch, error) {
	b, err := scanBatch(s.batchGet.QueryRowContext(ctx, p.ID, p.Workspace))
	if err != nil {
		return nil, fmt.Errorf("get batch: %w", err)
	}
	return b, nil
}

// BatchList implements store.Store.
func (s *Store) BatchList(ctx context.Context, p store.BatchListParams) (*store.BatchPage, error) {
	cursor, backwards := p.AfterID, false
	if p.BeforeID != "" {
		cursor, backwards = p.BeforeID, true
	}
	q := `SELECT ` + batchCols + ` FROM batches WHERE workspace = ? AND status != 'creating'`
	args := []any{p.Workspace}
	if cursor != "" {
		var seq int64
		err := s.r.QueryRowContext(ctx, `SELECT seq FROM batches WHERE id = ? AND workspace = ? AND status != 'creating'`,
			cursor, p.Workspace).Scan(&seq)
		if err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return nil, fmt.Errorf("list batches: cursor: %w", store.ErrNotFound)
			}
			return nil, fmt.Errorf("list batches: %w", err)
		}
		if backwards {
			q += ` AND seq > ?`
		} else {
			q += ` AND seq < ?`
		}
		args = append(args, seq)
	}
	if backwards {
		q += ` ORDER BY seq ASC LIMIT ?`
	} else {
		q += ` ORDER BY seq DESC LIMIT ?`
	}
	args = append(args, p.Limit+1)
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	defer rows.Close()
	page := &store.BatchPage{}
	for rows.Next() {
		b, err := scanBatch(rows)
		if err != nil {
			return nil, fmt.Errorf("list batches: %w", err)
		}
		page.Batches = append(page.Batches, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	if len(page.Batches) > p.Limit {
		page.HasMore = true
		page.Batches = page.Batches[:p.Limit]
	}
	if backwards {
		// Fetched oldest-first to take the ones nearest the cursor; the page
		// itself is still newest-first.
		for i, j := 0, len(page.Batches)-1; i < j; i, j = i+1, j-1 {
			page.Batches[i], page.Batches[j] = page.Batches[j], page.Batches[i]
		}
	}
	return page, nil
}

// settle applies a count delta and ends the batch if every request is now
// settled. The end is guarded by status, so it happens exactly once.
func (s *Store) settle(ctx context.Context, tx *sql.Tx, seq int64, d store.Counts, now time.Time) (*store.BatchChange, error) {
	if d != (store.Counts{}) {
		_, err := s.stmt(ctx, tx, qAddCounts).ExecContext(ctx, d.Succeeded, d.Errored, d.Canceled, d.Expired, seq)
		if err != nil {
			return nil, err
		}
	}
	b, err := scanBatch(s.stmt(ctx, tx, qEndIfDone).QueryRowContext(ctx, micros(now), seq))
	if err == nil {
		if err := recordEvent(ctx, tx, b, store.EventBatchEnded, now); err != nil {
			return nil, err
		}
		return &store.BatchChange{Batch: b, Ended: true}, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	b, err = scanBatch(s.stmt(ctx, tx, qBatchBySeq).QueryRowContext(ctx, seq))
	if err != nil {
		return nil, err
	}
	return &store.BatchChange{Batch: b}, nil
}

// BatchCancel implements store.Store.
func (s *Store) BatchCancel(ctx context.Context, p store.BatchCancelParams) (*store.BatchChange, error) {
	var ch *store.BatchChange
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		b, err := scanBatch(tx.QueryRowContext(ctx, `SELECT `+batchCols+` FROM batches
			WHERE id = ? AND workspace = ? AND status != 'creating'`, p.ID, p.Workspace))
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
		canceling, err := scanBatch(tx.QueryRowContext(ctx, `UPDATE batches SET status = 'canceling', cancel_initiated_at = ?
			WHERE seq = ? RETURNING `+batchCols, micros(p.Now), b.Seq))
		if err != nil {
			return err
		}
		if err := recordEvent(ctx, tx, canceling, store.EventBatchCanceling, p.Now); err != nil {
			return err
		}
		n, err := settlePending(ctx, tx, b.Seq, `'canceled'`, `NULL`, "")
		if err != nil {
			return err
		}
		ch, err = s.settle(ctx, tx, b.Seq, store.Counts{Canceled: n}, p.Now)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cancel batch: %w", err)
	}
	return ch, nil
}

// settlePending moves a batch's pending tasks matching cond to results of
// the given type and result expressions, returning how many it moved.
func settlePending(ctx context.Context, tx *sql.Tx, seq int64, typeExpr, resultExpr, cond string) (int64, error) {
	res, err := tx.ExecContext(ctx, `INSERT INTO results (id, batch_seq, custom_id, result_type, result)
		SELECT t.id, t.batch_seq, r.custom_id, `+typeExpr+`, `+resultExpr+` FROM tasks t JOIN requests r ON r.id = t.id
		WHERE t.batch_seq = ? AND t.state = 0`+cond, seq)
	if err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	if _, err := tx.ExecContext(ctx, `DELETE FROM tasks WHERE batch_seq = ? AND state = 0`+strings.ReplaceAll(cond, "t.", ""), seq); err != nil {
		return 0, err
	}
	return n, nil
}

// BatchDelete implements store.Store.
func (s *Store) BatchDelete(ctx context.Context, p store.BatchGetParams) error {
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		var seq int64
		var status string
		err := tx.QueryRowContext(ctx, `SELECT seq, status FROM batches WHERE id = ? AND workspace = ? AND status != 'creating'`,
			p.ID, p.Workspace).Scan(&seq, &status)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		if status != store.StatusEnded {
			return store.ErrConflict
		}
		return deleteBatch(ctx, tx, seq)
	})
	if err != nil {
		return fmt.Errorf("delete batch: %w", err)
	}
	return nil
}

// BatchesExpire implements store.Store.
func (s *Store) BatchesExpire(ctx context.Context, p store.BatchesExpireParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		out = nil
		if err := checkLead(ctx, tx, p.Lead, p.Now); err != nil {
			return err
		}
		seqs, err := querySeqs(ctx, tx, `SELECT seq FROM batches WHERE status IN ('in_progress', 'canceling') AND expires_at <= ?`, micros(p.Now))
		if err != nil {
			return err
		}
		for _, seq := range seqs {
			// No answer before the expiry (never sent, or rescued from a
			// process that died with it): expired. Failed and waiting to
			// retry: errored with the last error.
			expired, err := settlePending(ctx, tx, seq, `'expired'`, `NULL`, ` AND t.last_error IS NULL`)
			if err != nil {
				return err
			}
			errored, err := settlePending(ctx, tx, seq, `'errored'`, `t.last_error`, ` AND t.last_error IS NOT NULL`)
			if err != nil {
				return err
			}
			ch, err := s.settle(ctx, tx, seq, store.Counts{Expired: expired, Errored: errored}, p.Now)
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
		return nil, fmt.Errorf("expire batches: %w", err)
	}
	return out, nil
}

// BatchesArchive implements store.Store.
func (s *Store) BatchesArchive(ctx context.Context, p store.BatchesArchiveParams) (int, error) {
	n := 0
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		if err := checkLead(ctx, tx, p.Lead, p.Now); err != nil {
			return err
		}
		seqs, err := querySeqs(ctx, tx, `UPDATE batches SET archived_at = ?
			WHERE status = 'ended' AND archived_at IS NULL AND created_at <= ? RETURNING seq`,
			micros(p.Now), micros(p.CreatedBefore))
		if err != nil {
			return err
		}
		for _, seq := range seqs {
			if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO purges (batch_seq) VALUES (?)`, seq); err != nil {
				return err
			}
		}
		n = len(seqs)
		return pruneEvents(ctx, tx, p.CreatedBefore)
	})
	if err != nil {
		return 0, fmt.Errorf("archive batches: %w", err)
	}
	return n, nil
}

// BatchNextExpiry implements store.Store.
func (s *Store) BatchNextExpiry(ctx context.Context) (time.Time, error) {
	var v sql.NullInt64
	if err := s.r.QueryRowContext(ctx, `SELECT min(expires_at) FROM batches WHERE status IN ('in_progress', 'canceling')`).Scan(&v); err != nil {
		return time.Time{}, fmt.Errorf("next expiry: %w", err)
	}
	if !v.Valid {
		return time.Time{}, nil
	}
	return fromMicros(v.Int64), nil
}
