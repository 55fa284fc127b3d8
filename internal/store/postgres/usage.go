package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/cost"
	"github.com/batchd/batchd/internal/store"
)

// The SQL of usage (see store.UsageDelta): a settle adds to its rows in one
// statement; a batch's usage is read from its few rows by key.
const (
	qUsageAdd = `INSERT INTO batch_usage (batch_seq, workspace, batch_id, model, day,
			input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens)
		SELECT b.seq, b.workspace, b.id, d.model, $2, d.i, d.o, d.w5, d.w1, d.r
		FROM unnest($1::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[])
			AS d(seq, model, i, o, w5, w1, r)
		JOIN batches b ON b.seq = d.seq
		ORDER BY d.seq, d.model
		ON CONFLICT (batch_seq, model, day) DO UPDATE SET
			input_tokens = batch_usage.input_tokens + excluded.input_tokens,
			output_tokens = batch_usage.output_tokens + excluded.output_tokens,
			cache_write_5m_tokens = batch_usage.cache_write_5m_tokens + excluded.cache_write_5m_tokens,
			cache_write_1h_tokens = batch_usage.cache_write_1h_tokens + excluded.cache_write_1h_tokens,
			cache_read_tokens = batch_usage.cache_read_tokens + excluded.cache_read_tokens`
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

// addUsage adds the usage of settled outcomes in the settle's tx. All
// deltas of one settle fall on one day.
func addUsage(ctx context.Context, tx pgx.Tx, deltas []store.UsageDelta) error {
	if len(deltas) == 0 {
		return nil
	}
	n := len(deltas)
	seqs, models := make([]int64, n), make([]string, n)
	in, out, w5, w1, rd := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	for i, d := range deltas {
		seqs[i], models[i] = d.BatchSeq, d.Model
		in[i], out[i], w5[i], w1[i], rd[i] = d.Tokens.Input, d.Tokens.Output, d.Tokens.CacheWrite5m, d.Tokens.CacheWrite1h, d.Tokens.CacheRead
	}
	if _, err := tx.Exec(ctx, qUsageAdd, seqs, micros(deltas[0].Day), models, in, out, w5, w1, rd); err != nil {
		return fmt.Errorf("add usage: %w", err)
	}
	return nil
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
