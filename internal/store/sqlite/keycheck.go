package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// The SQL of the webhook key check.
const (
	qKeyCheckGet    = `SELECT sealed FROM webhook_key_check WHERE id = 1`
	qKeyCheckInsert = `INSERT INTO webhook_key_check (id, sealed) VALUES (1, ?) ON CONFLICT (id) DO NOTHING`
	qKeyCheckSample = `SELECT secret FROM webhook_endpoints ORDER BY created_at, id LIMIT 1`
)

// WebhookKeyCheck implements store.Store. It writes only the first time,
// so a server on a full disk still starts once the check value is stored.
func (s *Store) WebhookKeyCheck(ctx context.Context, check string) ([]string, error) {
	var stored string
	err := s.r.QueryRowContext(ctx, qKeyCheckGet).Scan(&stored)
	if errors.Is(err, sql.ErrNoRows) {
		err = s.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, qKeyCheckInsert, check); err != nil {
				return err
			}
			return tx.QueryRowContext(ctx, qKeyCheckGet).Scan(&stored)
		})
	}
	if err != nil {
		return nil, fmt.Errorf("check webhook key: %w", err)
	}
	out := []string{stored}
	var secret string
	switch err := s.r.QueryRowContext(ctx, qKeyCheckSample).Scan(&secret); {
	case err == nil:
		out = append(out, secret)
	case !errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("check webhook key: %w", err)
	}
	return out, nil
}
