package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/cost"
	"github.com/batchd/batchd/internal/store"
)

// The SQL of usage (see store.UsageDelta): a settle adds to its rows in
// the statement that writes the results (qComplete, requests.go); a
// batch's usage is read from its few rows by key.
const (
	qUsageBatchSeq = `SELECT seq FROM batches WHERE id = $1 AND workspace = $2 AND status != 'creating'`
	qUsageSums     = `sum(input_tokens)::bigint, sum(output_tokens)::bigint, sum(cache_write_5m_tokens)::bigint,
		sum(cache_write_1h_tokens)::bigint, sum(cache_read_tokens)::bigint`
	qUsageBatch = `SELECT model, ` + qUsageSums + ` FROM batch_usage WHERE batch_seq = $1 GROUP BY model ORDER BY model`
)

// qUsageList groups a workspace's usage between two days by expr.
func qUsageList(expr string) string {
	return `SELECT ` + expr + `, model, ` + qUsageSums + ` FROM batch_usage
		WHERE workspace = $1 AND day >= $2 AND day <= $3 GROUP BY 1, model ORDER BY 1, model`
}

// BatchUsage implements store.Store.
func (s *Store) BatchUsage(ctx context.Context, p store.BatchGetParams) (map[string]cost.Tokens, error) {
	var out map[string]cost.Tokens
	err := s.read(ctx, "batch usage", func(q querier) error {
		var seq int64
		if err := q.QueryRow(ctx, qUsageBatchSeq, p.ID, p.Workspace).Scan(&seq); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return store.ErrNotFound
			}
			return err
		}
		rows, err := q.Query(ctx, qUsageBatch, seq)
		if err != nil {
			return err
		}
		defer rows.Close()
		out = map[string]cost.Tokens{}
		for rows.Next() {
			var model string
			var t cost.Tokens
			if err := rows.Scan(&model, &t.Input, &t.Output, &t.CacheWrite5m, &t.CacheWrite1h, &t.CacheRead); err != nil {
				return err
			}
			out[model] = t
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UsageList implements store.Store.
func (s *Store) UsageList(ctx context.Context, p store.UsageListParams) ([]store.UsageRow, error) {
	expr, err := store.UsageGroupColumn(p.GroupBy)
	if err != nil {
		return nil, fmt.Errorf("list usage: %w", err)
	}
	from, to := p.DayRange()
	var out []store.UsageRow
	err = s.read(ctx, "list usage", func(q querier) error {
		out = nil
		rows, err := q.Query(ctx, qUsageList(expr), p.Workspace, from, to)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var group any
			var r store.UsageRow
			if err := rows.Scan(&group, &r.Model, &r.Tokens.Input, &r.Tokens.Output, &r.Tokens.CacheWrite5m, &r.Tokens.CacheWrite1h, &r.Tokens.CacheRead); err != nil {
				return err
			}
			r.Group = store.UsageGroupName(p.GroupBy, group)
			out = append(out, r)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
