package dispatch

import (
	"context"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// TestCanceledElsewhereFound: a batch is canceled in the store without the
// dispatcher being told (through another process whose notification was
// lost): its requests claimed ahead settle as canceled all the same, found
// by the dispatcher's periodic look or at once when RecheckCanceled asks,
// and never reach the backend. Before, they waited for the worker and were
// sent.
func TestCanceledElsewhereFound(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		lease   time.Duration // the look comes every third of it
		recheck bool
	}{
		{"periodic look", 600 * time.Millisecond, false},
		{"recheck", 48 * time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := newStore(t)
			gate := newGateBackend()
			d := startDispatcher(t, st, gate, Config{Concurrency: 1, ClaimAhead: 16, PollInterval: 5 * time.Millisecond, Lease: tt.lease})
			target := publish(t, st, time.Now(), time.Hour, prompts("t0", "t1", "t2", "t3")...)
			d.Wake()
			if got := gate.nextStarted(t); got != "t0" {
				t.Fatalf("first call %q, want t0", got)
			}
			waitQueued(t, d, 3)
			if _, err := st.BatchCancel(context.Background(), store.BatchCancelParams{Workspace: target.Workspace, ID: target.ID, Now: time.Now()}); err != nil {
				t.Fatal(err)
			}
			if tt.recheck {
				d.RecheckCanceled()
			}
			want := store.Counts{Processing: 1, Canceled: 3}
			waitBatch(t, st, target, "the queued requests settle as canceled", func(b *store.Batch) bool { return b.Counts == want })
			gate.release()
			got := waitBatch(t, st, target, "the batch ends", func(b *store.Batch) bool { return b.Status == store.StatusEnded })
			if want := (store.Counts{Succeeded: 1, Canceled: 3}); got.Counts != want {
				t.Errorf("counts %+v, want %+v", got.Counts, want)
			}
			if n := gate.calls.Load(); n != 1 {
				t.Errorf("%d calls reached the backend, want 1", n)
			}
		})
	}
}
