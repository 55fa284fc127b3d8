package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// LeaderAcquire implements store.Store. It writes even while the disk is
// full: the leader runs the chores that free space.
func (s *Store) LeaderAcquire(ctx context.Context, p store.LeaderAcquireParams) (*store.Leader, error) {
	l := &store.Leader{Name: p.Name}
	err := s.write(ctx, func(tx *sql.Tx) error {
		// Insert the first lease, renew the holder's live one (same term),
		// or take a lapsed one with the next term; another owner's live
		// lease stays as it is.
		if _, err := tx.ExecContext(ctx, `INSERT INTO leaders (name, owner, term, expires) VALUES (?, ?, 1, ?)
			ON CONFLICT (name) DO UPDATE SET
				term = CASE WHEN owner = excluded.owner AND expires > ? THEN term ELSE term + 1 END,
				owner = excluded.owner, expires = excluded.expires
			WHERE (owner = excluded.owner AND expires > ?) OR expires <= ?`,
			p.Name, p.Owner, micros(p.Until), micros(p.Now), micros(p.Now), micros(p.Now)); err != nil {
			return err
		}
		var expires int64
		if err := tx.QueryRowContext(ctx, `SELECT owner, term, expires FROM leaders WHERE name = ?`, p.Name).Scan(&l.Owner, &l.Term, &expires); err != nil {
			return err
		}
		l.Expires = fromMicros(expires)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("acquire leader lease: %w", err)
	}
	return l, nil
}

// LeaderRelease implements store.Store.
func (s *Store) LeaderRelease(ctx context.Context, l store.Lead) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE leaders SET expires = 0 WHERE name = ? AND owner = ? AND term = ?`, l.Name, l.Owner, l.Term)
		return err
	})
	if err != nil {
		return fmt.Errorf("release leader lease: %w", err)
	}
	return nil
}

// checkLead fails with store.ErrNotLeader unless l still holds its lease
// at now. The write transaction is the only writer, so the lease cannot
// change hands before it commits.
func checkLead(ctx context.Context, tx *sql.Tx, l store.Lead, now time.Time) error {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM leaders WHERE name = ? AND owner = ? AND term = ? AND expires > ?`,
		l.Name, l.Owner, l.Term, micros(now)).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%s in term %d: %w", l.Owner, l.Term, store.ErrNotLeader)
	}
	return nil
}
