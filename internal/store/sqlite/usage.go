package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/batchd/batchd/internal/cost"
	"github.com/batchd/batchd/internal/store"
)

// The SQL of usage (see store.UsageDelta). A settle adds to one row per
// batch and model; reading a batch's usage reads its few rows by key.
const (
	qUsageAdd = `INSERT INTO batch_usage (batch_seq, workspace, batch_id, model, day,
			input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens)
		SELECT seq, workspace, id, ?, ?, ?, ?, ?, ?, ? FROM batches WHERE seq = ?
		ON CONFLICT (batch_seq, model, day) DO UPDATE SET
			input_tokens = input_tokens + excluded.input_tokens,
			output_tokens = output_tokens + excluded.output_tokens,
			cache_write_5m_tokens = cache_write_5m_tokens + excluded.cache_write_5m_tokens,
			cache_write_1h_tokens = cache_write_1h_tokens + excluded.cache_write_1h_tokens,
			cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens`
	qUsageBatchSeq = `SELECT seq FROM batches WHERE id = ? AND workspace = ? AND status != 'creating'`
	qUsageSums     = `sum(input_tokens), sum(output_tokens), sum(cache_write_5m_tokens), sum(cache_write_1h_tokens), sum(cache_read_tokens)`
	qUsageBatch    = `SELECT model, ` + qUsageSums + ` FROM batch_usage WHERE batch_seq = ? GROUP BY model ORDER BY model`
)

// qUsageList groups a workspace's usage between two days by expr.
func qUsageList(expr string) string {
	return `SELECT ` + expr + `, model, ` + qUsageSums + ` FROM batch_usage
		WHERE workspace = ? AND day >= ? AND day <= ? GROUP BY 1, model ORDER BY 1, model`
}

// addUsage adds the usage of settled outcomes in the settle's tx.
func (s *Store) addUsage(ctx context.Context, tx *sql.Tx, deltas []store.UsageDelta) error {
	for _, d := range deltas {
		t := d.Tokens
		if _, err := s.stmt(ctx, tx, qUsageAdd).ExecContext(ctx, d.Model, micros(d.Day),
			t.Input, t.Output, t.CacheWrite5m, t.CacheWrite1h, t.CacheRead, d.BatchSeq); err != nil {
			return fmt.Errorf("add usage: %w", err)
		}
	}
	return nil
}

// BatchUsage implements store.Store.
func (s *Store) BatchUsage(ctx context.Context, p store.BatchGetParams) (map[string]cost.Tokens, error) {
	var seq int64
	err := s.r.QueryRowContext(ctx, qUsageBatchSeq, p.ID, p.Workspace).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("batch usage: %w", store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("batch usage: %w", err)
	}
	rows, err := s.r.QueryContext(ctx, qUsageBatch, seq)
	if err != nil {
		return nil, fmt.Errorf("batch usage: %w", err)
	}
	defer rows.Close()
	out := map[string]cost.Tokens{}
	for rows.Next() {
		var model string
		var t cost.Tokens
		if err := rows.Scan(&model, &t.Input, &t.Output, &t.CacheWrite5m, &t.CacheWrite1h, &t.CacheRead); err != nil {
			return nil, fmt.Errorf("batch usage: %w", err)
		}
		out[model] = t
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("batch usage: %w", err)
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
	rows, err := s.r.QueryContext(ctx, qUsageList(expr), p.Workspace, from, to)
	if err != nil {
		return nil, fmt.Errorf("list usage: %w", err)
	}
	defer rows.Close()
	var out []store.UsageRow
	for rows.Next() {
		var group any
		var r store.UsageRow
		if err := rows.Scan(&group, &r.Model, &r.Tokens.Input, &r.Tokens.Output, &r.Tokens.CacheWrite5m, &r.Tokens.CacheWrite1h, &r.Tokens.CacheRead); err != nil {
			return nil, fmt.Errorf("list usage: %w", err)
		}
		r.Group = store.UsageGroupName(p.GroupBy, group)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list usage: %w", err)
	}
	return out, nil
}
