package store

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/batchd/batchd/internal/cost"
)

// Usage is kept as token totals per batch, model and UTC day, added to in
// the transaction that settles the succeeded results they come from: a
// result is settled once, so its tokens can neither be lost nor counted
// twice, and reading a batch's usage reads a few rows whatever its size.
// The rows outlive the batch (a deleted batch's work was still paid for).

// UsageDelta is what one settle adds to one usage row.
type UsageDelta struct {
	BatchSeq int64
	Model    string
	// Day is the UTC midnight of the day the results settled.
	Day    time.Time
	Tokens cost.Tokens
}

// UsageDeltas sums the usage of the succeeded outcomes among settled by
// batch and model, on now's UTC day, in a stable order: the rows a driver
// adds to in the settle's transaction.
func UsageDeltas(settled []Outcome, now time.Time) []UsageDelta {
	type key struct {
		seq   int64
		model string
	}
	var out []UsageDelta
	at := map[key]int{}
	day := UsageDay(now)
	for _, o := range settled {
		if o.ResultType != ResultSucceeded {
			continue
		}
		model, t, ok := o.MessageUsage()
		if !ok {
			continue
		}
		k := key{o.BatchSeq, model}
		i, seen := at[k]
		if !seen {
			i = len(out)
			at[k] = i
			out = append(out, UsageDelta{BatchSeq: o.BatchSeq, Model: model, Day: day})
		}
		out[i].Tokens = out[i].Tokens.Add(t)
	}
	slices.SortFunc(out, func(a, b UsageDelta) int {
		return cmp.Or(cmp.Compare(a.BatchSeq, b.BatchSeq), cmp.Compare(a.Model, b.Model))
	})
	return out
}

// MessageUsage is what a succeeded outcome's message reports: the Usage
// the caller read already, else read from Result; ok is false for any
// other outcome or a message without a readable usage.
func (o Outcome) MessageUsage() (model string, t cost.Tokens, ok bool) {
	switch {
	case o.ResultType != ResultSucceeded:
		return "", cost.Tokens{}, false
	case o.Usage != nil:
		return o.Usage.Model, o.Usage.Tokens, true
	}
	return cost.FromResult(o.Result)
}

// UsageDay is the UTC day t falls on, as its midnight.
func UsageDay(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// Usage grouping for UsageList.
const (
	UsageByModel = "model"
	UsageByDay   = "day"
	UsageByBatch = "batch"
)

// UsageListParams reads a workspace's usage on the UTC days from From to
// To (both included; zero: unbounded), grouped by GroupBy.
type UsageListParams struct {
	Workspace string
	From, To  time.Time
	GroupBy   string
}

// UsageRow is one group's tokens of one model. Group is the model id, the
// day (YYYY-MM-DD) or the batch id, by the grouping asked for.
type UsageRow struct {
	Group  string
	Model  string
	Tokens cost.Tokens
}

// UsageGroupColumn is the usage column that groups by g (UsageByModel,
// UsageByDay or UsageByBatch).
func UsageGroupColumn(g string) (string, error) {
	switch g {
	case UsageByModel:
		return "model", nil
	case UsageByDay:
		return "day", nil
	case UsageByBatch:
		return "batch_id", nil
	}
	return "", fmt.Errorf("group usage by %q: want model, day or batch", g)
}

// DayRange is p's days as bounds on the usage day column (microseconds of
// each day's UTC midnight, both included); zero From or To is unbounded.
func (p UsageListParams) DayRange() (from, to int64) {
	from, to = 0, math.MaxInt64
	if !p.From.IsZero() {
		from = UsageDay(p.From).UnixMicro()
	}
	if !p.To.IsZero() {
		to = UsageDay(p.To).UnixMicro()
	}
	return from, to
}

// UsageGroupName is a group's name from its column's value: a day as
// YYYY-MM-DD, a model or a batch id as it is.
func UsageGroupName(g string, v any) string {
	switch v := v.(type) {
	case int64:
		if g == UsageByDay {
			return time.UnixMicro(v).UTC().Format(time.DateOnly)
		}
		return fmt.Sprint(v)
	case string:
		return v
	case []byte:
		return string(v)
	}
	return fmt.Sprint(v)
}
