package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/store"
)

// The SQL of leader leases: one row per name, taken in one statement.
const (
	// qLeaderAcquire inserts the first lease, renews the holder's live one
	// (same term), or takes a lapsed one with the next term; a live lease
	// of another owner stays as it is. It returns the row afterwards.
	qLeaderAcquire = `WITH up AS (
			INSERT INTO leaders AS l (name, owner, term, expires) VALUES ($1, $2, 1, $4)
			ON CONFLICT (name) DO UPDATE SET
				term = CASE WHEN l.owner = $2 AND l.expires > $3 THEN l.term ELSE l.term + 1 END,
				owner = $2, expires = $4
			WHERE (l.owner = $2 AND l.expires > $3) OR l.expires <= $3
			RETURNING owner, term, expires)
		SELECT owner, term, expires FROM up
		UNION ALL SELECT owner, term, expires FROM leaders WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM up)`
	qLeaderRelease = `UPDATE leaders SET expires = 0 WHERE name = $1 AND owner = $2 AND term = $3`
	// qLeaderCheck is the guard of every chore: FOR SHARE holds off a
	// takeover (an UPDATE of the row) until the chore's transaction ends.
	qLeaderCheck = `SELECT 1 FROM leaders WHERE name = $1 AND owner = $2 AND term = $3 AND expires > $4 FOR SHARE`
)

// LeaderAcquire implements store.Store.
func (s *Store) LeaderAcquire(ctx context.Context, p store.LeaderAcquireParams) (*store.Leader, error) {
	l := &store.Leader{Name: p.Name}
	err := s.tx(ctx, "acquire leader lease", func(tx pgx.Tx) error {
		var expires int64
		var err error
		// A contender that lost the race to insert the first row does not
		// see it in its statement's snapshot: the next statement does.
		for range 3 {
			err = tx.QueryRow(ctx, qLeaderAcquire, p.Name, p.Owner, micros(p.Now), micros(p.Until)).Scan(&l.Owner, &l.Term, &expires)
			if !errors.Is(err, pgx.ErrNoRows) {
				break
			}
		}
		l.Expires = fromMicros(expires)
		return err
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// LeaderRelease implements store.Store.
func (s *Store) LeaderRelease(ctx context.Context, l store.Lead) error {
	_, err := s.execAffected(ctx, "release leader lease", qLeaderRelease, l.Name, l.Owner, l.Term)
	return err
}

// checkLead fails with store.ErrNotLeader unless l still holds its lease
// at now, and keeps it held until tx ends.
func checkLead(ctx context.Context, tx pgx.Tx, l store.Lead, now int64) error {
	rows, err := tx.Query(ctx, qLeaderCheck, l.Name, l.Owner, l.Term, now)
	if err != nil {
		return err
	}
	held := rows.Next()
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if !held {
		return fmt.Errorf("%s in term %d: %w", l.Owner, l.Term, store.ErrNotLeader)
	}
	return nil
}
