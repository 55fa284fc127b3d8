// Package storetest is the conformance suite every store driver must pass.
// It tests the guarantees the rest of batchd relies on — guarded
// transitions, exactly-once ends, fair claims, workspace isolation — through
// the store.Store interface only, so SQLite and PostgreSQL are held to the
// same behaviour.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// NewStore returns an empty, migrated store that the test owns; the
// factory registers its cleanup with t.
type NewStore func(t *testing.T) store.Store

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)

type bundle struct {
	ctx context.Context
	st  store.Store
}

func setup(t *testing.T, newStore NewStore) *bundle {
	t.Helper()
	return &bundle{ctx: context.Background(), st: newStore(t)}
}

var seq atomic.Int64

// batch creates and publishes a batch of n requests in workspace ws.
func (b *bundle) batch(t *testing.T, ws string, n int, created time.Time) *store.Batch {
	t.Helper()
	bt, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{
		ID: fmt.Sprintf("msgbatch_%s_%d", ws, seq.Add(1)), Workspace: ws,
		CreatedAt: created, ExpiresAt: created.Add(24 * time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	reqs := make([]store.NewRequest, n)
	for i := range reqs {
		reqs[i] = store.NewRequest{CustomID: fmt.Sprintf("r%d", i), Params: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}
	}
	if n > 0 {
		if err := b.st.RequestsInsert(b.ctx, store.RequestsInsertParams{BatchSeq: bt.Seq, Requests: reqs}); err != nil {
			t.Fatal(err)
		}
	}
	bt, err = b.st.BatchPublish(b.ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: int64(n)})
	if err != nil {
		t.Fatal(err)
	}
	return bt
}

// lead makes owner "leader" the leader for the chores, until far beyond
// any time the cases use, and returns its lead.
func (b *bundle) lead(t *testing.T) store.Lead {
	t.Helper()
	l, err := b.st.LeaderAcquire(b.ctx, store.LeaderAcquireParams{Name: store.LeaderChores, Owner: "leader", Now: t0, Until: t0.Add(1000 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if l.Owner != "leader" {
		t.Fatalf("leader lease held by %q", l.Owner)
	}
	return store.Lead{Name: l.Name, Owner: l.Owner, Term: l.Term}
}

func (b *bundle) claim(t *testing.T, owner string, limit int, now time.Time) []store.ClaimedRequest {
	t.Helper()
	c, err := b.st.RequestsClaim(b.ctx, store.RequestsClaimParams{Owner: owner, Limit: limit, Now: now, LeaseUntil: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func succeed(c store.ClaimedRequest) store.Outcome {
	return store.Outcome{RequestID: c.ID, BatchSeq: c.BatchSeq, CustomID: c.CustomID, Attempt: c.Attempt, ResultType: store.ResultSucceeded,
		Result: json.RawMessage(`{"type":"succeeded","message":{"id":"m"}}`)}
}

func (b *bundle) complete(t *testing.T, owner string, now time.Time, os ...store.Outcome) []*store.BatchChange {
	t.Helper()
	ch, err := b.st.RequestsComplete(b.ctx, store.RequestsCompleteParams{Owner: owner, Now: now, Outcomes: os})
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func (b *bundle) get(t *testing.T, bt *store.Batch) *store.Batch {
	t.Helper()
	got, err := b.st.BatchGet(b.ctx, store.BatchGetParams{Workspace: bt.Workspace, ID: bt.ID})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func (b *bundle) results(t *testing.T, bt *store.Batch) []store.Result {
	t.Helper()
	r, err := b.st.ResultsList(b.ctx, store.ResultsListParams{BatchSeq: bt.Seq, Limit: 1_000_000, WithParams: true})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func endedCount(changes []*store.BatchChange) int {
	n := 0
	for _, c := range changes {
		if c.Ended {
			n++
		}
	}
	return n
}

// Run runs the whole suite against the driver newStore builds: one
// function per area, each case written inline with t.Run, so that a case
// cannot exist without running.
func Run(t *testing.T, newStore NewStore) {
	t.Run("Batches", func(t *testing.T) { testBatches(t, newStore) })
	t.Run("Requests", func(t *testing.T) { testRequests(t, newStore) })
	t.Run("UpstreamBatches", func(t *testing.T) { testUpstreamBatches(t, newStore) })
	t.Run("Events", func(t *testing.T) { testEvents(t, newStore) })
	t.Run("Webhooks", func(t *testing.T) { testWebhooks(t, newStore) })
	t.Run("Keys", func(t *testing.T) { testKeys(t, newStore) })
	t.Run("Idempotency", func(t *testing.T) { testIdempotency(t, newStore) })
	t.Run("Leadership", func(t *testing.T) { testLeadership(t, newStore) })
	t.Run("LimitShares", func(t *testing.T) { testLimitShares(t, newStore) })
	t.Run("Stats", func(t *testing.T) { testStats(t, newStore) })
	t.Run("Usage", func(t *testing.T) { testUsage(t, newStore) })
	t.Run("Budget", func(t *testing.T) { testBudget(t, newStore) })
	t.Run("ResultsPage", func(t *testing.T) { testResultsPage(t, newStore) })
}

// run is one case: parallel, on a store of its own.
func run(t *testing.T, name string, newStore NewStore, fn func(t *testing.T, b *bundle)) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		t.Parallel()
		fn(t, setup(t, newStore))
	})
}

// testBatches is the life of a batch: creating, publishing, listing,
// isolation, caps, cancel, expiry, delete, archive, discard.
func testBatches(t *testing.T, newStore NewStore) {
	t.Parallel()
	run(t, "CreatingBatchIsInvisible", newStore, func(t *testing.T, b *bundle) {
		bt, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{ID: "msgbatch_creating", Workspace: "w", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.st.RequestsInsert(b.ctx, store.RequestsInsertParams{BatchSeq: bt.Seq, Requests: []store.NewRequest{{CustomID: "a", Params: json.RawMessage(`{}`)}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.st.BatchGet(b.ctx, store.BatchGetParams{Workspace: "w", ID: bt.ID}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("get of a creating batch: want ErrNotFound, got %v", err)
		}
		page, err := b.st.BatchList(b.ctx, store.BatchListParams{Workspace: "w", Limit: 10})
		if err != nil || len(page.Batches) != 0 {
			t.Fatalf("list shows a creating batch: %v %v", page, err)
		}
		if c := b.claim(t, "o", 10, t0); len(c) != 0 {
			t.Fatalf("claimed %d requests of a creating batch", len(c))
		}
	})
	run(t, "PublishShowsCounts", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 3, t0)
		if bt.Status != store.StatusInProgress || bt.Total != 3 || bt.Counts.Processing != 3 {
			t.Fatalf("published batch: %+v", bt)
		}
		got := b.get(t, bt)
		if !got.CreatedAt.Equal(t0) || !got.ExpiresAt.Equal(t0.Add(24*time.Hour)) || got.EndedAt != nil || got.ArchivedAt != nil || got.CancelInitiatedAt != nil {
			t.Fatalf("times not kept to the microsecond: %+v", got)
		}
	})
	run(t, "ListNewestFirstBothDirections", newStore, func(t *testing.T, b *bundle) {
		var ids []string
		for i := range 7 {
			ids = append(ids, b.batch(t, "w", 0, t0.Add(time.Duration(i)*time.Second)).ID)
		}
		// newest first
		want := make([]string, len(ids))
		for i := range ids {
			want[i] = ids[len(ids)-1-i]
		}
		list := func(p store.BatchListParams) ([]string, bool) {
			p.Workspace = "w"
			page, err := b.st.BatchList(b.ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, bt := range page.Batches {
				out = append(out, bt.ID)
			}
			return out, page.HasMore
		}
		eq := func(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }
		if got, more := list(store.BatchListParams{Limit: 3}); !eq(got, want[:3]) || !more {
			t.Fatalf("first page %v %v", got, more)
		}
		if got, more := list(store.BatchListParams{Limit: 3, AfterID: want[2]}); !eq(got, want[3:6]) || !more {
			t.Fatalf("after page %v %v", got, more)
		}
		if got, more := list(store.BatchListParams{Limit: 3, AfterID: want[5]}); !eq(got, want[6:]) || more {
			t.Fatalf("last page %v %v", got, more)
		}
		if got, more := list(store.BatchListParams{Limit: 2, BeforeID: want[5]}); !eq(got, want[3:5]) || !more {
			t.Fatalf("before page %v %v", got, more)
		}
		if got, more := list(store.BatchListParams{Limit: 5, BeforeID: want[2]}); !eq(got, want[0:2]) || more {
			t.Fatalf("first before page %v %v", got, more)
		}
		if _, err := b.st.BatchList(b.ctx, store.BatchListParams{Workspace: "w", Limit: 3, AfterID: "msgbatch_nope"}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown cursor: %v", err)
		}
	})
	run(t, "WorkspaceIsolation", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "a", 1, t0)
		other := store.BatchGetParams{Workspace: "b", ID: bt.ID}
		if _, err := b.st.BatchGet(b.ctx, other); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("get: %v", err)
		}
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "b", ID: bt.ID, Now: t0}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("cancel: %v", err)
		}
		if err := b.st.BatchDelete(b.ctx, other); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("delete: %v", err)
		}
		page, err := b.st.BatchList(b.ctx, store.BatchListParams{Workspace: "b", Limit: 10})
		if err != nil || len(page.Batches) != 0 {
			t.Fatalf("list: %+v %v", page, err)
		}
		if _, err := b.st.BatchList(b.ctx, store.BatchListParams{Workspace: "b", Limit: 10, AfterID: bt.ID}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("foreign cursor: %v", err)
		}
	})
	run(t, "MaxInProgress", newStore, func(t *testing.T, b *bundle) {
		ins := func(id string) error {
			_, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{ID: id, Workspace: "w", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), MaxInProgress: 2})
			return err
		}
		if err := ins("msgbatch_1"); err != nil {
			t.Fatal(err)
		}
		if err := ins("msgbatch_2"); err != nil {
			t.Fatal(err)
		}
		if err := ins("msgbatch_3"); !errors.Is(err, store.ErrTooManyBatches) {
			t.Fatalf("third: want ErrTooManyBatches, got %v", err)
		}
		// another workspace is not affected
		if _, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{ID: "msgbatch_4", Workspace: "x", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), MaxInProgress: 2}); err != nil {
			t.Fatal(err)
		}
	})
	run(t, "Betas", newStore, func(t *testing.T, b *bundle) {
		bt, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{ID: "msgbatch_betas", Workspace: "w", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour),
			Betas: []string{"a-2025", "b-2026"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.st.RequestsInsert(b.ctx, store.RequestsInsertParams{BatchSeq: bt.Seq, Requests: []store.NewRequest{{CustomID: "r", Params: json.RawMessage(`{}`)}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.st.BatchPublish(b.ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: 1}); err != nil {
			t.Fatal(err)
		}
		if got := b.get(t, bt).Betas; fmt.Sprint(got) != "[a-2025 b-2026]" {
			t.Fatalf("batch betas %v", got)
		}
		c := b.claim(t, "o", 1, t0)
		if len(c) != 1 || fmt.Sprint(c[0].Betas) != "[a-2025 b-2026]" {
			t.Fatalf("claimed %+v", c)
		}
	})
	run(t, "CancelSettlesPendingOnce", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 5, t0)
		running := b.claim(t, "o", 2, t0)
		ch, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: bt.ID, Now: t0.Add(time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if ch.Ended || ch.Batch.Status != store.StatusCanceling || ch.Batch.Counts.Canceled != 3 || ch.Batch.CancelInitiatedAt == nil {
			t.Fatalf("cancel: %+v", ch.Batch)
		}
		// idempotent while canceling
		ch, err = b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: bt.ID, Now: t0.Add(2 * time.Second)})
		if err != nil || ch.Batch.Counts.Canceled != 3 || !ch.Batch.CancelInitiatedAt.Equal(t0.Add(time.Second)) {
			t.Fatalf("second cancel: %+v %v", ch, err)
		}
		if c := b.claim(t, "o", 10, t0); len(c) != 0 {
			t.Fatal("claimed from a canceling batch")
		}
		b.complete(t, "o", t0, succeed(running[0]))
		chs := b.complete(t, "o", t0, succeed(running[1]))
		if endedCount(chs) != 1 || chs[0].Batch.Counts.Succeeded != 2 {
			t.Fatalf("in-flight requests finish, then the batch ends: %+v", chs[0].Batch)
		}
	})
	run(t, "CancelEndedConflicts", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 1, t0)
		c := b.claim(t, "o", 1, t0)
		b.complete(t, "o", t0, succeed(c[0]))
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: bt.ID, Now: t0}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("cancel ended: %v", err)
		}
		// A batch whose every request was pending ends at cancel.
		bt2 := b.batch(t, "w", 2, t0)
		ch, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: bt2.ID, Now: t0})
		if err != nil || !ch.Ended || ch.Batch.Counts.Canceled != 2 {
			t.Fatalf("cancel of all-pending batch: %+v %v", ch, err)
		}
	})
	run(t, "ExpireSettlesUnsent", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 4, t0)
		c := b.claim(t, "o", 2, t0)
		// c[0] failed transiently and waits; c[1] is still running.
		o := store.Outcome{RequestID: c[0].ID, BatchSeq: bt.Seq, CustomID: c[0].CustomID, Attempt: 1, Retry: true, RetryAt: t0.Add(time.Minute),
			ResultType: store.ResultErrored, Result: json.RawMessage(`{"type":"errored","error":"last"}`)}
		b.complete(t, "o", t0, o)
		exp := bt.ExpiresAt
		if got := b.claim(t, "o", 10, exp); len(got) != 0 {
			t.Fatal("claimed from an expired batch")
		}
		chs, err := b.st.BatchesExpire(b.ctx, store.BatchesExpireParams{Now: exp, Lead: b.lead(t)})
		if err != nil {
			t.Fatal(err)
		}
		if len(chs) != 1 || chs[0].Ended || chs[0].Batch.Counts.Expired != 2 || chs[0].Batch.Counts.Errored != 1 {
			t.Fatalf("expire: %+v", chs)
		}
		res := b.results(t, bt)
		for _, r := range res {
			if r.ID == c[0].ID && (r.ResultType != store.ResultErrored || string(r.Result) != `{"type":"errored","error":"last"}`) {
				t.Fatalf("a request waiting to retry must end errored with its last error: %+v", r)
			}
		}
		chs = b.complete(t, "o", exp, succeed(c[1]))
		if endedCount(chs) != 1 {
			t.Fatal("the in-flight request's completion must end the expired batch")
		}
		chs, _ = b.st.BatchesExpire(b.ctx, store.BatchesExpireParams{Now: exp.Add(time.Hour), Lead: b.lead(t)})
		if len(chs) != 0 {
			t.Fatal("an ended batch expired again")
		}
	})
	run(t, "GiveBackKeepsLastError", newStore, func(t *testing.T, b *bundle) {
		// A request failed once and waits to retry; its next attempt is
		// claimed and given back unsent (a retry with no result: the
		// dispatcher could not be sure its lease still held). It goes back
		// to pending, and still ends with the error of the attempt that
		// was made if its batch expires.
		bt := b.batch(t, "w", 1, t0)
		c := b.claim(t, "o", 1, t0)
		b.complete(t, "o", t0, store.Outcome{RequestID: c[0].ID, BatchSeq: bt.Seq, CustomID: c[0].CustomID, Attempt: c[0].Attempt,
			Retry: true, RetryAt: t0.Add(time.Second), ResultType: store.ResultErrored, Result: json.RawMessage(`{"type":"errored","error":"first"}`)})
		c = b.claim(t, "o", 1, t0.Add(time.Second))
		if len(c) != 1 {
			t.Fatalf("claimed %d for the retry", len(c))
		}
		back := t0.Add(2 * time.Second)
		b.complete(t, "o", back, store.Outcome{RequestID: c[0].ID, BatchSeq: bt.Seq, CustomID: c[0].CustomID, Attempt: c[0].Attempt,
			Retry: true, RetryAt: back, ResultType: store.ResultCanceled})
		if again := b.claim(t, "o", 1, back); len(again) != 1 || again[0].Attempt != c[0].Attempt+1 {
			t.Fatalf("after the give-back claimed %+v, want the request again as attempt %d", again, c[0].Attempt+1)
		}
		if _, err := b.st.RequestsRescue(b.ctx, store.RequestsRescueParams{Now: back.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.st.BatchesExpire(b.ctx, store.BatchesExpireParams{Now: bt.ExpiresAt, Lead: b.lead(t)}); err != nil {
			t.Fatal(err)
		}
		res := b.results(t, bt)
		if len(res) != 1 || res[0].ResultType != store.ResultErrored || string(res[0].Result) != `{"type":"errored","error":"first"}` {
			t.Fatalf("results %+v, want the first attempt's error", res)
		}
	})
	run(t, "ExpireRescuedUnansweredIsExpired", newStore, func(t *testing.T, b *bundle) {
		// A process died holding both requests (claimed ahead, or in
		// flight with the answer lost); their leases lapse and they are
		// rescued, then the batch expires before anyone runs them again.
		// They have attempts but no error: no answer came before the
		// expiry, so they expire. Before, they ended errored with no
		// error at all ({"type":"errored"}).
		bt := b.batch(t, "w", 2, t0)
		if c := b.claim(t, "dead", 2, t0); len(c) != 2 {
			t.Fatalf("claimed %d", len(c))
		}
		if _, err := b.st.RequestsRescue(b.ctx, store.RequestsRescueParams{Now: t0.Add(2 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		chs, err := b.st.BatchesExpire(b.ctx, store.BatchesExpireParams{Now: bt.ExpiresAt, Lead: b.lead(t)})
		if err != nil {
			t.Fatal(err)
		}
		if len(chs) != 1 || !chs[0].Ended || chs[0].Batch.Counts.Expired != 2 || chs[0].Batch.Counts.Errored != 0 {
			t.Fatalf("expire after a rescue: %+v", chs)
		}
		for _, r := range b.results(t, bt) {
			if r.ResultType != store.ResultExpired || r.Result != nil {
				t.Fatalf("a rescued request that never got an answer must expire: %+v", r)
			}
		}
	})
	run(t, "DeleteOnlyEndedAndPurges", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 3, t0)
		if err := b.st.BatchDelete(b.ctx, store.BatchGetParams{Workspace: "w", ID: bt.ID}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("delete in progress: %v", err)
		}
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: bt.ID, Now: t0}); err != nil {
			t.Fatal(err)
		}
		if err := b.st.BatchDelete(b.ctx, store.BatchGetParams{Workspace: "w", ID: bt.ID}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.st.BatchGet(b.ctx, store.BatchGetParams{Workspace: "w", ID: bt.ID}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("get deleted: %v", err)
		}
		total := 0
		for {
			n, err := b.st.RequestsPurge(b.ctx, store.RequestsPurgeParams{Limit: 2, Now: t0, Lead: b.lead(t)})
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
			total += n
		}
		if total < 3 {
			t.Fatalf("purged %d rows, want at least the 3 requests", total)
		}
		if r := b.results(t, bt); len(r) != 0 {
			t.Fatalf("results survive delete: %d", len(r))
		}
	})
	run(t, "ArchiveDropsResults", newStore, func(t *testing.T, b *bundle) {
		old := b.batch(t, "w", 2, t0)
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: old.ID, Now: t0}); err != nil {
			t.Fatal(err)
		}
		running := b.batch(t, "w", 1, t0) // not ended: never archived
		n, err := b.st.BatchesArchive(b.ctx, store.BatchesArchiveParams{Now: t0.Add(30 * 24 * time.Hour), CreatedBefore: t0.Add(time.Hour), Lead: b.lead(t)})
		if err != nil || n != 1 {
			t.Fatalf("archive: %d %v", n, err)
		}
		if got := b.get(t, old); got.ArchivedAt == nil || got.Counts.Canceled != 2 {
			t.Fatalf("archived batch: %+v", got)
		}
		// Its events (created at t0, older than the retention) are pruned too.
		if evs, _ := b.st.EventsList(b.ctx, store.EventsListParams{Workspace: "w", BatchID: old.ID, Limit: 10}); len(evs) != 0 {
			t.Fatalf("%d events of an archived batch remain", len(evs))
		}
		if got := b.get(t, running); got.ArchivedAt != nil {
			t.Fatal("archived a running batch")
		}
		for {
			n, err := b.st.RequestsPurge(b.ctx, store.RequestsPurgeParams{Limit: 100, Now: t0, Lead: b.lead(t)})
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
		if r := b.results(t, old); len(r) != 0 {
			t.Fatalf("archived results remain: %d", len(r))
		}
		if r := b.claim(t, "o", 10, t0); len(r) != 1 {
			t.Fatalf("purge touched another batch: claimed %d", len(r))
		}
	})
	// Only an upload whose lease lapsed is discarded: another process may
	// be streaming the others in.
	run(t, "DiscardStaleCreating", newStore, func(t *testing.T, b *bundle) {
		bt, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{ID: "msgbatch_stale", Workspace: "w", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour),
			UploadUntil: t0.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		live, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{ID: "msgbatch_live", Workspace: "w", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour),
			UploadUntil: t0.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		b.st.RequestsInsert(b.ctx, store.RequestsInsertParams{BatchSeq: bt.Seq, Requests: []store.NewRequest{{CustomID: "a", Params: json.RawMessage(`{}`)}}})
		if n, err := b.st.BatchesDiscardStale(b.ctx, store.BatchesDiscardStaleParams{Now: t0.Add(30 * time.Second), Lead: b.lead(t)}); err != nil || n != 0 {
			t.Fatalf("discard of live uploads: %d %v", n, err)
		}
		if err := b.st.BatchUploadRenew(b.ctx, store.BatchUploadRenewParams{BatchSeq: live.Seq, Until: t0.Add(5 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		n, err := b.st.BatchesDiscardStale(b.ctx, store.BatchesDiscardStaleParams{Now: t0.Add(2 * time.Minute), Lead: b.lead(t)})
		if err != nil || n != 1 {
			t.Fatalf("discard: %d %v", n, err)
		}
		if _, err := b.st.BatchPublish(b.ctx, store.BatchPublishParams{BatchSeq: live.Seq, Total: 0}); err != nil {
			t.Fatalf("the renewed upload was discarded: %v", err)
		}
		if err := b.st.BatchUploadRenew(b.ctx, store.BatchUploadRenewParams{BatchSeq: live.Seq, Until: t0.Add(time.Hour)}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("renewing a published batch's upload: want ErrNotFound, got %v", err)
		}
		if _, err := b.st.BatchPublish(b.ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: 1}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("publish after discard: %v", err)
		}
	})
	// Creates racing in one workspace (several API handlers, or
	// processes) never pass the cap together.
	run(t, "MaxInProgressHoldsUnderConcurrentCreates", newStore, func(t *testing.T, b *bundle) {
		const limit, tries = 3, 8
		var ok, full atomic.Int64
		race(t, tries, func(i int) error {
			_, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{ID: fmt.Sprintf("msgbatch_race_%d", i), Workspace: "w",
				CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), MaxInProgress: limit})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, store.ErrTooManyBatches):
				full.Add(1)
			default:
				return err
			}
			return nil
		})
		if ok.Load() != limit || full.Load() != tries-limit {
			t.Fatalf("%d creates passed a cap of %d (%d refused)", ok.Load(), limit, full.Load())
		}
	})
}

// testRequests is claims, leases and outcomes: the guards that make every
// request settle exactly once.
func testRequests(t *testing.T, newStore NewStore) {
	t.Parallel()
	run(t, "ClaimLeasesAndCompleteEndsOnce", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 3, t0)
		c := b.claim(t, "o", 10, t0)
		if len(c) != 3 {
			t.Fatalf("claimed %d", len(c))
		}
		for _, r := range c {
			if r.Attempt != 1 || r.BatchID != bt.ID || len(r.Params) == 0 || !r.ExpiresAt.Equal(bt.ExpiresAt) {
				t.Fatalf("claimed request %+v", r)
			}
		}
		if again := b.claim(t, "o2", 10, t0); len(again) != 0 {
			t.Fatalf("claimed leased requests again: %d", len(again))
		}
		ch := b.complete(t, "o", t0, succeed(c[0]), succeed(c[1]))
		if endedCount(ch) != 0 || ch[0].Batch.Counts.Succeeded != 2 || ch[0].Batch.Counts.Processing != 1 {
			t.Fatalf("after two: %+v", ch[0].Batch)
		}
		errored := store.Outcome{RequestID: c[2].ID, BatchSeq: c[2].BatchSeq, CustomID: c[2].CustomID, Attempt: 1, ResultType: store.ResultErrored, Result: json.RawMessage(`{"type":"errored"}`)}
		ch = b.complete(t, "o", t0.Add(time.Second), errored)
		if endedCount(ch) != 1 || ch[0].Batch.Status != store.StatusEnded || ch[0].Batch.EndedAt == nil || ch[0].Batch.Counts.Errored != 1 {
			t.Fatalf("last completion must end the batch once: %+v", ch[0].Batch)
		}
		// Replaying the same outcomes changes nothing and ends nothing.
		ch = b.complete(t, "o", t0.Add(2*time.Second), succeed(c[0]), errored)
		if endedCount(ch) != 0 {
			t.Fatal("a replayed completion ended the batch again")
		}
		got := b.get(t, bt)
		if got.Counts.Succeeded != 2 || got.Counts.Errored != 1 || !got.EndedAt.Equal(t0.Add(time.Second)) {
			t.Fatalf("counts or ended_at moved on replay: %+v", got)
		}
		if r := b.results(t, bt); len(r) != 3 {
			t.Fatalf("want 3 results, got %d", len(r))
		}
	})
	run(t, "CompleteGuardedByLeaseAndAttempt", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 1, t0)
		c := b.claim(t, "o", 1, t0)
		// Not the lease holder.
		b.complete(t, "intruder", t0, succeed(c[0]))
		if got := b.get(t, bt); got.Counts.Succeeded != 0 {
			t.Fatal("a result was written by a process that does not hold the lease")
		}
		// Lease lapses, the request is rescued and claimed again (attempt 2):
		// the first attempt's late outcome must not count.
		if _, err := b.st.RequestsRescue(b.ctx, store.RequestsRescueParams{Now: t0.Add(2 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		c2 := b.claim(t, "o", 1, t0.Add(2*time.Minute))
		if len(c2) != 1 || c2[0].Attempt != 2 {
			t.Fatalf("reclaim: %+v", c2)
		}
		b.complete(t, "o", t0, succeed(c[0]))
		if got := b.get(t, bt); got.Counts.Succeeded != 0 {
			t.Fatal("a stale attempt's outcome was recorded")
		}
		b.complete(t, "o", t0, succeed(c2[0]))
		if got := b.get(t, bt); got.Counts.Succeeded != 1 || got.Status != store.StatusEnded {
			t.Fatalf("current attempt not recorded: %+v", got)
		}
	})
	// A dispatcher whose lease lapsed (a loaded machine, a stalled disk) and
	// which claimed the request again holds it twice, under two attempts;
	// canceling the batch settles both at once, in one call. Only the
	// current attempt counts, and the stale one must not fail the call
	// (it did, with a duplicate result, and the batch never ended).
	run(t, "CompleteStaleAndCurrentAttemptTogether", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 2, t0)
		c := b.claim(t, "o", 2, t0)
		if _, err := b.st.RequestsRescue(b.ctx, store.RequestsRescueParams{Now: t0.Add(2 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		c2 := b.claim(t, "o", 2, t0.Add(2*time.Minute))
		if len(c2) != 2 || c2[0].Attempt != 2 {
			t.Fatalf("reclaim: %+v", c2)
		}
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: bt.ID, Now: t0.Add(2 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		canceled := func(c store.ClaimedRequest) store.Outcome {
			return store.Outcome{RequestID: c.ID, BatchSeq: c.BatchSeq, CustomID: c.CustomID, Attempt: c.Attempt, ResultType: store.ResultCanceled}
		}
		ch, err := b.st.RequestsComplete(b.ctx, store.RequestsCompleteParams{Owner: "o", Now: t0.Add(2 * time.Minute),
			Outcomes: []store.Outcome{canceled(c[0]), canceled(c[1]), canceled(c2[0]), canceled(c2[1])}})
		if err != nil {
			t.Fatalf("complete a stale and the current attempt together: %v", err)
		}
		if endedCount(ch) != 1 || ch[0].Batch.Counts.Canceled != 2 {
			t.Fatalf("want the batch ended with 2 canceled, got %+v", ch)
		}
		if r := b.results(t, bt); len(r) != 2 {
			t.Fatalf("want 2 results, got %d", len(r))
		}
	})
	run(t, "ClaimIsFairAcrossBatches", newStore, func(t *testing.T, b *bundle) {
		big := b.batch(t, "w", 500, t0)
		first := b.claim(t, "o", 50, t0)
		if len(first) != 50 {
			t.Fatalf("claimed %d", len(first))
		}
		small := b.batch(t, "w", 10, t0.Add(time.Second))
		c := b.claim(t, "o", 20, t0.Add(time.Second))
		perBatch := map[int64]int{}
		for _, r := range c {
			perBatch[r.BatchSeq]++
		}
		if perBatch[small.Seq] != 10 || perBatch[big.Seq] != 10 {
			t.Fatalf("want the small batch's 10 and 10 of the big one, got %v", perBatch)
		}
	})
	run(t, "RetryWaitsUntilDue", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 1, t0)
		c := b.claim(t, "o", 1, t0)
		o := store.Outcome{RequestID: c[0].ID, BatchSeq: bt.Seq, CustomID: c[0].CustomID, Attempt: 1, Retry: true, RetryAt: t0.Add(10 * time.Second),
			ResultType: store.ResultErrored, Result: json.RawMessage(`{"type":"errored","error":{"type":"error","error":{"type":"overloaded_error","message":"x"},"request_id":null}}`)}
		ch := b.complete(t, "o", t0, o)
		if endedCount(ch) != 0 || b.get(t, bt).Counts.Processing != 1 {
			t.Fatal("a retry settled the request")
		}
		if got := b.claim(t, "o", 1, t0.Add(5*time.Second)); len(got) != 0 {
			t.Fatal("claimed before the retry was due")
		}
		due, err := b.st.RequestNextDue(b.ctx, "")
		if err != nil || !due.Equal(t0.Add(10*time.Second)) {
			t.Fatalf("next due %v %v", due, err)
		}
		got := b.claim(t, "o", 1, t0.Add(10*time.Second))
		if len(got) != 1 || got[0].Attempt != 2 {
			t.Fatalf("retry claim %+v", got)
		}
	})
	run(t, "RetryAfterCancelSettlesErrored", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 1, t0)
		c := b.claim(t, "o", 1, t0)
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: bt.ID, Now: t0}); err != nil {
			t.Fatal(err)
		}
		o := store.Outcome{RequestID: c[0].ID, BatchSeq: bt.Seq, CustomID: c[0].CustomID, Attempt: 1, Retry: true, RetryAt: t0.Add(time.Second),
			ResultType: store.ResultErrored, Result: json.RawMessage(`{"type":"errored"}`)}
		ch := b.complete(t, "o", t0, o)
		if endedCount(ch) != 1 || ch[0].Batch.Counts.Errored != 1 {
			t.Fatalf("a retry in a canceling batch must settle as errored: %+v", ch)
		}
	})
	run(t, "RescueReturnsLostRequests", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 2, t0)
		c := b.claim(t, "o", 2, t0) // lease until t0+1m
		if chs, _ := b.st.RequestsRescue(b.ctx, store.RequestsRescueParams{Now: t0.Add(30 * time.Second)}); len(chs) != 0 {
			t.Fatal("rescued a live lease")
		}
		if got := b.claim(t, "o2", 2, t0.Add(30*time.Second)); len(got) != 0 {
			t.Fatal("claimed under a live lease")
		}
		// cancel, then the lease lapses: the request of a canceling batch
		// settles canceled, since it will not be sent again.
		bt2 := b.batch(t, "w", 1, t0)
		c2 := b.claim(t, "o", 1, t0)
		if c2[0].BatchSeq != bt2.Seq {
			t.Fatalf("claimed from the wrong batch")
		}
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: bt2.ID, Now: t0}); err != nil {
			t.Fatal(err)
		}
		chs, err := b.st.RequestsRescue(b.ctx, store.RequestsRescueParams{Now: t0.Add(2 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if endedCount(chs) != 1 {
			t.Fatalf("rescue must end the canceling batch: %+v", chs)
		}
		got := b.claim(t, "o2", 10, t0.Add(2*time.Minute))
		if len(got) != 2 || got[0].Attempt != 2 {
			t.Fatalf("rescued requests not claimable again: %+v", got)
		}
		_ = c
		_ = bt
	})
	// A process starting beside a live one (or after its own crash: it
	// cannot tell) rescues only lapsed leases, never another's live ones.
	run(t, "RescueOnlyLapsedLeases", newStore, func(t *testing.T, b *bundle) {
		b.batch(t, "w", 3, t0)
		b.claim(t, "live", 2, t0) // leases until t0+1m
		if chs, err := b.st.RequestsRescue(b.ctx, store.RequestsRescueParams{Now: t0.Add(30 * time.Second)}); err != nil || len(chs) != 0 {
			t.Fatalf("rescue: %+v %v", chs, err)
		}
		if got := b.claim(t, "new", 10, t0.Add(30*time.Second)); len(got) != 1 {
			t.Fatalf("a second process claimed %d requests, want only the 1 nobody held", len(got))
		}
		// At t0+70s the dead process's leases have lapsed, the new one's
		// (until t0+90s) not.
		b.st.RequestsRescue(b.ctx, store.RequestsRescueParams{Now: t0.Add(70 * time.Second)})
		if got := b.claim(t, "new", 10, t0.Add(70*time.Second)); len(got) != 2 {
			t.Fatalf("after the lease lapsed claimed %d, want the 2 the dead process held", len(got))
		}
	})
	run(t, "HeartbeatKeepsLease", newStore, func(t *testing.T, b *bundle) {
		b.batch(t, "w", 1, t0)
		b.claim(t, "o", 1, t0) // lease until t0+1m
		if err := b.st.RequestsHeartbeat(b.ctx, store.RequestsHeartbeatParams{Owner: "o", LeaseUntil: t0.Add(10 * time.Minute), Now: t0.Add(30 * time.Second)}); err != nil {
			t.Fatal(err)
		}
		b.st.RequestsRescue(b.ctx, store.RequestsRescueParams{Now: t0.Add(5 * time.Minute)})
		if got := b.claim(t, "o2", 1, t0.Add(5*time.Minute)); len(got) != 0 {
			t.Fatal("a heartbeated lease was rescued")
		}
	})
	// A heartbeat that comes after a lease lapsed does not revive it, even
	// before a rescue ran: the holder has let go of a request whose lease it
	// knows lapsed, and a revived lease would hold it with nobody running it.
	run(t, "HeartbeatSkipsLapsedLease", newStore, func(t *testing.T, b *bundle) {
		b.batch(t, "w", 2, t0)
		b.claim(t, "o", 1, t0)                  // lease until t0+1m
		b.claim(t, "o", 1, t0.Add(time.Minute)) // lease until t0+2m
		if err := b.st.RequestsHeartbeat(b.ctx, store.RequestsHeartbeatParams{Owner: "o", LeaseUntil: t0.Add(10 * time.Minute), Now: t0.Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		b.st.RequestsRescue(b.ctx, store.RequestsRescueParams{Now: t0.Add(5 * time.Minute)})
		if got := b.claim(t, "o2", 2, t0.Add(5*time.Minute)); len(got) != 1 {
			t.Fatalf("after a late heartbeat another owner claimed %d requests, want the 1 whose lease had lapsed (at the heartbeat's Now exactly)", len(got))
		}
	})
	run(t, "ResultsPageInOrderAndSkipSucceeded", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 5, t0)
		c := b.claim(t, "o", 5, t0)
		var os []store.Outcome
		for i, r := range c {
			o := succeed(r)
			if i%2 == 1 {
				o.ResultType, o.Result = store.ResultErrored, json.RawMessage(`{"type":"errored"}`)
			}
			os = append(os, o)
		}
		b.complete(t, "o", t0, os...)
		var all []store.Result
		var after int64
		for {
			page, err := b.st.ResultsList(b.ctx, store.ResultsListParams{BatchSeq: bt.Seq, AfterID: after, Limit: 2})
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			all = append(all, page...)
			after = page[len(page)-1].ID
		}
		if len(all) != 5 {
			t.Fatalf("paged %d results", len(all))
		}
		for i, r := range all {
			if r.CustomID != fmt.Sprintf("r%d", i) {
				t.Fatalf("results out of request order: %d is %s", i, r.CustomID)
			}
		}
		failed, err := b.st.ResultsList(b.ctx, store.ResultsListParams{BatchSeq: bt.Seq, Limit: 10, SkipSucceeded: true, WithParams: true})
		if err != nil || len(failed) != 2 || string(failed[0].Params) != `{"i":1}` {
			t.Fatalf("skip succeeded: %+v %v", failed, err)
		}
		// MaxBytes ends a page at the result that reaches it, never empty.
		var cum int64
		for k, r := range all {
			cum += int64(len(r.Result))
			for max, want := range map[int64]int{cum: k + 1, cum + 1: min(k+2, len(all)), 1: 1} {
				page, err := b.st.ResultsList(b.ctx, store.ResultsListParams{BatchSeq: bt.Seq, Limit: 10, MaxBytes: max})
				if err != nil || len(page) != want {
					t.Fatalf("MaxBytes %d: %d results, want %d (%v)", max, len(page), want, err)
				}
			}
		}
	})
	run(t, "CompleteAndClaim", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 5, t0)
		first := b.claim(t, "o", 2, t0)
		changes, claimed, err := b.st.RequestsCompleteAndClaim(b.ctx,
			store.RequestsCompleteParams{Owner: "o", Now: t0, Outcomes: []store.Outcome{succeed(first[0]), succeed(first[1])}},
			store.RequestsClaimParams{Owner: "o", Limit: 10, Now: t0, LeaseUntil: t0.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if len(changes) != 1 || changes[0].Batch.Counts.Succeeded != 2 || changes[0].Ended {
			t.Fatalf("changes %+v", changes)
		}
		if len(claimed) != 3 {
			t.Fatalf("claimed %d, want the 3 still pending", len(claimed))
		}
		for _, c := range claimed {
			if c.ID == first[0].ID || c.ID == first[1].ID || len(c.Params) == 0 || c.CustomID == "" {
				t.Fatalf("claimed %+v", c)
			}
		}
		var os []store.Outcome
		for _, c := range claimed {
			os = append(os, succeed(c))
		}
		changes, claimed, err = b.st.RequestsCompleteAndClaim(b.ctx,
			store.RequestsCompleteParams{Owner: "o", Now: t0, Outcomes: os},
			store.RequestsClaimParams{Owner: "o", Limit: 10, Now: t0, LeaseUntil: t0.Add(time.Minute)})
		if err != nil || len(claimed) != 0 || endedCount(changes) != 1 {
			t.Fatalf("last round: %+v %+v %v", changes, claimed, err)
		}
		if got := b.get(t, bt); got.Status != store.StatusEnded || got.Counts.Succeeded != 5 {
			t.Fatalf("batch %+v", got)
		}
	})
	run(t, "ClaimByBackend", newStore, func(t *testing.T, b *bundle) {
		route := func(m string) string { return map[string]string{"claude": "anthropic", "llama": "vllm"}[m] }
		b.routedBatch(t, 9, []string{"claude", "llama", "unknown"}, route)
		for backend, want := range map[string]int{"anthropic": 3, "vllm": 3, "": 3, "other": 0} {
			got := b.claimFor(t, backend, 100)
			if len(got) != want {
				t.Fatalf("backend %q claimed %d, want %d", backend, len(got), want)
			}
		}
	})
	run(t, "Reroute", newStore, func(t *testing.T, b *bundle) {
		old := func(m string) string { return "a" }
		b.routedBatch(t, 6, []string{"x", "y"}, old)
		running := b.claimFor(t, "a", 1) // one "x" request is running: it stays where it is
		moved, err := b.st.RequestsReroute(b.ctx, func(m string) string {
			if m == "x" {
				return "b"
			}
			return "a"
		})
		if err != nil || moved != 2 {
			t.Fatalf("moved %d (want the 2 pending x requests), %v", moved, err)
		}
		if got := b.claimFor(t, "b", 100); len(got) != 2 {
			t.Fatalf("backend b claimed %d", len(got))
		}
		if got := b.claimFor(t, "a", 100); len(got) != 3 {
			t.Fatalf("backend a claimed %d", len(got))
		}
		_ = running
	})
	// Claimers racing for one batch (several dispatchers, or processes):
	// no request is leased twice, every one settles once, the batch ends
	// once.
	run(t, "ConcurrentClaimsNeverOverlap", newStore, func(t *testing.T, b *bundle) {
		const n, workers = 300, 4
		bt := b.batch(t, "w", n, t0)
		var mu sync.Mutex
		leased := map[int64]int{}
		ended := 0
		race(t, workers, func(w int) error {
			owner := fmt.Sprint("o", w)
			for {
				c, err := b.st.RequestsClaim(b.ctx, store.RequestsClaimParams{Owner: owner, Limit: 7, Now: t0, LeaseUntil: t0.Add(time.Minute)})
				if err != nil || len(c) == 0 {
					return err // none left that another claimer does not hold
				}
				var os []store.Outcome
				mu.Lock()
				for _, r := range c {
					leased[r.ID]++
					os = append(os, succeed(r))
				}
				mu.Unlock()
				chs, err := b.st.RequestsComplete(b.ctx, store.RequestsCompleteParams{Owner: owner, Now: t0, Outcomes: os})
				if err != nil {
					return err
				}
				mu.Lock()
				ended += endedCount(chs)
				mu.Unlock()
			}
		})
		for id, k := range leased {
			if k != 1 {
				t.Fatalf("request %d leased %d times", id, k)
			}
		}
		if got := b.get(t, bt); len(leased) != n || ended != 1 || got.Status != store.StatusEnded || got.Counts.Succeeded != n {
			t.Fatalf("%d of %d leased, ended %d times: %+v", len(leased), n, ended, got)
		}
		if r := b.results(t, bt); len(r) != n {
			t.Fatalf("%d results, want %d", len(r), n)
		}
	})

	run(t, "CancelingHeld", newStore, func(t *testing.T, b *bundle) {
		held := func(owner string) []int64 {
			t.Helper()
			seqs, err := b.st.BatchesCancelingHeld(b.ctx, store.BatchesCancelingHeldParams{Owner: owner})
			if err != nil {
				t.Fatal(err)
			}
			return seqs
		}
		b1 := b.batch(t, "w", 2, t0)
		ca := b.claim(t, "a", 10, t0)
		b2 := b.batch(t, "w", 2, t0)
		cb := b.claim(t, "b", 10, t0)
		if len(ca) != 2 || len(cb) != 2 {
			t.Fatalf("claimed %d and %d", len(ca), len(cb))
		}
		if got := held("a"); len(got) != 0 {
			t.Fatalf("nothing canceling yet, got %v", got)
		}
		for _, bt := range []*store.Batch{b1, b2} {
			if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: bt.ID, Now: t0}); err != nil {
				t.Fatal(err)
			}
		}
		if got := held("a"); len(got) != 1 || got[0] != b1.Seq {
			t.Fatalf("a holds %v, want [%d]", got, b1.Seq)
		}
		if got := held("b"); len(got) != 1 || got[0] != b2.Seq {
			t.Fatalf("b holds %v, want [%d]", got, b2.Seq)
		}
		if got := held("c"); len(got) != 0 {
			t.Fatalf("c holds nothing, got %v", got)
		}
		b.complete(t, "a", t0, succeed(ca[0]), succeed(ca[1]))
		if got := held("a"); len(got) != 0 {
			t.Fatalf("a's batch ended, still listed: %v", got)
		}
	})
}

// testUpstreamBatches is requests delegated to an upstream Message Batches API.
func testUpstreamBatches(t *testing.T, newStore NewStore) {
	// A delegator that dies leaves its upstream batches to the leader's
	// delegator once their lease lapses, never before; the adopter then
	// writes their results and the dead owner cannot.
	// The delegators of one process share its owner: one that stops lets
	// go of its own backend's upstream batches only, not of another's
	// that may still be creating one.
	run(t, "HeartbeatByBackend", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 2, t0)
		c := b.claim(t, "o", 2, t0)
		for i, be := range []string{"a", "b"} {
			if _, err := b.st.UpstreamBatchInsert(b.ctx, store.UpstreamBatchInsertParams{Backend: be, Owner: "o", BatchSeq: bt.Seq,
				RequestIDs: []int64{c[i].ID}, Now: t0, LeaseUntil: t0.Add(time.Minute)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.st.UpstreamBatchesHeartbeat(b.ctx, store.UpstreamBatchesHeartbeatParams{Owner: "o", Backend: "a"}); err != nil {
			t.Fatal(err)
		}
		for be, want := range map[string]time.Time{"a": time.UnixMicro(0).UTC(), "b": t0.Add(time.Minute)} {
			list, err := b.st.UpstreamBatchesList(b.ctx, be)
			if err != nil || len(list) != 1 || !list[0].LeaseExpires.Equal(want) {
				t.Fatalf("backend %s lists %+v (%v), want its lease until %s", be, list, err, want)
			}
		}
	})
	run(t, "AdoptOnlyLapsed", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 2, t0)
		c := b.claim(t, "dead", 2, t0)
		ub, err := b.st.UpstreamBatchInsert(b.ctx, store.UpstreamBatchInsertParams{Backend: "up", Owner: "dead", BatchSeq: bt.Seq,
			RequestIDs: []int64{c[0].ID, c[1].ID}, Now: t0, LeaseUntil: t0.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.st.UpstreamBatchStart(b.ctx, store.UpstreamBatchStartParams{ID: ub.ID, UpstreamID: "msgbatch_up"}); err != nil {
			t.Fatal(err)
		}
		lead := b.lead(t)
		adopt := func(now time.Time) error {
			return b.st.UpstreamBatchAdopt(b.ctx, store.UpstreamBatchAdoptParams{ID: ub.ID, Owner: "heir", Now: now, LeaseUntil: now.Add(time.Minute), Lead: lead})
		}
		if err := adopt(t0.Add(30 * time.Second)); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("adopting a live lease: want ErrConflict, got %v", err)
		}
		// A heartbeat keeps it.
		if err := b.st.UpstreamBatchesHeartbeat(b.ctx, store.UpstreamBatchesHeartbeatParams{Owner: "dead", LeaseUntil: t0.Add(3 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		if err := adopt(t0.Add(2 * time.Minute)); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("adopting a renewed lease: want ErrConflict, got %v", err)
		}
		if list, _ := b.st.UpstreamBatchesList(b.ctx, "up"); len(list) != 1 || !list[0].LeaseExpires.Equal(t0.Add(3*time.Minute)) {
			t.Fatalf("listed %+v", list)
		}
		if err := adopt(t0.Add(4 * time.Minute)); err != nil {
			t.Fatalf("adopting a lapsed lease: %v", err)
		}
		if list, _ := b.st.UpstreamBatchesList(b.ctx, "up"); len(list) != 1 || list[0].Owner != "heir" {
			t.Fatalf("after adoption listed %+v", list)
		}
		if chs := b.complete(t, "dead", t0.Add(4*time.Minute), succeed(c[0])); len(chs) != 0 {
			t.Fatal("the dead owner wrote a result of an adopted upstream batch")
		}
		if chs := b.complete(t, "heir", t0.Add(4*time.Minute), succeed(c[0]), succeed(c[1])); endedCount(chs) != 1 {
			t.Fatalf("the heir's results did not end the batch: %+v", chs)
		}
	})

	t.Parallel()
	run(t, "UpstreamBatches", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 4, t0)
		c := b.claim(t, "d", 4, t0)
		if len(c) != 4 {
			t.Fatalf("claimed %d", len(c))
		}
		ids := []int64{c[0].ID, c[1].ID, c[2].ID}
		ub, err := b.st.UpstreamBatchInsert(b.ctx, store.UpstreamBatchInsertParams{Backend: "up", Owner: "d", BatchSeq: bt.Seq, RequestIDs: ids, Now: t0})
		if err != nil || ub.ID == 0 || ub.UpstreamID != "" {
			t.Fatalf("insert: %+v %v", ub, err)
		}
		// Delegated twice, or not held by the owner: nothing changes.
		if _, err := b.st.UpstreamBatchInsert(b.ctx, store.UpstreamBatchInsertParams{Backend: "up", Owner: "d", BatchSeq: bt.Seq, RequestIDs: []int64{c[2].ID, c[3].ID}, Now: t0}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("delegating a request twice: want ErrConflict, got %v", err)
		}
		if _, err := b.st.UpstreamBatchInsert(b.ctx, store.UpstreamBatchInsertParams{Backend: "up", Owner: "x", BatchSeq: bt.Seq, RequestIDs: []int64{c[3].ID}, Now: t0}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("delegating another owner's request: want ErrConflict, got %v", err)
		}
		// A lapsed lease does not make delegated requests lost.
		if _, err := b.st.RequestsRescue(b.ctx, store.RequestsRescueParams{Now: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if got := b.claim(t, "o2", 10, t0.Add(time.Hour)); len(got) != 1 || got[0].ID != c[3].ID {
			t.Fatalf("after rescue claimed %+v, want only the undelegated request", got)
		}
		if err := b.st.UpstreamBatchStart(b.ctx, store.UpstreamBatchStartParams{ID: ub.ID, UpstreamID: "msgbatch_up1"}); err != nil {
			t.Fatal(err)
		}
		if err := b.st.UpstreamBatchStart(b.ctx, store.UpstreamBatchStartParams{ID: ub.ID, UpstreamID: "msgbatch_up2"}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("second start: want ErrConflict, got %v", err)
		}
		if _, err := b.st.UpstreamBatchAbandon(b.ctx, store.UpstreamBatchAbandonParams{ID: ub.ID, Now: t0}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("abandoning a started upstream batch: want ErrConflict, got %v", err)
		}
		list, err := b.st.UpstreamBatchesList(b.ctx, "up")
		if err != nil || len(list) != 1 || list[0].UpstreamID != "msgbatch_up1" || list[0].BatchSeq != bt.Seq || list[0].Owner != "d" || list[0].BatchStatus != store.StatusInProgress {
			t.Fatalf("list: %+v %v", list, err)
		}
		if other, _ := b.st.UpstreamBatchesList(b.ctx, "other"); len(other) != 0 {
			t.Fatalf("another backend's list: %+v", other)
		}
		reqs, err := b.st.UpstreamBatchRequests(b.ctx, ub.ID)
		if err != nil || len(reqs) != 3 {
			t.Fatalf("requests: %+v %v", reqs, err)
		}
		for i, r := range reqs {
			if r.ID != ids[i] || r.CustomID != c[i].CustomID || r.Attempt != c[i].Attempt || r.BatchSeq != bt.Seq || r.BatchID != bt.ID {
				t.Fatalf("request %d: %+v, claimed %+v", i, r, c[i])
			}
		}
		if err := b.st.UpstreamBatchDelete(b.ctx, ub.ID); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("deleting with unsettled requests: want ErrConflict, got %v", err)
		}
		b.complete(t, "d", t0, succeed(reqs[0]), succeed(reqs[1]), succeed(reqs[2]))
		if reqs, _ := b.st.UpstreamBatchRequests(b.ctx, ub.ID); len(reqs) != 0 {
			t.Fatalf("settled requests still listed: %+v", reqs)
		}
		if err := b.st.UpstreamBatchDelete(b.ctx, ub.ID); err != nil {
			t.Fatal(err)
		}
		if list, _ := b.st.UpstreamBatchesList(b.ctx, "up"); len(list) != 0 {
			t.Fatalf("deleted upstream batch still listed: %+v", list)
		}
		if got := b.get(t, bt); got.Counts.Succeeded != 3 {
			t.Fatalf("counts %+v", got.Counts)
		}

		// An intent never started is abandoned: its requests are claimable
		// again, or canceled when their batch is canceling.
		bt2 := b.batch(t, "w2", 2, t0)
		c2 := b.claim(t, "d", 2, t0)
		ub2, err := b.st.UpstreamBatchInsert(b.ctx, store.UpstreamBatchInsertParams{Backend: "up", Owner: "d", BatchSeq: bt2.Seq, RequestIDs: []int64{c2[0].ID, c2[1].ID}, Now: t0})
		if err != nil {
			t.Fatal(err)
		}
		if chs, err := b.st.UpstreamBatchAbandon(b.ctx, store.UpstreamBatchAbandonParams{ID: ub2.ID, Now: t0}); err != nil || len(chs) != 0 {
			t.Fatalf("abandon: %+v %v", chs, err)
		}
		c2 = b.claim(t, "d", 2, t0)
		if len(c2) != 2 || c2[0].Attempt != 2 {
			t.Fatalf("abandoned requests not claimable again: %+v", c2)
		}
		ub3, err := b.st.UpstreamBatchInsert(b.ctx, store.UpstreamBatchInsertParams{Backend: "up", Owner: "d", BatchSeq: bt2.Seq, RequestIDs: []int64{c2[0].ID, c2[1].ID}, Now: t0})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w2", ID: bt2.ID, Now: t0}); err != nil {
			t.Fatal(err)
		}
		if list, _ := b.st.UpstreamBatchesList(b.ctx, "up"); len(list) != 1 || list[0].BatchStatus != store.StatusCanceling {
			t.Fatalf("list after cancel: %+v", list)
		}
		chs, err := b.st.UpstreamBatchAbandon(b.ctx, store.UpstreamBatchAbandonParams{ID: ub3.ID, Now: t0})
		if err != nil || endedCount(chs) != 1 || chs[0].Batch.Counts.Canceled != 2 {
			t.Fatalf("abandon of a canceling batch's intent: %+v %v", chs, err)
		}
	})
}

// testEvents is the outbox written in the transaction of each change.
func testEvents(t *testing.T, newStore NewStore) {
	t.Parallel()
	run(t, "Events", newStore, func(t *testing.T, b *bundle) {
		all := &store.WebhookEndpoint{ID: "whep_all", Workspace: "w", URL: "https://a.example/hook", Secret: "sealed-a", CreatedAt: t0}
		endedOnly := &store.WebhookEndpoint{ID: "whep_ended", Workspace: "w", URL: "https://b.example/hook", Secret: "sealed-b",
			EventTypes: []string{store.EventBatchEnded}, CreatedAt: t0}
		other := &store.WebhookEndpoint{ID: "whep_other", Workspace: "x", URL: "https://c.example/hook", Secret: "sealed-c", CreatedAt: t0}
		for _, e := range []*store.WebhookEndpoint{all, endedOnly, other} {
			if err := b.st.WebhookEndpointCreate(b.ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		bt := b.batch(t, "w", 2, t0)
		c := b.claim(t, "o", 1, t0)
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: bt.ID, Now: t0.Add(time.Second)}); err != nil {
			t.Fatal(err)
		}
		b.complete(t, "o", t0.Add(2*time.Second), succeed(c[0]))
		b.complete(t, "o", t0.Add(3*time.Second), succeed(c[0])) // replayed: no second end
		events, err := b.st.EventsList(b.ctx, store.EventsListParams{Workspace: "w", Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var types []string
		for _, e := range events {
			types = append(types, e.Type)
			if e.BatchID != bt.ID || e.Batch == nil || e.Batch.ID != bt.ID || e.ID == "" {
				t.Fatalf("event %+v", e)
			}
		}
		if fmt.Sprint(types) != "[message_batch.created message_batch.canceling message_batch.ended]" {
			t.Fatalf("events %v", types)
		}
		if last := events[2].Batch; last.Status != store.StatusEnded || last.Counts.Succeeded != 1 || last.Counts.Canceled != 1 || last.EndedAt == nil {
			t.Fatalf("the ended event must carry the final batch: %+v", last)
		}
		if later, _ := b.st.EventsList(b.ctx, store.EventsListParams{Workspace: "w", AfterSeq: events[1].Seq, Limit: 100}); len(later) != 1 {
			t.Fatalf("events after the second: %d", len(later))
		}
		// Since: the cancel (t0+1s) and the end (t0+2s), not the create (t0).
		if since, err := b.st.EventsList(b.ctx, store.EventsListParams{Workspace: "w", Since: t0.Add(time.Second), Limit: 100}); err != nil || len(since) != 2 || since[0].Seq != events[1].Seq {
			t.Fatalf("events since t0+1s: %d (%v), want the last two", len(since), err)
		}
		if none, _ := b.st.EventsList(b.ctx, store.EventsListParams{Workspace: "w", Since: t0.Add(time.Hour), Limit: 100}); len(none) != 0 {
			t.Fatalf("events since a time after all of them: %d", len(none))
		}
		if foreign, _ := b.st.EventsList(b.ctx, store.EventsListParams{Workspace: "x", Limit: 100}); len(foreign) != 0 {
			t.Fatalf("another workspace sees %d events", len(foreign))
		}
		for id, want := range map[string]int{"whep_all": 3, "whep_ended": 1, "whep_other": 0} {
			if n, err := b.st.DeliveriesPending(b.ctx, id); err != nil || n != want {
				t.Fatalf("%s: %d deliveries (%v), want %d", id, n, err, want)
			}
		}
		// Every workspace at once, in order: the stream poller's read.
		xb := b.batch(t, "x", 1, t0.Add(4*time.Second))
		every, err := b.st.EventsList(b.ctx, store.EventsListParams{AllWorkspaces: true, Workspace: "x", AfterSeq: events[0].Seq, Limit: 100})
		if err != nil || len(every) != 3 || every[0].Seq != events[1].Seq || every[2].BatchID != xb.ID || every[2].Workspace != "x" {
			t.Fatalf("events of all workspaces after the first: %d (%v)", len(every), err)
		}
		if last, err := b.st.EventsLast(b.ctx, ""); err != nil || last != every[2].Seq {
			t.Fatalf("last event of any workspace %d (%v), want %d", last, err, every[2].Seq)
		}
		if last, err := b.st.EventsLast(b.ctx, "w"); err != nil || last != events[2].Seq {
			t.Fatalf("last event of w %d (%v), want %d", last, err, events[2].Seq)
		}
	})
}

// testWebhooks is webhook endpoints and the deliveries of events to them.
func testWebhooks(t *testing.T, newStore NewStore) {
	t.Parallel()
	run(t, "KeyCheck", newStore, func(t *testing.T, b *bundle) {
		// The first check value stays; later callers get it back to open.
		if got, err := b.st.WebhookKeyCheck(b.ctx, "sealed-by-first"); err != nil || !slices.Equal(got, []string{"sealed-by-first"}) {
			t.Fatalf("first check: %q %v", got, err)
		}
		if got, err := b.st.WebhookKeyCheck(b.ctx, "sealed-by-second"); err != nil || !slices.Equal(got, []string{"sealed-by-first"}) {
			t.Fatalf("second check: %q %v", got, err)
		}
		// With endpoints, the oldest one's secret must open too.
		for _, e := range []*store.WebhookEndpoint{
			{ID: "whep_new", Workspace: "w", URL: "https://a.example/hook", Secret: "sealed-new", CreatedAt: t0.Add(time.Second)},
			{ID: "whep_old", Workspace: "x", URL: "https://b.example/hook", Secret: "sealed-old", CreatedAt: t0},
		} {
			if err := b.st.WebhookEndpointCreate(b.ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		if got, err := b.st.WebhookKeyCheck(b.ctx, "sealed-by-third"); err != nil || !slices.Equal(got, []string{"sealed-by-first", "sealed-old"}) {
			t.Fatalf("check with endpoints: %q %v", got, err)
		}
	})
	run(t, "Endpoints", newStore, func(t *testing.T, b *bundle) {
		e := &store.WebhookEndpoint{ID: "whep_1", Workspace: "w", URL: "https://a.example/hook", Description: "prod", Secret: "s1", CreatedAt: t0}
		if err := b.st.WebhookEndpointCreate(b.ctx, e); err != nil {
			t.Fatal(err)
		}
		if _, err := b.st.WebhookEndpointGet(b.ctx, "x", "whep_1"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("foreign get: %v", err)
		}
		off, reason := false, "receiver answered 410 Gone"
		got, err := b.st.WebhookEndpointUpdate(b.ctx, store.WebhookEndpointUpdateParams{Workspace: "w", ID: "whep_1", Now: t0.Add(time.Second), Enabled: &off, DisabledReason: reason})
		if err != nil || got.Enabled || got.DisabledReason != reason {
			t.Fatalf("disable: %+v %v", got, err)
		}
		bt := b.batch(t, "w", 1, t0)
		_ = bt
		if n, _ := b.st.DeliveriesPending(b.ctx, "whep_1"); n != 0 {
			t.Fatalf("a disabled endpoint got %d deliveries", n)
		}
		on, secret2 := true, "s2"
		got, err = b.st.WebhookEndpointUpdate(b.ctx, store.WebhookEndpointUpdateParams{Workspace: "w", ID: "whep_1", Now: t0.Add(2 * time.Second),
			Enabled: &on, Rotate: &secret2, PreviousUntil: t0.Add(time.Hour)})
		if err != nil || !got.Enabled || got.DisabledReason != "" || got.Secret != "s2" || got.PreviousSecret != "s1" || !got.PreviousExpiresAt.Equal(t0.Add(time.Hour)) {
			t.Fatalf("enable and rotate: %+v %v", got, err)
		}
		read, err := b.st.WebhookEndpointGet(b.ctx, "w", "whep_1")
		if err != nil || read.Secret != "s2" || read.PreviousSecret != "s1" || read.Description != "prod" {
			t.Fatalf("after update: %+v %v", read, err)
		}
		list, err := b.st.WebhookEndpointList(b.ctx, "w")
		if err != nil || len(list) != 1 {
			t.Fatalf("list: %v %v", list, err)
		}
		if err := b.st.WebhookEndpointDelete(b.ctx, "x", "whep_1"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("foreign delete: %v", err)
		}
		if err := b.st.WebhookEndpointDelete(b.ctx, "w", "whep_1"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.st.WebhookEndpointGet(b.ctx, "w", "whep_1"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("get after delete: %v", err)
		}
	})
	run(t, "Deliveries", newStore, func(t *testing.T, b *bundle) {
		ep := &store.WebhookEndpoint{ID: "whep_d", Workspace: "w", URL: "https://a.example/hook", Secret: "s", CreatedAt: t0}
		if err := b.st.WebhookEndpointCreate(b.ctx, ep); err != nil {
			t.Fatal(err)
		}
		bt := b.batch(t, "w", 1, t0) // writes message_batch.created, due at t0
		claim := func(now time.Time) []*store.Delivery {
			t.Helper()
			ds, err := b.st.DeliveriesClaim(b.ctx, store.DeliveriesClaimParams{Owner: "d", Limit: 10, Now: now, LeaseUntil: now.Add(time.Minute)})
			if err != nil {
				t.Fatal(err)
			}
			return ds
		}
		ds := claim(t0)
		if len(ds) != 1 || ds[0].Attempt != 1 || ds[0].Event.Type != store.EventBatchCreated || ds[0].Event.BatchID != bt.ID || ds[0].Endpoint.URL != ep.URL {
			t.Fatalf("claim: %+v", ds)
		}
		if again := claim(t0); len(again) != 0 {
			t.Fatal("a leased delivery was claimed twice")
		}
		d := ds[0]
		fail := store.DeliveryRecordParams{ID: d.ID, Owner: "d", Attempt: 1, Now: t0, State: store.DeliveryPending, RetryAt: t0.Add(5 * time.Second),
			Record: store.AttemptRecord{Status: 500, ErrorClass: "http_5xx", Duration: 3 * time.Millisecond, Response: []byte("boom"), Truncated: true, Error: "500 Internal Server Error"}}
		if err := b.st.DeliveryRecord(b.ctx, fail); err != nil {
			t.Fatal(err)
		}
		if err := b.st.DeliveryRecord(b.ctx, fail); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("recording the same attempt twice: %v", err)
		}
		if e, _ := b.st.WebhookEndpointGet(b.ctx, "w", ep.ID); e.FailingSince == nil {
			t.Fatal("a failure must mark the endpoint failing")
		}
		if got := claim(t0.Add(time.Second)); len(got) != 0 {
			t.Fatal("claimed before the retry was due")
		}
		if due, _ := b.st.DeliveryNextDue(b.ctx); !due.Equal(t0.Add(5 * time.Second)) {
			t.Fatalf("next due %v", due)
		}
		ds = claim(t0.Add(5 * time.Second))
		if len(ds) != 1 || ds[0].Attempt != 2 {
			t.Fatalf("retry claim: %+v", ds)
		}
		// A heartbeat keeps the lease (until t0+65s) past its first end.
		if err := b.st.DeliveriesHeartbeat(b.ctx, store.DeliveriesHeartbeatParams{Owner: "d", LeaseUntil: t0.Add(90 * time.Second)}); err != nil {
			t.Fatal(err)
		}
		if got, _ := b.st.DeliveriesClaim(b.ctx, store.DeliveriesClaimParams{Owner: "d2", Limit: 10, Now: t0.Add(70 * time.Second), LeaseUntil: t0.Add(3 * time.Minute)}); len(got) != 0 {
			t.Fatalf("claimed a heartbeated delivery: %+v", got)
		}
		// The lease lapses (the deliverer died): another takes it over, and the
		// first one's late record is refused.
		ds2, _ := b.st.DeliveriesClaim(b.ctx, store.DeliveriesClaimParams{Owner: "d2", Limit: 10, Now: t0.Add(2 * time.Minute), LeaseUntil: t0.Add(3 * time.Minute)})
		if len(ds2) != 1 || ds2[0].Attempt != 2 {
			t.Fatalf("takeover: %+v", ds2)
		}
		late := store.DeliveryRecordParams{ID: d.ID, Owner: "d", Attempt: 2, Now: t0, State: store.DeliverySucceeded}
		if err := b.st.DeliveryRecord(b.ctx, late); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("a lapsed lease recorded: %v", err)
		}
		ok := store.DeliveryRecordParams{ID: d.ID, Owner: "d2", Attempt: 2, Now: t0.Add(2 * time.Minute), State: store.DeliverySucceeded,
			Record: store.AttemptRecord{Status: 204, Duration: time.Millisecond}}
		if err := b.st.DeliveryRecord(b.ctx, ok); err != nil {
			t.Fatal(err)
		}
		if e, _ := b.st.WebhookEndpointGet(b.ctx, "w", ep.ID); e.FailingSince != nil {
			t.Fatal("a success must clear failing_since")
		}
		if n, _ := b.st.DeliveriesPending(b.ctx, ep.ID); n != 0 {
			t.Fatalf("%d deliveries still pending", n)
		}
		atts, err := b.st.DeliveryAttempts(b.ctx, "w", ep.ID, 10)
		if err != nil || len(atts) != 2 || atts[0].Status != 204 || atts[1].Status != 500 || string(atts[1].Response) != "boom" || atts[0].EventID == "" ||
			!atts[1].Truncated || atts[1].Error != "500 Internal Server Error" || atts[0].Truncated || atts[0].Error != "" {
			t.Fatalf("attempts: %+v %v", atts, err)
		}
		if foreign, _ := b.st.DeliveryAttempts(b.ctx, "x", ep.ID, 10); len(foreign) != 0 {
			t.Fatal("another workspace sees the attempts")
		}
		// Resend one delivery: due again, same event.
		if err := b.st.DeliveryResend(b.ctx, "w", d.ID, t0.Add(3*time.Minute)); err != nil {
			t.Fatal(err)
		}
		ds = claim(t0.Add(3 * time.Minute))
		if len(ds) != 1 || ds[0].ID != d.ID || ds[0].Attempt != 3 {
			t.Fatalf("resend: %+v", ds)
		}
		// Fail for good and disable: nothing is claimed for a disabled endpoint;
		// recover brings failed deliveries back.
		gone := store.DeliveryRecordParams{ID: d.ID, Owner: "d", Attempt: 3, Now: t0.Add(3 * time.Minute), State: store.DeliveryFailed,
			Record: store.AttemptRecord{Status: 410, ErrorClass: "http_4xx"}, Disable: "receiver answered 410 Gone"}
		if err := b.st.DeliveryRecord(b.ctx, gone); err != nil {
			t.Fatal(err)
		}
		if e, _ := b.st.WebhookEndpointGet(b.ctx, "w", ep.ID); e.Enabled || e.DisabledReason == "" {
			t.Fatalf("410 must disable: %+v", e)
		}
		if n, err := b.st.DeliveriesRecover(b.ctx, "w", ep.ID, t0, t0.Add(4*time.Minute)); err != nil || n != 1 {
			t.Fatalf("recover: %d %v", n, err)
		}
		if got := claim(t0.Add(4 * time.Minute)); len(got) != 0 {
			t.Fatal("claimed for a disabled endpoint")
		}
		on := true
		b.st.WebhookEndpointUpdate(b.ctx, store.WebhookEndpointUpdateParams{Workspace: "w", ID: ep.ID, Now: t0, Enabled: &on})
		if got := claim(t0.Add(4 * time.Minute)); len(got) != 1 {
			t.Fatal("a re-enabled endpoint's recovered delivery is not due")
		}
	})
	run(t, "DeliveriesPerEndpoint", newStore, func(t *testing.T, b *bundle) {
		dead := &store.WebhookEndpoint{ID: "whep_dead", Workspace: "w", URL: "https://dead.example/", Secret: "s", CreatedAt: t0}
		healthy := &store.WebhookEndpoint{ID: "whep_ok", Workspace: "w", URL: "https://ok.example/", Secret: "s", CreatedAt: t0,
			EventTypes: []string{store.EventBatchEnded}}
		for _, e := range []*store.WebhookEndpoint{dead, healthy} {
			if err := b.st.WebhookEndpointCreate(b.ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		for range 3 {
			b.batch(t, "w", 0, t0) // three message_batch.created, for the dead endpoint only
		}
		claim := func() map[string]int {
			ds, err := b.st.DeliveriesClaim(b.ctx, store.DeliveriesClaimParams{Owner: "d", Limit: 10, PerEndpoint: 1, Now: t0, LeaseUntil: t0.Add(time.Minute)})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]int{}
			for _, d := range ds {
				got[d.Endpoint.ID]++
			}
			return got
		}
		if got := claim(); got["whep_dead"] != 1 {
			t.Fatalf("first claim %v, want one for the dead endpoint", got)
		}
		if got := claim(); got["whep_dead"] != 0 {
			t.Fatalf("a second claim took more of an endpoint already at its cap: %v", got)
		}
		bt := b.batch(t, "w", 1, t0)
		c := b.claim(t, "o", 1, t0)
		b.complete(t, "o", t0, succeed(c[0])) // message_batch.ended for both endpoints
		_ = bt
		if got := claim(); got["whep_ok"] != 1 || got["whep_dead"] != 0 {
			t.Fatalf("the healthy endpoint must get its delivery while the dead one is at its cap: %v", got)
		}
	})
	// A disabled endpoint's pending deliveries wait and cannot be claimed,
	// so they are not due: before, the deliverer of every process, told
	// that a delivery was due in the past, claimed nothing every 5 ms for
	// as long as the endpoint stayed disabled.
	run(t, "DeliveryNextDueSkipsDisabled", newStore, func(t *testing.T, b *bundle) {
		for _, id := range []string{"whep_off", "whep_on"} {
			if err := b.st.WebhookEndpointCreate(b.ctx, &store.WebhookEndpoint{ID: id, Workspace: "w", URL: "https://" + id + ".example/", Secret: "s", CreatedAt: t0}); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := b.st.EventTestInsert(b.ctx, "w", "whep_off", t0); err != nil {
			t.Fatal(err)
		}
		off := false
		if _, err := b.st.WebhookEndpointUpdate(b.ctx, store.WebhookEndpointUpdateParams{Workspace: "w", ID: "whep_off", Now: t0, Enabled: &off, DisabledReason: "receiver answered 410 Gone"}); err != nil {
			t.Fatal(err)
		}
		if due, err := b.st.DeliveryNextDue(b.ctx); err != nil || !due.IsZero() {
			t.Fatalf("next due %v (%v) with only a disabled endpoint's delivery pending, want none", due, err)
		}
		if _, _, err := b.st.EventTestInsert(b.ctx, "w", "whep_on", t0.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		if due, err := b.st.DeliveryNextDue(b.ctx); err != nil || !due.Equal(t0.Add(time.Second)) {
			t.Fatalf("next due %v (%v), want the enabled endpoint's at %v", due, err, t0.Add(time.Second))
		}
	})
	// The cap holds for every deliverer together, not for each one alone:
	// the processes of a cluster claiming for one endpoint at once never
	// hold more than PerEndpoint of its deliveries between them. Before, on
	// PostgreSQL, each claim counted the endpoint's leases in a snapshot
	// that did not see the others' claims, so each took a full cap.
	run(t, "DeliveriesPerEndpointAcrossOwners", newStore, func(t *testing.T, b *bundle) {
		// Each round races fresh endpoints: only claims that overlap
		// before the first commit can exceed the cap, so one race alone
		// may miss the defect.
		const perEndpoint, owners, claims, due, rounds = 3, 8, 2, 8, 10
		now := t0.Add(time.Second)
		for r := range rounds {
			eps := []string{fmt.Sprintf("whep_%da", r), fmt.Sprintf("whep_%db", r)}
			for _, id := range eps {
				if err := b.st.WebhookEndpointCreate(b.ctx, &store.WebhookEndpoint{ID: id, Workspace: "w", URL: "https://" + id + ".example/", Secret: "s", CreatedAt: t0}); err != nil {
					t.Fatal(err)
				}
				for range due {
					if _, _, err := b.st.EventTestInsert(b.ctx, "w", id, t0); err != nil {
						t.Fatal(err)
					}
				}
			}
			var mu sync.Mutex
			held := map[string]int{} // endpoint → deliveries leased, by every owner
			race(t, owners, func(i int) error {
				for range claims {
					ds, err := b.st.DeliveriesClaim(b.ctx, store.DeliveriesClaimParams{Owner: fmt.Sprintf("d%d", i), Limit: 10, PerEndpoint: perEndpoint,
						Now: now, LeaseUntil: now.Add(time.Hour)})
					if err != nil {
						return err
					}
					mu.Lock()
					for _, d := range ds {
						held[d.Endpoint.ID]++
					}
					mu.Unlock()
				}
				return nil
			})
			// Someone always got each endpoint: a claim may pass over an
			// endpoint another claim holds, but not every claim does.
			for _, id := range eps {
				if held[id] != perEndpoint {
					t.Fatalf("round %d: %d owners claiming together leased %d deliveries of %s, want its cap %d", r, owners, held[id], id, perEndpoint)
				}
			}
		}
	})
	// Events that happened while an endpoint was
	// disabled got no delivery for it; recover since T gives it one for every
	// event since T it subscribes to (and that happened after it was created),
	// once, along with its failed deliveries; another endpoint's test event is
	// not its own.
	run(t, "DeliveriesRecoverMissing", newStore, func(t *testing.T, b *bundle) {
		early := b.batch(t, "w", 0, t0) // before the endpoints exist
		all := &store.WebhookEndpoint{ID: "whep_all", Workspace: "w", URL: "https://a.example/", Secret: "s", CreatedAt: t0.Add(time.Second)}
		ended := &store.WebhookEndpoint{ID: "whep_ended", Workspace: "w", URL: "https://b.example/", Secret: "s", CreatedAt: t0.Add(time.Second),
			EventTypes: []string{store.EventBatchEnded}}
		for _, e := range []*store.WebhookEndpoint{all, ended} {
			if err := b.st.WebhookEndpointCreate(b.ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		off, on := false, true
		for _, id := range []string{all.ID, ended.ID} {
			if _, err := b.st.WebhookEndpointUpdate(b.ctx, store.WebhookEndpointUpdateParams{Workspace: "w", ID: id, Now: t0.Add(2 * time.Second), Enabled: &off, DisabledReason: "receiver answered 410 Gone"}); err != nil {
				t.Fatal(err)
			}
		}
		// While both are disabled: a batch is created and ends, and the other
		// endpoint gets a test event of its own.
		bt := b.batch(t, "w", 1, t0.Add(3*time.Second))
		c := b.claim(t, "o", 1, t0.Add(3*time.Second))
		b.complete(t, "o", t0.Add(4*time.Second), succeed(c[0]))
		if _, _, err := b.st.EventTestInsert(b.ctx, "w", ended.ID, t0.Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{all.ID, ended.ID} {
			if _, err := b.st.WebhookEndpointUpdate(b.ctx, store.WebhookEndpointUpdateParams{Workspace: "w", ID: id, Now: t0.Add(6 * time.Second), Enabled: &on}); err != nil {
				t.Fatal(err)
			}
		}
		now := t0.Add(time.Minute)
		claimAll := func() map[string][]string {
			t.Helper()
			ds, err := b.st.DeliveriesClaim(b.ctx, store.DeliveriesClaimParams{Owner: "d", Limit: 100, Now: now, LeaseUntil: now.Add(time.Minute)})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string][]string{}
			for _, d := range ds {
				got[d.Endpoint.ID] = append(got[d.Endpoint.ID], d.Event.Type+" "+d.Event.BatchID)
				if err := b.st.DeliveryRecord(b.ctx, store.DeliveryRecordParams{ID: d.ID, Owner: "d", Attempt: d.Attempt, Now: now, State: store.DeliverySucceeded,
					Record: store.AttemptRecord{Status: 204}}); err != nil {
					t.Fatal(err)
				}
			}
			return got
		}
		// The test event of whep_ended was delivered when it was sent.
		if got := claimAll(); len(got[all.ID]) != 0 || len(got[ended.ID]) != 1 {
			t.Fatalf("before recover: %v, want only whep_ended's test event", got)
		}
		for id, want := range map[string]int{all.ID: 2, ended.ID: 1} {
			if n, err := b.st.DeliveriesRecover(b.ctx, "w", id, t0, now); err != nil || n != want {
				t.Fatalf("recover %s: %d (%v), want %d", id, n, err, want)
			}
		}
		got := claimAll()
		if fmt.Sprint(got[all.ID]) != fmt.Sprintf("[message_batch.created %s message_batch.ended %s]", bt.ID, bt.ID) {
			t.Fatalf("whep_all got %v, want the created and ended of %s (not %s, older than the endpoint)", got[all.ID], bt.ID, early.ID)
		}
		if fmt.Sprint(got[ended.ID]) != fmt.Sprintf("[message_batch.ended %s]", bt.ID) {
			t.Fatalf("whep_ended got %v, want only the ended of %s", got[ended.ID], bt.ID)
		}
		// Once only: everything is delivered now.
		for _, id := range []string{all.ID, ended.ID} {
			if n, err := b.st.DeliveriesRecover(b.ctx, "w", id, t0, now); err != nil || n != 0 {
				t.Fatalf("second recover %s: %d (%v), want 0", id, n, err)
			}
		}
		// Recover since a time after the batch: nothing.
		b.st.WebhookEndpointUpdate(b.ctx, store.WebhookEndpointUpdateParams{Workspace: "w", ID: all.ID, Now: now, Enabled: &off})
		late := b.batch(t, "w", 0, now)
		b.st.WebhookEndpointUpdate(b.ctx, store.WebhookEndpointUpdateParams{Workspace: "w", ID: all.ID, Now: now, Enabled: &on})
		if n, _ := b.st.DeliveriesRecover(b.ctx, "w", all.ID, now.Add(time.Second), now); n != 0 {
			t.Fatalf("recover since after %s: %d", late.ID, n)
		}
		if n, _ := b.st.DeliveriesRecover(b.ctx, "w", all.ID, now, now); n != 1 {
			t.Fatalf("recover of %s's created: %d, want 1", late.ID, n)
		}
	})
	// IDsNeverReused deletes the newest event, delivery and attempt (the
	// retention sweep prunes them) and inserts again: the new rows get new ids.
	// A reused delivery id would make a receiver's dedup, or a resend by id,
	// hit another delivery.
	run(t, "IDsNeverReused", newStore, func(t *testing.T, b *bundle) {
		ep := &store.WebhookEndpoint{ID: "whep_ids", Workspace: "w", URL: "https://a.example/hook", Secret: "s", CreatedAt: t0}
		if err := b.st.WebhookEndpointCreate(b.ctx, ep); err != nil {
			t.Fatal(err)
		}
		// one inserts a test event and records one attempt of its delivery at
		// now, returning the event seq, delivery id and attempt id.
		one := func(now time.Time) (int64, int64, int64) {
			t.Helper()
			evID, dID, err := b.st.EventTestInsert(b.ctx, "w", ep.ID, now)
			if err != nil {
				t.Fatal(err)
			}
			evs, err := b.st.EventsList(b.ctx, store.EventsListParams{Workspace: "w", BatchID: evID, Limit: 10})
			if err != nil || len(evs) != 1 {
				t.Fatalf("events: %d %v", len(evs), err)
			}
			ds, err := b.st.DeliveriesClaim(b.ctx, store.DeliveriesClaimParams{Owner: "d", Limit: 10, Now: now, LeaseUntil: now.Add(time.Minute)})
			if err != nil || len(ds) != 1 || ds[0].ID != dID {
				t.Fatalf("claim: %+v %v", ds, err)
			}
			if err := b.st.DeliveryRecord(b.ctx, store.DeliveryRecordParams{ID: dID, Owner: "d", Attempt: 1, Now: now,
				State: store.DeliverySucceeded, Record: store.AttemptRecord{Status: 204}}); err != nil {
				t.Fatal(err)
			}
			atts, err := b.st.DeliveryAttempts(b.ctx, "w", ep.ID, 1)
			if err != nil || len(atts) != 1 || atts[0].DeliveryID != dID {
				t.Fatalf("attempts: %+v %v", atts, err)
			}
			return evs[0].Seq, dID, atts[0].ID
		}
		ev1, d1, a1 := one(t0)
		// The retention sweep prunes the event with its delivery and attempt:
		// they were the newest rows of their tables.
		if _, err := b.st.BatchesArchive(b.ctx, store.BatchesArchiveParams{Now: t0.Add(time.Hour), CreatedBefore: t0.Add(time.Minute), Lead: b.lead(t)}); err != nil {
			t.Fatal(err)
		}
		if atts, _ := b.st.DeliveryAttempts(b.ctx, "w", ep.ID, 10); len(atts) != 0 {
			t.Fatalf("%d attempts survived the prune", len(atts))
		}
		ev2, d2, a2 := one(t0.Add(2 * time.Hour))
		for _, c := range []struct {
			name        string
			first, next int64
		}{{"event seq", ev1, ev2}, {"delivery id", d1, d2}, {"attempt id", a1, a2}} {
			if c.next <= c.first {
				t.Errorf("%s reused: %d after %d was deleted", c.name, c.next, c.first)
			}
		}
	})
}

// testKeys is API keys.
func testKeys(t *testing.T, newStore NewStore) {
	t.Parallel()
	run(t, "Keys", newStore, func(t *testing.T, b *bundle) {
		active, err := b.st.KeysActive(b.ctx)
		if err != nil || active {
			t.Fatalf("fresh store has active keys: %v %v", active, err)
		}
		if _, err := b.st.KeyCreate(b.ctx, store.KeyCreateParams{ID: "key_1", Workspace: "a", Hash: "h1", Prefix: "sk-1", CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		if ws, err := b.st.KeyLookup(b.ctx, "h1"); err != nil || ws != "a" {
			t.Fatalf("lookup: %q %v", ws, err)
		}
		if _, err := b.st.KeyLookup(b.ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("lookup unknown: %v", err)
		}
		k, err := b.st.KeyRevoke(b.ctx, "sk-1", t0)
		if err != nil || k.RevokedAt == nil || k.ID != "key_1" {
			t.Fatalf("revoke: %+v %v", k, err)
		}
		if _, err := b.st.KeyLookup(b.ctx, "h1"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("revoked key still works: %v", err)
		}
		if active, _ := b.st.KeysActive(b.ctx); active {
			t.Fatal("only a revoked key, yet keys are active")
		}
		keys, err := b.st.KeyList(b.ctx)
		if err != nil || len(keys) != 1 {
			t.Fatalf("list: %v %v", keys, err)
		}
		if _, err := b.st.KeyRevoke(b.ctx, "nope", t0); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("revoke unknown: %v", err)
		}
	})
}

// testIdempotency is Idempotency-Key reservations.
func testIdempotency(t *testing.T, newStore NewStore) {
	t.Parallel()
	run(t, "IdempotencyKeys", newStore, func(t *testing.T, b *bundle) {
		reserve := func(ws, key string, now time.Time) *store.Idempotency {
			t.Helper()
			held, err := b.st.IdempotencyReserve(b.ctx, store.IdempotencyReserveParams{Workspace: ws, Key: key, Now: now, TTL: 24 * time.Hour, StaleAfter: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			return held
		}
		if held := reserve("a", "k", t0); held != nil {
			t.Fatalf("a new key is held: %+v", held)
		}
		if held := reserve("a", "k", t0.Add(time.Second)); held == nil || held.BatchID != "" {
			t.Fatalf("a reserved key: %+v, want a running reservation", held)
		}
		if held := reserve("b", "k", t0); held != nil {
			t.Fatalf("a key of workspace a is held in workspace b: %+v", held)
		}
		rec := store.IdempotencyRecordParams{Workspace: "a", Key: "k", BodyHash: "h1", BatchID: "msgbatch_1"}
		if err := b.st.IdempotencyRecord(b.ctx, rec); err != nil {
			t.Fatal(err)
		}
		if err := b.st.IdempotencyRecord(b.ctx, rec); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("recording twice: %v, want ErrConflict", err)
		}
		if err := b.st.IdempotencyRelease(b.ctx, "a", "k"); err != nil { // a recorded key is not released
			t.Fatal(err)
		}
		if held := reserve("a", "k", t0.Add(23*time.Hour)); held == nil || held.BatchID != "msgbatch_1" || held.BodyHash != "h1" {
			t.Fatalf("a recorded key within the TTL: %+v", held)
		}
		// After the TTL the key is free; a new reservation replaces the old.
		if held := reserve("a", "k", t0.Add(25*time.Hour)); held != nil {
			t.Fatalf("an expired key is still held: %+v", held)
		}
		// A reservation whose request never finished lapses after StaleAfter.
		if held := reserve("a", "k", t0.Add(25*time.Hour+2*time.Hour)); held != nil {
			t.Fatalf("a stale reservation still blocks the key: %+v", held)
		}
		// A released reservation frees the key at once.
		if err := b.st.IdempotencyRelease(b.ctx, "a", "k"); err != nil {
			t.Fatal(err)
		}
		if held := reserve("a", "k", t0.Add(27*time.Hour+time.Second)); held != nil {
			t.Fatalf("a released key is still held: %+v", held)
		}
	})
	// Requests racing with one new key: exactly one reserves it.
	run(t, "IdempotencyReserveRace", newStore, func(t *testing.T, b *bundle) {
		const tries = 8
		var won atomic.Int64
		race(t, tries, func(int) error {
			held, err := b.st.IdempotencyReserve(b.ctx, store.IdempotencyReserveParams{Workspace: "a", Key: "k", Now: t0, TTL: 24 * time.Hour, StaleAfter: time.Hour})
			if err == nil && held == nil {
				won.Add(1)
			}
			return err
		})
		if won.Load() != 1 {
			t.Fatalf("%d of %d racing requests reserved one key", won.Load(), tries)
		}
	})
}

// routedBatch creates a batch whose requests i go to model models[i%len].
func (b *bundle) routedBatch(t *testing.T, n int, models []string, route func(string) string) *store.Batch {
	t.Helper()
	bt, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{ID: fmt.Sprintf("msgbatch_routed_%d", seq.Add(1)), Workspace: "w", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	var reqs []store.NewRequest
	for i := range n {
		m := models[i%len(models)]
		reqs = append(reqs, store.NewRequest{CustomID: fmt.Sprint("r", i), Params: json.RawMessage(`{}`), Model: m, Backend: route(m)})
	}
	if err := b.st.RequestsInsert(b.ctx, store.RequestsInsertParams{BatchSeq: bt.Seq, Requests: reqs}); err != nil {
		t.Fatal(err)
	}
	if bt, err = b.st.BatchPublish(b.ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: int64(n)}); err != nil {
		t.Fatal(err)
	}
	return bt
}

func (b *bundle) claimFor(t *testing.T, backend string, limit int) []store.ClaimedRequest {
	t.Helper()
	c, err := b.st.RequestsClaim(b.ctx, store.RequestsClaimParams{Backend: backend, Owner: "o", Limit: limit, Now: t0, LeaseUntil: t0.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// race runs fn(0..n-1) at once, released together, and fails t with the
// first error any returns.
func race(t *testing.T, n int, fn func(i int) error) {
	t.Helper()
	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- fn(i)
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// testLeadership is the leader lease that picks the one process running
// the chores, and the guard that refuses a stale leader's chores.
func testLeadership(t *testing.T, newStore NewStore) {
	acquire := func(t *testing.T, b *bundle, owner string, now time.Time) *store.Leader {
		t.Helper()
		l, err := b.st.LeaderAcquire(b.ctx, store.LeaderAcquireParams{Name: store.LeaderChores, Owner: owner, Now: now, Until: now.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	lead := func(l *store.Leader) store.Lead { return store.Lead{Name: l.Name, Owner: l.Owner, Term: l.Term} }
	run(t, "TwoContendersOneWins", newStore, func(t *testing.T, b *bundle) {
		var won atomic.Int64
		holders := make([]string, 8)
		race(t, len(holders), func(i int) error {
			l, err := b.st.LeaderAcquire(b.ctx, store.LeaderAcquireParams{Name: store.LeaderChores, Owner: fmt.Sprint("p", i), Now: t0, Until: t0.Add(time.Minute)})
			if err != nil {
				return err
			}
			holders[i] = l.Owner
			if l.Owner == fmt.Sprint("p", i) {
				won.Add(1)
			}
			return nil
		})
		if won.Load() != 1 {
			t.Fatalf("%d contenders won, want 1", won.Load())
		}
		for _, h := range holders {
			if h != holders[0] {
				t.Fatalf("contenders saw different leaders: %v", holders)
			}
		}
		l := acquire(t, b, holders[0], t0.Add(30*time.Second))
		if l.Owner != holders[0] || l.Term != 1 || !l.Expires.Equal(t0.Add(90*time.Second)) {
			t.Fatalf("renewal: %+v", l)
		}
	})
	run(t, "LapseHandsOverWithNextTerm", newStore, func(t *testing.T, b *bundle) {
		a := acquire(t, b, "a", t0)
		if got := acquire(t, b, "b", t0.Add(59*time.Second)); got.Owner != "a" || got.Term != a.Term {
			t.Fatalf("b took a live lease: %+v", got)
		}
		bl := acquire(t, b, "b", t0.Add(time.Minute))
		if bl.Owner != "b" || bl.Term != a.Term+1 {
			t.Fatalf("after the lapse: %+v, want b in term %d", bl, a.Term+1)
		}
		// The old leader learns it lost on its next renewal.
		if got := acquire(t, b, "a", t0.Add(61*time.Second)); got.Owner != "b" {
			t.Fatalf("the stale leader renewed: %+v", got)
		}
		// A release hands over at once; a stale release changes nothing.
		if err := b.st.LeaderRelease(b.ctx, lead(a)); err != nil {
			t.Fatal(err)
		}
		if got := acquire(t, b, "a", t0.Add(62*time.Second)); got.Owner != "b" {
			t.Fatalf("a stale release freed the lease: %+v", got)
		}
		if err := b.st.LeaderRelease(b.ctx, lead(bl)); err != nil {
			t.Fatal(err)
		}
		if got := acquire(t, b, "a", t0.Add(63*time.Second)); got.Owner != "a" || got.Term != bl.Term+1 {
			t.Fatalf("after release: %+v", got)
		}
	})
	run(t, "StaleLeaderWritesRefused", newStore, func(t *testing.T, b *bundle) {
		bt := b.batch(t, "w", 2, t0) // expires at t0+24h
		if _, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{ID: "msgbatch_upload", Workspace: "w", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		ended := b.batch(t, "w", 1, t0)
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: ended.ID, Now: t0}); err != nil {
			t.Fatal(err)
		}
		c := b.claim(t, "dead", 1, t0)
		_ = c
		ub, err := b.st.UpstreamBatchInsert(b.ctx, store.UpstreamBatchInsertParams{Backend: "up", Owner: "dead", BatchSeq: bt.Seq, RequestIDs: []int64{c[0].ID}, Now: t0, LeaseUntil: t0})
		if err != nil {
			t.Fatal(err)
		}
		exp := bt.ExpiresAt
		old := acquire(t, b, "old", exp.Add(-30*time.Second))
		// The lease lapses while "old" believes it leads; "new" takes over.
		now := exp.Add(time.Minute)
		if got := acquire(t, b, "new", now); got.Owner != "new" {
			t.Fatalf("takeover: %+v", got)
		}
		stale := lead(old)
		checks := map[string]error{}
		_, checks["BatchesExpire"] = b.st.BatchesExpire(b.ctx, store.BatchesExpireParams{Now: now, Lead: stale})
		_, checks["BatchesArchive"] = b.st.BatchesArchive(b.ctx, store.BatchesArchiveParams{Now: now, CreatedBefore: now, Lead: stale})
		_, checks["RequestsPurge"] = b.st.RequestsPurge(b.ctx, store.RequestsPurgeParams{Limit: 100, Now: now, Lead: stale})
		_, checks["BatchesDiscardStale"] = b.st.BatchesDiscardStale(b.ctx, store.BatchesDiscardStaleParams{Now: now, Lead: stale})
		checks["UpstreamBatchAdopt"] = b.st.UpstreamBatchAdopt(b.ctx, store.UpstreamBatchAdoptParams{ID: ub.ID, Owner: "old", Now: now, LeaseUntil: now.Add(time.Minute), Lead: stale})
		// Even the right term is refused once its lease has lapsed.
		_, checks["BatchesExpire after the lapse"] = b.st.BatchesExpire(b.ctx, store.BatchesExpireParams{Now: now.Add(2 * time.Minute),
			Lead: store.Lead{Name: store.LeaderChores, Owner: "new", Term: old.Term + 1}})
		for verb, err := range checks {
			if !errors.Is(err, store.ErrNotLeader) {
				t.Errorf("%s by a stale leader: want ErrNotLeader, got %v", verb, err)
			}
		}
		if got := b.get(t, bt); got.Status != store.StatusInProgress || got.Counts.Expired != 0 {
			t.Fatalf("a stale leader expired the batch: %+v", got)
		}
		if got := b.get(t, ended); got.ArchivedAt != nil {
			t.Fatal("a stale leader archived a batch")
		}
		if list, _ := b.st.UpstreamBatchesList(b.ctx, "up"); len(list) != 1 || list[0].Owner != "dead" {
			t.Fatalf("a stale leader adopted: %+v", list)
		}
		// The current leader's chores go through.
		cur := store.Lead{Name: store.LeaderChores, Owner: "new", Term: old.Term + 1}
		chs, err := b.st.BatchesExpire(b.ctx, store.BatchesExpireParams{Now: now, Lead: cur})
		if err != nil || len(chs) != 1 || chs[0].Batch.Counts.Expired != 1 {
			t.Fatalf("the leader's expiry: %+v %v", chs, err)
		}
		if n, err := b.st.BatchesDiscardStale(b.ctx, store.BatchesDiscardStaleParams{Now: now, Lead: cur}); err != nil || n != 1 {
			t.Fatalf("the leader's discard: %d %v", n, err)
		}
		if err := b.st.UpstreamBatchAdopt(b.ctx, store.UpstreamBatchAdoptParams{ID: ub.ID, Owner: "new", Now: now, LeaseUntil: now.Add(time.Minute), Lead: cur}); err != nil {
			t.Fatalf("the leader's adoption: %v", err)
		}
	})
}

// testLimitShares is the split of a backend's limits between the live
// processes of a cluster: the holdings never sum above the limit, a
// shrinking owner drains before another grows, a lapsed or released
// owner's share goes to the others.
func testLimitShares(t *testing.T, newStore NewStore) {
	t.Parallel()
	limit := store.Amounts{Concurrency: 8, RequestsPerMinute: 100, OutputTokensPerMinute: 1000}
	// renew renews owner's share of backend "b" holding held at now and
	// returns its grant.
	renew := func(t *testing.T, b *bundle, owner string, held store.Amounts, now time.Time) store.Amounts {
		t.Helper()
		g, err := b.st.LimitSharesRenew(b.ctx, store.LimitSharesRenewParams{Owner: owner, Now: now, Until: now.Add(time.Minute),
			Claims: []store.LimitShareClaim{{Backend: "b", Limit: limit, Held: held}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(g) != 1 {
			t.Fatalf("%d grants for 1 claim", len(g))
		}
		return g[0]
	}
	sum := func(m map[string]store.Amounts) store.Amounts {
		var s store.Amounts
		for _, a := range m {
			s.Concurrency += a.Concurrency
			s.RequestsPerMinute += a.RequestsPerMinute
			s.InputTokensPerMinute += a.InputTokensPerMinute
			s.OutputTokensPerMinute += a.OutputTokensPerMinute
		}
		return s
	}
	within := func(s store.Amounts) bool {
		return s.Concurrency <= limit.Concurrency && s.RequestsPerMinute <= limit.RequestsPerMinute &&
			s.InputTokensPerMinute == 0 && s.OutputTokensPerMinute <= limit.OutputTokensPerMinute
	}
	run(t, "SharesSumWithinLimitThreeContenders", newStore, func(t *testing.T, b *bundle) {
		owners := []string{"p0", "p1", "p2"}
		held := map[string]store.Amounts{} // each applies its grant and drains at once
		var mu sync.Mutex
		for round := range 6 {
			now := t0.Add(time.Duration(round) * time.Second)
			race(t, len(owners), func(i int) error {
				mu.Lock()
				h := held[owners[i]]
				mu.Unlock()
				g, err := b.st.LimitSharesRenew(b.ctx, store.LimitSharesRenewParams{Owner: owners[i], Now: now, Until: now.Add(time.Minute),
					Claims: []store.LimitShareClaim{{Backend: "b", Limit: limit, Held: h}}})
				if err != nil {
					return err
				}
				mu.Lock()
				held[owners[i]] = g[0]
				mu.Unlock()
				return nil
			})
			if s := sum(held); !within(s) {
				t.Fatalf("round %d: grants %v sum to %+v, above the limit %+v", round, held, s, limit)
			}
		}
		// Settled: the fair shares, the remainder to the first by name.
		want := map[string]store.Amounts{
			"p0": {Concurrency: 3, RequestsPerMinute: 34, OutputTokensPerMinute: 334},
			"p1": {Concurrency: 3, RequestsPerMinute: 33, OutputTokensPerMinute: 333},
			"p2": {Concurrency: 2, RequestsPerMinute: 33, OutputTokensPerMinute: 333},
		}
		for o, w := range want {
			if held[o] != w {
				t.Errorf("%s settled at %+v, want %+v", o, held[o], w)
			}
		}
	})
	run(t, "ShrinkingOwnerDrainsFirst", newStore, func(t *testing.T, b *bundle) {
		all := renew(t, b, "a", store.Amounts{}, t0)
		if all != limit {
			t.Fatalf("alone: %+v, want the whole limit %+v", all, limit)
		}
		// b arrives while a holds everything: b gets nothing yet.
		if g := renew(t, b, "b", store.Amounts{}, t0.Add(time.Second)); g != (store.Amounts{}) {
			t.Fatalf("b grew while a held the whole limit: %+v", g)
		}
		// a is told to shrink but still has 8 in flight: b must wait.
		half := store.Amounts{Concurrency: 4, RequestsPerMinute: 50, OutputTokensPerMinute: 500}
		if g := renew(t, b, "a", all, t0.Add(2*time.Second)); g != half {
			t.Fatalf("a's grant with b alive: %+v, want %+v", g, half)
		}
		if g := renew(t, b, "b", store.Amounts{}, t0.Add(3*time.Second)); g.Concurrency != 0 {
			t.Fatalf("b grew before a drained: %+v", g)
		}
		// a drained down to its share: now b grows to its own.
		renew(t, b, "a", half, t0.Add(4*time.Second))
		if g := renew(t, b, "b", store.Amounts{}, t0.Add(5*time.Second)); g != half {
			t.Fatalf("b after a drained: %+v, want %+v", g, half)
		}
		// A release hands a's share over at once.
		if err := b.st.LimitSharesRelease(b.ctx, "a"); err != nil {
			t.Fatal(err)
		}
		if g := renew(t, b, "b", half, t0.Add(6*time.Second)); g != limit {
			t.Fatalf("b after a released: %+v, want %+v", g, limit)
		}
	})
	run(t, "LapsedOwnerShareRedistributed", newStore, func(t *testing.T, b *bundle) {
		held := map[string]store.Amounts{}
		for round := range 3 {
			for _, o := range []string{"a", "b", "c"} {
				held[o] = renew(t, b, o, held[o], t0.Add(time.Duration(round)*time.Second))
			}
		}
		if held["c"].Concurrency != 2 {
			t.Fatalf("settled at %v", held)
		}
		// c dies: its lease (a minute from its last renewal at t0+2s)
		// lapses while a and b renew theirs; they share the limit.
		delete(held, "c")
		for _, o := range []string{"a", "b"} {
			held[o] = renew(t, b, o, held[o], t0.Add(30*time.Second))
		}
		if held["a"].Concurrency != 3 {
			t.Fatalf("a grew while c's lease was live: %v", held)
		}
		for round := range 3 { // grow, drain, grow
			now := t0.Add(65*time.Second + time.Duration(round)*time.Second)
			for _, o := range []string{"a", "b"} {
				held[o] = renew(t, b, o, held[o], now)
			}
		}
		for _, o := range []string{"a", "b"} {
			if held[o].Concurrency != 4 || held[o].RequestsPerMinute != 50 {
				t.Fatalf("%s after c lapsed: %+v, want half", o, held[o])
			}
		}
		// c comes back after its lease lapsed: a and b took its share, so
		// it is granted nothing until they drain to a third each.
		if g := renew(t, b, "c", store.Amounts{Concurrency: 2}, t0.Add(70*time.Second)); g.Concurrency != 0 {
			t.Fatalf("c came back and was granted %+v above the limit", g)
		}
	})
	run(t, "BackendsApart", newStore, func(t *testing.T, b *bundle) {
		g, err := b.st.LimitSharesRenew(b.ctx, store.LimitSharesRenewParams{Owner: "a", Now: t0, Until: t0.Add(time.Minute),
			Claims: []store.LimitShareClaim{{Backend: "x", Limit: store.Amounts{Concurrency: 5}}, {Backend: "y", Limit: store.Amounts{Concurrency: 7}}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(g) != 2 || g[0].Concurrency != 5 || g[1].Concurrency != 7 {
			t.Fatalf("grants %+v", g)
		}
		// b on backend x only: a's holding of y is no business of b's.
		g, err = b.st.LimitSharesRenew(b.ctx, store.LimitSharesRenewParams{Owner: "b", Now: t0, Until: t0.Add(time.Minute),
			Claims: []store.LimitShareClaim{{Backend: "y", Limit: store.Amounts{Concurrency: 7}}, {Backend: "z", Limit: store.Amounts{Concurrency: 3}}}})
		if err != nil {
			t.Fatal(err)
		}
		if g[0].Concurrency != 0 || g[1].Concurrency != 3 {
			t.Fatalf("b's grants %+v, want 0 of y (a holds it all) and all of z", g)
		}
	})
}
