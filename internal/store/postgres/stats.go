package postgres

import (
	"context"

	"github.com/batchd/batchd/internal/store"
)

// The SQL of Stats: the same counts as SQLite's.
const (
	qStatsBatches = `SELECT status, count(*) FROM batches GROUP BY status`
	qStatsQueues  = `SELECT t.backend, count(*), min(b.created_at) FROM batches b JOIN tasks t ON t.batch_seq = b.seq
		WHERE b.status = 'in_progress' AND t.state = 0 GROUP BY t.backend ORDER BY t.backend`
)

// Stats implements store.Store.
func (s *Store) Stats(ctx context.Context) (*store.Stats, error) {
	var st *store.Stats
	err := s.read(ctx, "read stats", func(q querier) error {
		st = &store.Stats{BatchesByStatus: map[string]int64{}}
		rows, err := q.Query(ctx, qStatsBatches)
		if err != nil {
			return err
		}
		for rows.Next() {
			var status string
			var n int64
			if err := rows.Scan(&status, &n); err != nil {
				rows.Close()
				return err
			}
			st.BatchesByStatus[status] = n
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = q.Query(ctx, qStatsQueues)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var bq store.BackendQueue
			var oldest int64
			if err := rows.Scan(&bq.Backend, &bq.Pending, &oldest); err != nil {
				return err
			}
			bq.Oldest = fromMicros(oldest)
			st.Queues = append(st.Queues, bq)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}
