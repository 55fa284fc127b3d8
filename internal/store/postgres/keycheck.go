package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// The SQL of the webhook key check.
const (
	qKeyCheckInsert = `INSERT INTO webhook_key_check (id, sealed) VALUES (1, $1) ON CONFLICT (id) DO NOTHING`
	qKeyCheckGet    = `SELECT sealed FROM webhook_key_check WHERE id = 1`
	qKeyCheckSample = `SELECT secret FROM webhook_endpoints ORDER BY created_at, id LIMIT 1`
)

// WebhookKeyCheck implements store.Store. Of processes starting together
// with different keys, the first insert wins and the others are refused.
func (s *Store) WebhookKeyCheck(ctx context.Context, check string) ([]string, error) {
	var out []string
	err := s.tx(ctx, "check webhook key", func(tx pgx.Tx) error {
		out = nil
		if _, err := tx.Exec(ctx, qKeyCheckInsert, check); err != nil {
			return err
		}
		var stored, secret string
		if err := tx.QueryRow(ctx, qKeyCheckGet).Scan(&stored); err != nil {
			return err
		}
		out = append(out, stored)
		switch err := tx.QueryRow(ctx, qKeyCheckSample).Scan(&secret); {
		case err == nil:
			out = append(out, secret)
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		return nil
	})
	return out, err
}
