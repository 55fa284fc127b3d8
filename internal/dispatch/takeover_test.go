package dispatch

import (
	"context"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/leader"
	"github.com/batchd/batchd/internal/store"
)

// TestLeaderTakeoverAtLapse: a process that does not lead contends for the
// chores again when the leader's lease lapses, not at its next poll: a
// dead leader is replaced within its lease. Before, the sweeper waited a
// whole PollInterval (here an hour) after seeing the lease held.
func TestLeaderTakeoverAtLapse(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	ctx := context.Background()
	// A leader that dies at once: its lease lapses in 300 ms, unrenewed.
	now := time.Now()
	if _, err := st.LeaderAcquire(ctx, store.LeaderAcquireParams{Name: store.LeaderChores, Owner: "dead", Now: now, Until: now.Add(300 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	el := leader.New(st, leader.Config{Owner: "heir", Lease: time.Hour})
	startDispatcher(t, st, newGateBackend(), Config{Owner: "heir", Leader: el, PollInterval: time.Hour, Lease: time.Hour})
	deadline := time.Now().Add(20 * time.Second)
	for {
		// A probe that never holds a lease (it would lapse as taken)
		// reads who holds it.
		now := time.Now()
		l, err := st.LeaderAcquire(ctx, store.LeaderAcquireParams{Name: store.LeaderChores, Owner: "probe", Now: now, Until: now})
		if err != nil {
			t.Fatal(err)
		}
		if l.Owner == "heir" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lease lapsed long ago and is still not taken over: held by %q", l.Owner)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
