package sqlite

import (
	"context"
	"fmt"

	"github.com/batchd/batchd/internal/store"
)

// The SQL of Stats. Waiting requests are counted through tasks_pending,
// by batch first, so only batches in progress are looked at.
const (
	qStatsBatches = `SELECT status, count(*) FROM batches GROUP BY status`
	qStatsQueues  = `SELECT t.backend, count(*), min(b.created_at) FROM batches b JOIN tasks t ON t.batch_seq = b.seq
		WHERE b.status = 'in_progress' AND t.state = 0 GROUP BY t.backend ORDER BY t.backend`
)

// Stats implements store.Store.
func (s *Store) Stats(ctx context.Context) (*store.Stats, error) {
	st := &store.Stats{BatchesByStatus: map[string]int64{}}
	rows, err := s.r.QueryContext(ctx, qStatsBatches)
	if err != nil {
		return nil, fmt.Errorf("count batches: %w", err)
	}
	for rows.Next() {
		var status string
		var n int64
		if err := rows.Scan(&status, &n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("count batches: %w", err)
		}
		st.BatchesByStatus[status] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count batches: %w", err)
	}
	rows, err = s.r.QueryContext(ctx, qStatsQueues)
	if err != nil {
		return nil, fmt.Errorf("count queues: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var q store.BackendQueue
		var oldest int64
		if err := rows.Scan(&q.Backend, &q.Pending, &oldest); err != nil {
			return nil, fmt.Errorf("count queues: %w", err)
		}
		q.Oldest = fromMicros(oldest)
		st.Queues = append(st.Queues, q)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count queues: %w", err)
	}
	return st, nil
}
