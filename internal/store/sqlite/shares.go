package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/batchd/batchd/internal/store"
)

// The SQL of limit shares. The write transaction is the only writer, so a
// renewal's read of the others' holdings holds until it commits.
const (
	qSharesPurge = `DELETE FROM limit_shares WHERE expires <= ?`
	qSharesLive  = `SELECT backend, owner, concurrency, requests_pm, input_tokens_pm, output_tokens_pm
		FROM limit_shares WHERE expires > ? AND owner <> ?`
	qSharesUpsert = `INSERT INTO limit_shares (backend, owner, concurrency, requests_pm, input_tokens_pm, output_tokens_pm, expires)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (backend, owner) DO UPDATE SET concurrency = excluded.concurrency, requests_pm = excluded.requests_pm,
			input_tokens_pm = excluded.input_tokens_pm, output_tokens_pm = excluded.output_tokens_pm, expires = excluded.expires`
	qSharesRelease = `DELETE FROM limit_shares WHERE owner = ?`
)

// LimitSharesRenew implements store.Store. It writes even while the disk
// is full: without its share a process would send nothing, and the calls
// that finish are what the chores then free space for.
func (s *Store) LimitSharesRenew(ctx context.Context, p store.LimitSharesRenewParams) ([]store.Amounts, error) {
	var grants []store.Amounts
	err := s.write(ctx, func(tx *sql.Tx) error {
		grants = make([]store.Amounts, 0, len(p.Claims))
		now := micros(p.Now)
		if _, err := tx.ExecContext(ctx, qSharesPurge, now); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, qSharesLive, now, p.Owner)
		if err != nil {
			return err
		}
		live, err := store.ScanLimitShareHoldings(rows)
		rows.Close()
		if err != nil {
			return err
		}
		for _, g := range p.Grants(live) {
			h := g.Record
			if _, err := tx.ExecContext(ctx, qSharesUpsert, g.Backend, p.Owner, h.Concurrency, h.RequestsPerMinute,
				h.InputTokensPerMinute, h.OutputTokensPerMinute, micros(p.Until)); err != nil {
				return err
			}
			grants = append(grants, g.Grant)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("renew limit shares: %w", err)
	}
	return grants, nil
}

// LimitSharesRelease implements store.Store.
func (s *Store) LimitSharesRelease(ctx context.Context, owner string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, qSharesRelease, owner)
		return err
	})
	if err != nil {
		return fmt.Errorf("release limit shares: %w", err)
	}
	return nil
}
