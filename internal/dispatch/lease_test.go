package dispatch

import (
	"context"
	"sync/atomic"
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
		claimedAt  int   // the claim began then: its lease runs until +15
		queuedAt   int   // and committed then (0: at once)
		now        int
		lapsed     bool
	}{
		{"fresh claim", nil, 0, 0, 10, false},
		{"claim's lease ran out, no heartbeat", nil, 0, 0, 15, true},
		{"heartbeats keep it", []int{5, 10, 15, 20}, 0, 0, 30, false},
		{"heartbeats stopped, lease ran out", []int{5, 10}, 0, 0, 25, true},
		{"first heartbeat came after the claim's lease ended", []int{16}, 0, 0, 17, true},
		{"first heartbeat in time", []int{14}, 0, 0, 20, false},
		{"a gap between heartbeats lost it", []int{5, 21, 26}, 0, 0, 27, true},
		{"claimed after the gap", []int{5, 21, 26}, 22, 0, 27, false},
		{"claimed before the gap, its own lease bridged it", []int{5, 21, 26}, 10, 0, 27, false},
		{"its lease ended exactly at the late heartbeat", []int{5, 21}, 6, 0, 22, true},
		// A claim that ran 11 s: the heartbeats sent meanwhile may not
		// have seen its rows, and the first sent after it is too late.
		{"slow claim, heartbeats only while it ran", []int{5, 10, 15, 20}, 0, 11, 21, true},
		{"slow claim, a heartbeat after it in time", []int{5, 10, 12, 17}, 0, 11, 21, false},
		{"slow claim, still within its own lease", []int{5, 10}, 0, 11, 14, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := &leaseWatch{lease: lease}
			queued := max(tt.queuedAt, tt.claimedAt)
			var l jobLease
			claimed := false
			for _, h := range tt.heartbeats {
				if !claimed && h >= queued {
					l, claimed = w.claimed(at(tt.claimedAt).Add(lease)), true
				}
				if got := w.heartbeat(at(h)); !got.Equal(at(h).Add(lease)) {
					t.Fatalf("heartbeat at %d asks for %s", h, got)
				}
			}
			if !claimed {
				l = w.claimed(at(tt.claimedAt).Add(lease))
			}
			if got := w.lapsed(l, at(tt.now)); got != tt.lapsed {
				t.Errorf("lapsed = %v, want %v", got, tt.lapsed)
			}
		})
	}
}

// TestLeaseWatchForgets: a request queued so long that the watch no longer
// knows when the first heartbeat after it was sent is judged lapsed (and
// given back), never held on a guess.
func TestLeaseWatchForgets(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const lease = 15 * time.Second
	w := &leaseWatch{lease: lease}
	l := w.claimed(t0.Add(lease))
	now := t0
	for range heartbeatMemory {
		now = now.Add(lease / 3)
		w.heartbeat(now)
	}
	if w.lapsed(l, now) {
		t.Fatal("lapsed while every heartbeat since its claim is remembered")
	}
	now = now.Add(lease / 3)
	w.heartbeat(now)
	if !w.lapsed(l, now) {
		t.Fatal("held after the first heartbeat since its claim was forgotten")
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

// slowClaims holds the next RequestsClaim, once armed, until released:
// a claim that takes most of a lease.
type slowClaims struct {
	store.Store
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (s *slowClaims) RequestsClaim(ctx context.Context, p store.RequestsClaimParams) ([]store.ClaimedRequest, error) {
	if s.armed.CompareAndSwap(true, false) {
		s.entered <- struct{}{}
		<-s.release
	}
	return s.Store.RequestsClaim(ctx, p)
}

// TestSlowClaimNotSentTwice: requests whose claim took most of their lease
// (here 0.9 of it) lapse soon after they are queued; rescued and claimed
// again while the stale copies wait for the worker, each still reaches the
// upstream once. Before, the watch counted a claim's lease from when its
// requests were queued, not from the LeaseUntil the claim asked for, so
// it held the stale copies for 0.9 of a lease too long and sent them too.
func TestSlowClaimNotSentTwice(t *testing.T) {
	t.Parallel()
	const lease = time.Minute // heartbeats every 20 s of real time never come
	base := newStore(t)
	st := &slowClaims{Store: base, entered: make(chan struct{}), release: make(chan struct{})}
	gate := newGateBackend()
	clock := &fakeClock{now: time.Now()}
	d := startDispatcher(t, st, gate, Config{Concurrency: 1, ClaimAhead: 16, PollInterval: 5 * time.Millisecond, Lease: lease, Now: clock.Now})
	first := publish(t, base, clock.Now(), 24*time.Hour, prompts("a0")...)
	d.Wake()
	if got := gate.nextStarted(t); got != "a0" {
		t.Fatalf("first call %q, want a0", got)
	}
	st.armed.Store(true)
	second := publish(t, base, clock.Now(), 24*time.Hour, prompts("a1", "a2")...)
	d.Wake()
	select {
	case <-st.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("the second claim never came")
	}
	clock.Add(lease * 9 / 10)
	close(st.release)
	waitQueued(t, d, 2)
	// Past the claims' leases: the sweeper rescues all three and the claim
	// loop claims them again behind the stale copies.
	clock.Add(lease / 5)
	waitQueued(t, d, 5)
	gate.release()
	for _, b := range []*store.Batch{first, second} {
		waitBatch(t, base, b, "the batch ends", func(b *store.Batch) bool { return b.Status == store.StatusEnded })
	}
	sent := map[string]int{"a0": 1} // taken by nextStarted above
	for len(gate.started) > 0 {
		sent[<-gate.started]++
	}
	// a0 was in flight when its lease lapsed: sending it again is what a
	// lease is for. a1 and a2 had never left the queue.
	if len(sent) != 3 || sent["a0"] != 2 || sent["a1"] != 1 || sent["a2"] != 1 {
		t.Errorf("calls per prompt %v, want a0:2 a1:1 a2:1", sent)
	}
}
