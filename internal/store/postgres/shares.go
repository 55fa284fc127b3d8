package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/store"
)

// The SQL of limit shares. A renewal reads the others' live holdings and
// writes its own under one advisory lock, so that two processes raising
// their shares at once each see what the other took.
const (
	qSharesLock  = `SELECT pg_advisory_xact_lock(hashtext('batchd.limit_shares'), hashtext(current_schema()))`
	qSharesPurge = `DELETE FROM limit_shares WHERE expires <= $1`
	qSharesLive  = `SELECT backend, owner, concurrency, requests_pm, input_tokens_pm, output_tokens_pm
		FROM limit_shares WHERE expires > $1 AND owner <> $2`
	qSharesUpsert = `INSERT INTO limit_shares (backend, owner, concurrency, requests_pm, input_tokens_pm, output_tokens_pm, expires)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (backend, owner) DO UPDATE SET concurrency = excluded.concurrency, requests_pm = excluded.requests_pm,
			input_tokens_pm = excluded.input_tokens_pm, output_tokens_pm = excluded.output_tokens_pm, expires = excluded.expires`
	qSharesRelease = `DELETE FROM limit_shares WHERE owner = $1`
)

// LimitSharesRenew implements store.Store.
func (s *Store) LimitSharesRenew(ctx context.Context, p store.LimitSharesRenewParams) ([]store.Amounts, error) {
	var grants []store.Amounts
	err := s.tx(ctx, "renew limit shares", func(tx pgx.Tx) error {
		grants = make([]store.Amounts, 0, len(p.Claims))
		if _, err := tx.Exec(ctx, qSharesLock); err != nil {
			return err
		}
		now := micros(p.Now)
		if _, err := tx.Exec(ctx, qSharesPurge, now); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, qSharesLive, now, p.Owner)
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
			if _, err := tx.Exec(ctx, qSharesUpsert, g.Backend, p.Owner, h.Concurrency, h.RequestsPerMinute,
				h.InputTokensPerMinute, h.OutputTokensPerMinute, micros(p.Until)); err != nil {
				return err
			}
			grants = append(grants, g.Grant)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return grants, nil
}

// LimitSharesRelease implements store.Store.
func (s *Store) LimitSharesRelease(ctx context.Context, owner string) error {
	_, err := s.execAffected(ctx, "release limit shares", qSharesRelease, owner)
	return err
}
