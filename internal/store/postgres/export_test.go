package postgres

import (
	"context"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// BackendPIDs lists the server pids of the pool's idle connections, for
// tests that kill them.
func (s *Store) BackendPIDs(ctx context.Context) ([]uint32, error) {
	var pids []uint32
	for _, c := range s.pool.AcquireAllIdle(ctx) {
		pids = append(pids, c.Conn().PgConn().PID())
		c.Release()
	}
	return pids, nil
}

// RecordEventRolledBack records an event of type typ about b in a
// transaction that then rolls back, for tests that check nothing of it
// escapes (its notification in particular).
func (s *Store) RecordEventRolledBack(ctx context.Context, b *store.Batch, typ string) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	return recordEvent(ctx, tx, b, typ, time.Now())
}

// Exec runs one statement on the pool, for tests.
func (s *Store) Exec(ctx context.Context, sql string, args ...any) (int64, error) {
	tag, err := s.pool.Exec(ctx, sql, args...)
	return tag.RowsAffected(), err
}

// ClaimHeld claims as RequestsClaim does in a transaction it leaves open
// (its locks held) until release is called, which rolls it back: a
// claimer caught in the middle of its claim.
func (s *Store) ClaimHeld(ctx context.Context, p store.RequestsClaimParams) (claimed []store.ClaimedRequest, release func(), err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, nil, err
	}
	claimed, err = claimTx(ctx, tx, p)
	if err != nil {
		tx.Rollback(ctx)
		return nil, nil, err
	}
	return claimed, func() { tx.Rollback(ctx) }, nil
}

// Setting reads a server setting as the pool's connections see it.
func (s *Store) Setting(ctx context.Context, name string) (string, error) {
	var v string
	err := s.pool.QueryRow(ctx, `SELECT current_setting($1)`, name).Scan(&v)
	return v, err
}
