package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/cost"
	"github.com/batchd/batchd/internal/store"
)

// withUsage is a succeeded outcome of c whose message ran on model with
// usage u (a JSON object).
func withUsage(c store.ClaimedRequest, model, u string) store.Outcome {
	o := succeed(c)
	o.Result = json.RawMessage(fmt.Sprintf(`{"type":"succeeded","message":{"id":"m","model":%q,"content":[],"usage":%s}}`, model, u))
	return o
}

// testUsage is the token totals kept per batch: added in the settle, once
// per result, only for succeeded ones, by model and day, kept after the
// batch is deleted, and isolated by workspace.
func testUsage(t *testing.T, newStore NewStore) {
	t.Parallel()
	run(t, "TotalsBySettle", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 5, t0)
		c := b.claim(t, "o", 5, t0)
		if len(c) != 5 {
			t.Fatalf("claimed %d", len(c))
		}
		errored := store.Outcome{RequestID: c[2].ID, BatchSeq: c[2].BatchSeq, CustomID: c[2].CustomID, Attempt: c[2].Attempt,
			ResultType: store.ResultErrored, Result: json.RawMessage(`{"type":"errored","error":{"type":"error","error":{"type":"api_error","message":"x"}}}`)}
		first := []store.Outcome{
			withUsage(c[0], "m1", `{"input_tokens":10,"output_tokens":20}`),
			withUsage(c[1], "m2", `{"input_tokens":1,"output_tokens":2,"cache_creation_input_tokens":30,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":20},"cache_read_input_tokens":4}`),
			errored,
		}
		b.complete(t, "o", t0, first...)
		// The same outcomes again (a stale completer): already settled, so
		// counted once.
		b.complete(t, "o", t0, first...)
		// Another owner's claim is not this one's to settle.
		b.complete(t, "other", t0, withUsage(c[3], "m1", `{"input_tokens":1000}`))
		next := t0.Add(23 * time.Hour) // the next UTC day
		b.complete(t, "o", next, withUsage(c[3], "m1", `{"input_tokens":100,"output_tokens":200}`), withUsage(c[4], "m1", `{"input_tokens":1,"output_tokens":1}`))

		got, err := b.st.BatchUsage(b.ctx, store.BatchGetParams{Workspace: "w", ID: bt.ID})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]cost.Tokens{
			"m1": {Input: 111, Output: 221},
			"m2": {Input: 1, Output: 2, CacheWrite5m: 10, CacheWrite1h: 20, CacheRead: 4},
		}
		if len(got) != len(want) || got["m1"] != want["m1"] || got["m2"] != want["m2"] {
			t.Errorf("batch usage %+v, want %+v", got, want)
		}
		if _, err := b.st.BatchUsage(b.ctx, store.BatchGetParams{Workspace: "other", ID: bt.ID}); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("another workspace's batch usage: %v", err)
		}

		days, err := b.st.UsageList(b.ctx, store.UsageListParams{Workspace: "w", GroupBy: store.UsageByDay})
		if err != nil {
			t.Fatal(err)
		}
		wantDays := []store.UsageRow{
			{Group: "2026-01-02", Model: "m1", Tokens: cost.Tokens{Input: 10, Output: 20}},
			{Group: "2026-01-02", Model: "m2", Tokens: want["m2"]},
			{Group: "2026-01-03", Model: "m1", Tokens: cost.Tokens{Input: 101, Output: 201}},
		}
		if fmt.Sprint(days) != fmt.Sprint(wantDays) {
			t.Errorf("by day %+v, want %+v", days, wantDays)
		}
		onlyFirst, err := b.st.UsageList(b.ctx, store.UsageListParams{Workspace: "w", GroupBy: store.UsageByModel, From: t0, To: t0})
		if err != nil {
			t.Fatal(err)
		}
		if len(onlyFirst) != 2 || onlyFirst[0].Group != "m1" || onlyFirst[0].Tokens.Input != 10 {
			t.Errorf("first day by model %+v", onlyFirst)
		}
		if rows, err := b.st.UsageList(b.ctx, store.UsageListParams{Workspace: "other", GroupBy: store.UsageByModel}); err != nil || len(rows) != 0 {
			t.Errorf("another workspace's usage %+v %v", rows, err)
		}
		if _, err := b.st.UsageList(b.ctx, store.UsageListParams{Workspace: "w", GroupBy: "hour"}); err == nil {
			t.Error("grouping by hour accepted")
		}

		// Deleting the batch keeps what its work cost.
		if err := b.st.BatchDelete(b.ctx, store.BatchGetParams{Workspace: "w", ID: bt.ID}); err != nil {
			t.Fatal(err)
		}
		byBatch, err := b.st.UsageList(b.ctx, store.UsageListParams{Workspace: "w", GroupBy: store.UsageByBatch})
		if err != nil {
			t.Fatal(err)
		}
		if len(byBatch) != 2 || byBatch[0].Group != bt.ID || byBatch[0].Tokens != want["m1"] {
			t.Errorf("by batch after delete %+v", byBatch)
		}
	})
}

// testBudget is the publish-time budget check: batches in progress hold
// their most possible cost until they end, other workspaces' do not
// count, and two publishes at once cannot both take the last of it.
func testBudget(t *testing.T, newStore NewStore) {
	t.Parallel()
	creating := func(t *testing.T, b *bundle, ws string) *store.Batch {
		t.Helper()
		bt, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{ID: fmt.Sprintf("msgbatch_budget_%d", seq.Add(1)), Workspace: ws, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.st.RequestsInsert(b.ctx, store.RequestsInsertParams{BatchSeq: bt.Seq, Requests: []store.NewRequest{{CustomID: "r", Params: json.RawMessage(`{}`)}}}); err != nil {
			t.Fatal(err)
		}
		return bt
	}
	publish := func(b *bundle, bt *store.Batch, spent, cost float64) error {
		_, err := b.st.BatchPublish(b.ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: 1, Budget: &store.Budget{LimitUSD: 10, SpentUSD: spent, CostUSD: cost}})
		return err
	}
	run(t, "HeldUntilTheyEnd", newStore, func(t *testing.T, b *bundle) {
		first := creating(t, b, "w")
		if err := publish(b, first, 1, 6); err != nil {
			t.Fatal(err)
		}
		if err := publish(b, creating(t, b, "other"), 0, 9); err != nil {
			t.Fatalf("another workspace's batch counted: %v", err)
		}
		over := creating(t, b, "w")
		err := publish(b, over, 1, 4) // 1 spent + 6 held + 4 > 10
		var be *store.BudgetError
		if !errors.As(err, &be) || be.ReservedUSD != 6 || be.CostUSD != 4 {
			t.Fatalf("over budget: %v", err)
		}
		// Refused, it is still being created: a cheaper one fits.
		if err := publish(b, over, 1, 3); err != nil { // exactly at the limit
			t.Fatalf("at the limit: %v", err)
		}
		// Once the first ends it holds nothing.
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: first.ID, Now: t0}); err != nil {
			t.Fatal(err)
		}
		if got := b.get(t, first); got.Status != store.StatusEnded {
			t.Fatalf("canceled batch is %s", got.Status)
		}
		if err := publish(b, creating(t, b, "w"), 1, 6); err != nil { // 1 + 3 held + 6
			t.Fatalf("after the first ended: %v", err)
		}
	})
	run(t, "RacingPublishes", newStore, func(t *testing.T, b *bundle) {
		const n = 6
		bts := make([]*store.Batch, n)
		for i := range bts {
			bts[i] = creating(t, b, "w")
		}
		var won atomic.Int64
		race(t, n, func(i int) error {
			err := publish(b, bts[i], 0, 6)
			var be *store.BudgetError
			if errors.As(err, &be) {
				return nil
			}
			if err == nil {
				won.Add(1)
			}
			return err
		})
		if won.Load() != 1 {
			t.Errorf("%d of %d publishes of $6 fit a $10 budget, want 1", won.Load(), n)
		}
	})
}
