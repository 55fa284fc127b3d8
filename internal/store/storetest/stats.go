package storetest

import (
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// testStats is what the metrics read: batches by status and the requests
// waiting per backend, only those of batches in progress.
func testStats(t *testing.T, newStore NewStore) {
	t.Parallel()
	run(t, "Empty", newStore, func(t *testing.T, b *bundle) {
		st, err := b.st.Stats(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.BatchesByStatus) != 0 || len(st.Queues) != 0 {
			t.Errorf("empty store: %+v", st)
		}
	})
	run(t, "CountsByStatusAndBackend", newStore, func(t *testing.T, b *bundle) {
		route := func(m string) string { return map[string]string{"m1": "a", "m2": "b"}[m] }
		b.routedBatch(t, 5, []string{"m1", "m2"}, route) // a: 3, b: 2, created t0
		later := b.batch(t, "w", 4, t0.Add(time.Hour))   // backend "", created an hour later
		canceled := b.batch(t, "w", 3, t0.Add(-time.Hour))
		if _, err := b.st.BatchCancel(b.ctx, store.BatchCancelParams{Workspace: "w", ID: canceled.ID, Now: t0}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.st.BatchInsert(b.ctx, store.BatchInsertParams{ID: "msgbatch_stats_creating", Workspace: "w", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if got := b.claimFor(t, "a", 1); len(got) != 1 {
			t.Fatalf("claimed %d", len(got))
		}
		st, err := b.st.Stats(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.BatchesByStatus[store.StatusInProgress] != 2 || st.BatchesByStatus[store.StatusCreating] != 1 ||
			st.BatchesByStatus[store.StatusEnded]+st.BatchesByStatus[store.StatusCanceling] != 1 {
			t.Errorf("by status %v", st.BatchesByStatus)
		}
		want := []store.BackendQueue{{Backend: "", Pending: 4, Oldest: later.CreatedAt}, {Backend: "a", Pending: 2, Oldest: t0}, {Backend: "b", Pending: 2, Oldest: t0}}
		if len(st.Queues) != len(want) {
			t.Fatalf("queues %+v, want %+v", st.Queues, want)
		}
		for i, q := range st.Queues {
			if q.Backend != want[i].Backend || q.Pending != want[i].Pending || !q.Oldest.Equal(want[i].Oldest) {
				t.Errorf("queue %d = %+v, want %+v", i, q, want[i])
			}
		}
	})
}
