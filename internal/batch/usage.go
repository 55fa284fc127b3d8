package batch

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/batchd/batchd/internal/cost"
	"github.com/batchd/batchd/internal/store"
)

// Usage is a batch's usage and cost: token totals of its succeeded
// requests by model, priced at the batch rate beside the standard rate.
// It reads a few rows whatever the batch's size, and moves while the
// batch runs.
func (s *Service) Usage(ctx context.Context, workspace, id string) (cost.Report, error) {
	byModel, err := s.store.BatchUsage(ctx, store.BatchGetParams{Workspace: workspace, ID: id})
	if err != nil {
		return cost.Report{}, mapStore(err, id)
	}
	return s.prices().Price(byModel), nil
}

// UsageQuery asks for a workspace's usage on the UTC days From to To
// (both included; zero is unbounded), grouped by GroupBy ("model", "day"
// or "batch"; "" is "model").
type UsageQuery struct {
	From, To time.Time
	GroupBy  string
}

// UsageGroup is one group of a usage report.
type UsageGroup struct {
	Group string `json:"group"`
	cost.Report
}

// UsageReport is a workspace's usage by group, with the total.
type UsageReport struct {
	GroupBy string       `json:"group_by"`
	Groups  []UsageGroup `json:"data"`
	Total   cost.Report  `json:"total"`
}

// UsageList reports a workspace's usage, deleted batches included.
func (s *Service) UsageList(ctx context.Context, workspace string, q UsageQuery) (*UsageReport, error) {
	if q.GroupBy == "" {
		q.GroupBy = store.UsageByModel
	}
	if _, err := store.UsageGroupColumn(q.GroupBy); err != nil {
		return nil, &Error{Kind: KindInvalid, Message: fmt.Sprintf("group_by: want model, day or batch, got %q", q.GroupBy)}
	}
	if !q.From.IsZero() && !q.To.IsZero() && q.To.Before(q.From) {
		return nil, &Error{Kind: KindInvalid, Message: "to: must not be before from"}
	}
	rows, err := s.store.UsageList(ctx, store.UsageListParams{Workspace: workspace, From: q.From, To: q.To, GroupBy: q.GroupBy})
	if err != nil {
		return nil, fmt.Errorf("list usage: %w", err)
	}
	prices := s.prices()
	rep := &UsageReport{GroupBy: q.GroupBy, Groups: []UsageGroup{}}
	all := map[string]cost.Tokens{}
	for i := 0; i < len(rows); {
		j := i
		byModel := map[string]cost.Tokens{}
		for ; j < len(rows) && rows[j].Group == rows[i].Group; j++ {
			byModel[rows[j].Model] = byModel[rows[j].Model].Add(rows[j].Tokens)
			all[rows[j].Model] = all[rows[j].Model].Add(rows[j].Tokens)
		}
		rep.Groups = append(rep.Groups, UsageGroup{Group: rows[i].Group, Report: prices.Price(byModel)})
		i = j
	}
	rep.Total = prices.Price(all)
	return rep, nil
}

// prices is the configured price table, or the shipped one.
func (s *Service) prices() *cost.Table {
	if s.cfg.Prices != nil {
		return s.cfg.Prices
	}
	return cost.Default()
}

// ParseUsageDay reads a usage bound: a date (2026-12-01), an RFC 3339
// time, or a duration back from now ("7d", "36h"); field names it in the
// error.
func ParseUsageDay(field, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if d, ok := strings.CutSuffix(v, "d"); ok {
		var n int
		if _, err := fmt.Sscanf(d, "%d", &n); err == nil && n >= 0 && fmt.Sprint(n) == d {
			return now.AddDate(0, 0, -n), nil
		}
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, &Error{Kind: KindInvalid, Message: fmt.Sprintf("%s: want a date (2006-01-02), an RFC 3339 time or a duration back from now (7d, 36h), got %q", field, v)}
}
