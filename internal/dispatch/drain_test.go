package dispatch

import (
	"context"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// TestStopKeepsLeasesOfRequestsInFlight: a graceful stop lets the requests
// in flight finish, and keeps their leases meanwhile, so that no other
// process (here: the test, sweeping and claiming as one would) rescues and
// sends them again while they run, and their outcomes are written by the
// stopping process. Before, the heartbeat stopped with the claiming: a
// request that ran longer than a lease into the stop (the default stop
// waits 30 s, the default lease is 15 s) was rescued and claimed again
// elsewhere, sent twice, and the stopping process's result was refused.
func TestStopKeepsLeasesOfRequestsInFlight(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	gate := newGateBackend()
	// A second, heartbeats every third of it: a loaded machine would have
	// to hold the heartbeat back for over 600 ms to fail this wrongly.
	const lease = time.Second
	d := startDispatcher(t, st, gate, Config{Concurrency: 1, ClaimAhead: 1, PollInterval: 5 * time.Millisecond, Lease: lease})
	b := publish(t, st, time.Now(), time.Hour, prompts("a0")...)
	d.Wake()
	if got := gate.nextStarted(t); got != "a0" {
		t.Fatalf("first call %q, want a0", got)
	}
	stopped := stopInBackground(d)
	// a0 runs on for several leases into the stop.
	time.Sleep(3 * lease)
	ctx := context.Background()
	now := time.Now()
	if _, err := st.RequestsRescue(ctx, store.RequestsRescueParams{Now: now}); err != nil {
		t.Fatal(err)
	}
	claimed, err := st.RequestsClaim(ctx, store.RequestsClaimParams{Backend: "gate", Owner: "other", Limit: 10, Now: now, LeaseUntil: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if len(claimed) != 0 {
		t.Errorf("another process claimed %d requests still in flight in the stopping one", len(claimed))
	}
	gate.release()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("Stop did not return")
	}
	if got := getBatch(t, st, b); got.Status != store.StatusEnded || got.Counts != (store.Counts{Succeeded: 1}) {
		t.Errorf("after the stop the batch is %s with %+v, want ended with the result of the call that ran", got.Status, got.Counts)
	}
}
