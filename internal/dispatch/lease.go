package dispatch

import (
	"sync"
	"time"
)

// leaseWatch tells whether the lease on a request claimed ahead is still
// held when a worker comes to send it. A process that stalls (a busy
// machine, a long pause) past its lease has its requests rescued and claimed
// again, by another process or by itself with a new attempt; the copies
// still queued in memory must then not be sent, or the upstream runs (and
// bills) one request two or three times while the store keeps one result.
//
// It works only from what the dispatcher itself asked for, as upper bounds:
// a claim's lease runs from when its requests were queued (after the claim
// committed), and a heartbeat counts from when it was sent whether or not
// it succeeded (it may have applied). The store never revives a lease that
// lapsed (store.RequestsHeartbeatParams), so a request judged lapsed here
// has lapsed in the store too, and dropping it strands nothing: the rescue
// returns it to pending.
type leaseWatch struct {
	lease time.Duration

	mu sync.Mutex
	// renewed is the lease the last heartbeat asked for (zero before the
	// first).
	renewed time.Time
	// broken: a heartbeat sent at broken came after the one before it had
	// lapsed (or was the first), so the requests whose own claim's lease
	// ended by then were left out of it and are lost.
	broken time.Time
}

// claimed returns the lease of requests claimed before now.
func (w *leaseWatch) claimed(now time.Time) time.Time { return now.Add(w.lease) }

// heartbeat records a heartbeat about to be sent at now, asking for a
// lease until now+lease, and returns that time.
func (w *leaseWatch) heartbeat(now time.Time) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !now.Before(w.renewed) {
		w.broken = now
	}
	w.renewed = now.Add(w.lease)
	return w.renewed
}

// lapsed reports whether a request whose claim's lease was until may have
// lost its lease by now: it ended before a heartbeat could renew it, or
// every lease it could hold has run out.
func (w *leaseWatch) lapsed(until, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.broken.IsZero() && !until.After(w.broken) {
		return true
	}
	return !now.Before(until) && !now.Before(w.renewed)
}
