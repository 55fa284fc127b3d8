package dispatch

import (
	"sync"
	"time"
)

// leaseWatch tells whether the lease on a request claimed ahead is surely
// still held when a worker comes to send it. A process that stalls (a busy
// machine, a long pause) or whose claim took most of a lease may have its
// requests rescued and claimed again, by another process or by itself with
// a new attempt; the copies still queued in memory must then not be sent,
// or the upstream runs (and bills) one request two or three times while the
// store keeps one result.
//
// It works from what the dispatcher itself asked for. A claim's lease runs
// until the LeaseUntil it asked for. A heartbeat asks for now+lease when it
// is sent, and renews only what is still held when it runs; it surely sees
// a claimed request's row only if it was sent after the claim committed
// (one sent while the claim ran may or may not), so only those count for
// the request. A failed heartbeat counts too (it may have applied).
//
// The watch errs on one side only: it may judge lapsed a request whose
// lease an uncertain heartbeat renewed, never the other way round. So a
// request judged lapsed is given back to the store (a retry due now,
// guarded by its attempt like any outcome) rather than dropped: if the
// lease was still held the request goes back to pending, and if it had
// lapsed and was rescued the give-back changes nothing.
type leaseWatch struct {
	lease time.Duration

	mu sync.Mutex
	// beats counts the heartbeats sent; sent[k%len] is when heartbeat k
	// (from 1) was sent, for the last len(sent) of them.
	beats uint64
	sent  [heartbeatMemory]time.Time
	// renewed is the lease the last heartbeat asked for (zero before the
	// first).
	renewed time.Time
	// broken: a heartbeat sent at broken came after the one before it had
	// lapsed (or was the first): what the chain held before was lost.
	broken time.Time
}

// heartbeatMemory is how many heartbeats' send times the watch keeps: at a
// third of a 15 s lease, over an hour. A request queued for longer than
// that is judged lapsed and given back.
const heartbeatMemory = 1024

// jobLease is what the watch knows of one claimed request's lease.
type jobLease struct {
	until time.Time // the claim's LeaseUntil
	after uint64    // heartbeats after this one surely saw its row
}

// claimed returns the lease of a request whose claim asked for until and
// has committed.
func (w *leaseWatch) claimed(until time.Time) jobLease {
	w.mu.Lock()
	defer w.mu.Unlock()
	return jobLease{until: until, after: w.beats}
}

// heartbeat records a heartbeat about to be sent at now, asking for a
// lease until now+lease, and returns that time.
func (w *leaseWatch) heartbeat(now time.Time) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !now.Before(w.renewed) {
		w.broken = now
	}
	w.beats++
	w.sent[w.beats%heartbeatMemory] = now
	w.renewed = now.Add(w.lease)
	return w.renewed
}

// lapsed reports whether the request's lease may be lost by now: its
// claim's lease ended before a heartbeat surely renewed it, the chain of
// heartbeats since broke, or every lease it could hold has run out.
func (w *leaseWatch) lapsed(l jobLease, now time.Time) bool {
	if now.Before(l.until) {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	first := l.after + 1 // the first heartbeat sure to renew it
	if first > w.beats || w.beats-first >= heartbeatMemory {
		return true // none yet, or too long ago to tell
	}
	at := w.sent[first%heartbeatMemory]
	if !at.Before(l.until) || w.broken.After(at) {
		return true
	}
	return !now.Before(w.renewed)
}
