package dispatch

import (
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
)

func TestLeaseWatch(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const lease = 15 * time.Second
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	tests := []struct {
		name       string
		heartbeats []int // seconds after t0 at which heartbeats were sent
		claimedAt  int   // the request was queued then: lease until +15
		now        int
		lapsed     bool
	}{
		{"fresh claim", nil, 0, 10, false},
		{"claim's lease ran out, no heartbeat", nil, 0, 15, true},
		{"heartbeats keep it", []int{5, 10, 15, 20}, 0, 30, false},
		{"heartbeats stopped, lease ran out", []int{5, 10}, 0, 25, true},
		{"first heartbeat came after the claim's lease ended", []int{16}, 0, 17, true},
		{"first heartbeat in time", []int{14}, 0, 20, false},
		{"a gap between heartbeats lost it", []int{5, 21, 26}, 0, 27, true},
		{"claimed after the gap", []int{5, 21, 26}, 22, 27, false},
		{"claimed before the gap, its own lease bridged it", []int{5, 21, 26}, 10, 27, false},
		{"its lease ended exactly at the late heartbeat", []int{5, 21}, 6, 22, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := &leaseWatch{lease: lease}
			until := w.claimed(at(tt.claimedAt))
			for _, h := range tt.heartbeats {
				if got := w.heartbeat(at(h)); !got.Equal(at(h).Add(lease)) {
					t.Fatalf("heartbeat at %d asks for %s", h, got)
				}
			}
			if got := w.lapsed(until, at(tt.now)); got != tt.lapsed {
				t.Errorf("lapsed = %v, want %v", got, tt.lapsed)
			}
		})
	}
}

// TestLapsedLeaseNotSentTwice: requests claimed ahead whose lease lapsed
// while they waited for the only worker (the process stalled past its
// lease) are rescued and claimed again; the stale copies still queued are
// let go unsent, so each reaches the upstream once. Before, the worker sent
// the stale copies and then the new ones: a1 and a2 twice each, and the
// store kept one result of each.
func TestLapsedLeaseNotSentTwice(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	gate := newGateBackend()
	clock := &fakeClock{now: time.Now()}
	// Heartbeats every 20 s of real time never come during the test: the
	// fake clock's jump is the stall.
	d := startDispatcher(t, st, gate, Config{Concurrency: 1, ClaimAhead: 16, PollInterval: 5 * time.Millisecond, Lease: time.Minute, Now: clock.Now})
	b := publish(t, st, clock.Now(), 24*time.Hour, prompts("a0", "a1", "a2")...)
	d.Wake()
	if got := gate.nextStarted(t); got != "a0" {
		t.Fatalf("first call %q, want a0", got)
	}
	waitQueued(t, d, 2)
	// The stall: every lease lapses; the sweeper rescues the three and
	// the claim loop claims them again behind the stale copies.
	clock.Add(2 * time.Minute)
	waitQueued(t, d, 5)
	gate.release()
	got := waitBatch(t, st, b, "the batch ends", func(b *store.Batch) bool { return b.Status == store.StatusEnded })
	if got.Counts != (store.Counts{Succeeded: 3}) {
		t.Errorf("counts %+v, want 3 succeeded", got.Counts)
	}
	sent := map[string]int{}
	for len(gate.started) > 0 {
		sent[<-gate.started]++
	}
	sent["a0"]++ // taken by nextStarted above
	// a0 was in flight when its lease lapsed: sending it again is what a
	// lease is for. a1 and a2 had never left the queue.
	if want := map[string]int{"a0": 2, "a1": 1, "a2": 1}; len(sent) != 3 || sent["a0"] != 2 || sent["a1"] != 1 || sent["a2"] != 1 {
		t.Errorf("calls per prompt %v, want %v", sent, want)
	}
}
