package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/store"
)

// The SQL of API keys and Idempotency-Keys.
const (
	qKeyCreate = `INSERT INTO api_keys (id, workspace, hash, prefix, created_at) VALUES ($1, $2, $3, $4, $5)`
	qKeyList   = `SELECT id, workspace, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at, id`
	qKeyRevoke = `UPDATE api_keys SET revoked_at = coalesce(revoked_at, $1) WHERE id = $2 OR prefix = $2
		RETURNING id, workspace, prefix, created_at, revoked_at`
	qKeyLookup  = `SELECT workspace FROM api_keys WHERE hash = $1 AND revoked_at IS NULL`
	qKeysActive = `SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)`

	// A key is reserved under a lock on (workspace, key), so two requests
	// with a new key never both reserve it.
	qIdemLock    = `SELECT pg_advisory_xact_lock(hashtext('batchd.idempotency'), hashtext(length($1) || ':' || $1 || $2))`
	qIdemExpire  = `DELETE FROM idempotency_keys WHERE created_at < $1`
	qIdemGet     = `SELECT body_hash, batch_id, created_at FROM idempotency_keys WHERE workspace = $1 AND key = $2`
	qIdemReserve = `INSERT INTO idempotency_keys (workspace, key, created_at) VALUES ($1, $2, $3)
		ON CONFLICT (workspace, key) DO UPDATE SET body_hash = '', batch_id = NULL, created_at = excluded.created_at`
	qIdemRecord = `UPDATE idempotency_keys SET body_hash = $1, batch_id = $2
		WHERE workspace = $3 AND key = $4 AND batch_id IS NULL`
	qIdemRelease = `DELETE FROM idempotency_keys WHERE workspace = $1 AND key = $2 AND batch_id IS NULL`
)

// KeyCreate implements store.Store.
func (s *Store) KeyCreate(ctx context.Context, p store.KeyCreateParams) (*store.Key, error) {
	if _, err := s.execAffected(ctx, "create key", qKeyCreate, p.ID, p.Workspace, p.Hash, p.Prefix, micros(p.CreatedAt)); err != nil {
		return nil, err
	}
	return &store.Key{ID: p.ID, Workspace: p.Workspace, Prefix: p.Prefix, CreatedAt: p.CreatedAt.UTC()}, nil
}

func scanKey(row scanner) (*store.Key, error) {
	var k store.Key
	var created int64
	var revoked *int64
	if err := row.Scan(&k.ID, &k.Workspace, &k.Prefix, &created, &revoked); err != nil {
		return nil, err
	}
	k.CreatedAt, k.RevokedAt = fromMicros(created), fromNullMicros(revoked)
	return &k, nil
}

// KeyList implements store.Store.
func (s *Store) KeyList(ctx context.Context) ([]*store.Key, error) {
	var out []*store.Key
	err := s.read(ctx, "list keys", func(q querier) error {
		rows, err := q.Query(ctx, qKeyList)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*store.Key, error) { return scanKey(r) })
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// KeyRevoke implements store.Store.
func (s *Store) KeyRevoke(ctx context.Context, idOrPrefix string, now time.Time) (*store.Key, error) {
	var k *store.Key
	err := s.tx(ctx, "revoke key", func(tx pgx.Tx) error {
		var err error
		k, err = scanKey(tx.QueryRow(ctx, qKeyRevoke, micros(now), idOrPrefix))
		return err
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// KeyLookup implements store.Store.
func (s *Store) KeyLookup(ctx context.Context, hash string) (string, error) {
	var ws string
	err := s.read(ctx, "look up key", func(q querier) error { return q.QueryRow(ctx, qKeyLookup, hash).Scan(&ws) })
	return ws, err
}

// KeysActive implements store.Store.
func (s *Store) KeysActive(ctx context.Context) (bool, error) {
	var active bool
	err := s.read(ctx, "check keys", func(q querier) error { return q.QueryRow(ctx, qKeysActive).Scan(&active) })
	return active, err
}

// IdempotencyReserve implements store.Store.
func (s *Store) IdempotencyReserve(ctx context.Context, p store.IdempotencyReserveParams) (*store.Idempotency, error) {
	var held *store.Idempotency
	err := s.tx(ctx, "reserve idempotency key", func(tx pgx.Tx) error {
		held = nil
		if _, err := tx.Exec(ctx, qIdemLock, p.Workspace, p.Key); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, qIdemExpire, micros(p.Now.Add(-p.TTL))); err != nil {
			return err
		}
		var hash string
		var batchID *string
		var created int64
		err := tx.QueryRow(ctx, qIdemGet, p.Workspace, p.Key).Scan(&hash, &batchID, &created)
		switch {
		case err == nil && (batchID != nil || created >= micros(p.Now.Add(-p.StaleAfter))):
			held = &store.Idempotency{BodyHash: hash, CreatedAt: fromMicros(created)}
			if batchID != nil {
				held.BatchID = *batchID
			}
			return nil
		case err != nil && !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		_, err = tx.Exec(ctx, qIdemReserve, p.Workspace, p.Key, micros(p.Now))
		return err
	})
	if err != nil {
		return nil, err
	}
	return held, nil
}

// IdempotencyRecord implements store.Store.
func (s *Store) IdempotencyRecord(ctx context.Context, p store.IdempotencyRecordParams) error {
	n, err := s.execAffected(ctx, "record idempotency key", qIdemRecord, p.BodyHash, p.BatchID, p.Workspace, p.Key)
	if err == nil && n == 0 {
		err = fmt.Errorf("record idempotency key: %w", store.ErrConflict)
	}
	return err
}

// IdempotencyRelease implements store.Store.
func (s *Store) IdempotencyRelease(ctx context.Context, workspace, key string) error {
	_, err := s.execAffected(ctx, "release idempotency key", qIdemRelease, workspace, key)
	return err
}
