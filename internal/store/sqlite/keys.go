package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// IdempotencyReserve implements store.Store.
func (s *Store) IdempotencyReserve(ctx context.Context, p store.IdempotencyReserveParams) (*store.Idempotency, error) {
	var held *store.Idempotency
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM idempotency_keys WHERE created_at < ?`, micros(p.Now.Add(-p.TTL))); err != nil {
			return err
		}
		var hash string
		var batchID sql.NullString
		var created int64
		err := tx.QueryRowContext(ctx, `SELECT body_hash, batch_id, created_at FROM idempotency_keys WHERE workspace = ? AND key = ?`,
			p.Workspace, p.Key).Scan(&hash, &batchID, &created)
		switch {
		case err == nil && (batchID.Valid || created >= micros(p.Now.Add(-p.StaleAfter))):
			held = &store.Idempotency{BodyHash: hash, BatchID: batchID.String, CreatedAt: fromMicros(created)}
			return nil
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO idempotency_keys (workspace, key, created_at) VALUES (?, ?, ?)
			ON CONFLICT (workspace, key) DO UPDATE SET body_hash = '', batch_id = NULL, created_at = excluded.created_at`,
			p.Workspace, p.Key, micros(p.Now))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reserve idempotency key: %w", err)
	}
	return held, nil
}

// IdempotencyRecord implements store.Store.
func (s *Store) IdempotencyRecord(ctx context.Context, p store.IdempotencyRecordParams) error {
	n, err := s.execAffected(ctx, "record idempotency key", `UPDATE idempotency_keys SET body_hash = ?, batch_id = ?
		WHERE workspace = ? AND key = ? AND batch_id IS NULL`, p.BodyHash, p.BatchID, p.Workspace, p.Key)
	if err == nil && n == 0 {
		err = fmt.Errorf("record idempotency key: %w", store.ErrConflict)
	}
	return err
}

// IdempotencyRelease implements store.Store.
func (s *Store) IdempotencyRelease(ctx context.Context, workspace, key string) error {
	_, err := s.execAffected(ctx, "release idempotency key", `DELETE FROM idempotency_keys WHERE workspace = ? AND key = ? AND batch_id IS NULL`, workspace, key)
	return err
}

// KeyCreate implements store.Store.
func (s *Store) KeyCreate(ctx context.Context, p store.KeyCreateParams) (*store.Key, error) {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO api_keys (id, workspace, hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)`,
			p.ID, p.Workspace, p.Hash, p.Prefix, micros(p.CreatedAt))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	return &store.Key{ID: p.ID, Workspace: p.Workspace, Prefix: p.Prefix, CreatedAt: p.CreatedAt.UTC()}, nil
}

// KeyList implements store.Store.
func (s *Store) KeyList(ctx context.Context) ([]*store.Key, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT id, workspace, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	defer rows.Close()
	var out []*store.Key
	for rows.Next() {
		var k store.Key
		var created int64
		var revoked sql.NullInt64
		if err := rows.Scan(&k.ID, &k.Workspace, &k.Prefix, &created, &revoked); err != nil {
			return nil, fmt.Errorf("list keys: %w", err)
		}
		k.CreatedAt, k.RevokedAt = fromMicros(created), fromNullMicros(revoked)
		out = append(out, &k)
	}
	return out, rows.Err()
}

// KeyRevoke implements store.Store.
func (s *Store) KeyRevoke(ctx context.Context, idOrPrefix string, now time.Time) (*store.Key, error) {
	var k store.Key
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var created int64
		var revoked sql.NullInt64
		err := tx.QueryRowContext(ctx, `UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? OR prefix = ?
			RETURNING id, workspace, prefix, created_at, revoked_at`, micros(now), idOrPrefix, idOrPrefix).
			Scan(&k.ID, &k.Workspace, &k.Prefix, &created, &revoked)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		k.CreatedAt, k.RevokedAt = fromMicros(created), fromNullMicros(revoked)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("revoke key: %w", err)
	}
	return &k, nil
}

// KeyLookup implements store.Store.
func (s *Store) KeyLookup(ctx context.Context, hash string) (string, error) {
	var ws string
	err := s.r.QueryRowContext(ctx, `SELECT workspace FROM api_keys WHERE hash = ? AND revoked_at IS NULL`, hash).Scan(&ws)
	if errors.Is(err, sql.ErrNoRows) {
		return "", store.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("look up key: %w", err)
	}
	return ws, nil
}

// KeysActive implements store.Store.
func (s *Store) KeysActive(ctx context.Context) (bool, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)`).Scan(&n); err != nil {
		return false, fmt.Errorf("check keys: %w", err)
	}
	return n > 0, nil
}
