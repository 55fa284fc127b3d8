// Package leader elects the one process of a cluster that runs the chores
// (expiry, archiving, purging, discarding stale uploads, resuming orphaned
// upstream batches) through a lease row in the store with a term number.
// The chores' store verbs take the term (store.Lead) and refuse it in SQL
// once another process holds the lease, so a leader that stalled past its
// lease changes nothing. With SQLite the one process is always the leader,
// through the same code.
package leader

import (
	"cmp"
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// DefaultLease is how long a leader holds the chores without renewing:
// how long the chores pause when a leader dies without releasing.
const DefaultLease = 15 * time.Second

// Config configures an Elector. Zero values take the defaults noted.
type Config struct {
	// Name is the lease contended for (default store.LeaderChores).
	Name string
	// Owner names this process; required.
	Owner string
	// Lease is how long a lease lasts unrenewed (default DefaultLease).
	// The leader renews it once a third of it has passed.
	Lease time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives changes of leadership (default: discard).
	Logger *slog.Logger
}

// Elector keeps this process's view of the leader lease. It has no
// goroutine of its own: the loops that run chores call Lead before each
// round, which renews or contends as due, so leadership follows the clock
// those loops run on.
type Elector struct {
	st  store.Store
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	lead    store.Lead
	held    bool
	renewed time.Time // when the held lease was last written
	until   time.Time // when it lapses unless renewed
	lapses  time.Time // when another's lease lapses, as last seen; zero: none seen
}

// New returns an elector for cfg.Owner on st.
func New(st store.Store, cfg Config) *Elector {
	cfg.Name = cmp.Or(cfg.Name, store.LeaderChores)
	cfg.Lease = cmp.Or(cfg.Lease, DefaultLease)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Elector{st: st, cfg: cfg, log: cfg.Logger.With("component", "leader", "owner", cfg.Owner)}
}

// Owner is the owner this elector contends as.
func (e *Elector) Owner() string { return e.cfg.Owner }

// Lead reports whether this process leads, with the term to do chores
// under. The leader renews its lease once a third of it has passed; others
// try to take it on every call, and do once it lapsed. When the store
// cannot be reached the leader goes on leading until its lease would lapse,
// never beyond, so two processes never both believe they lead for longer
// than the clocks' skew (and the store refuses the stale one's writes).
func (e *Elector) Lead(ctx context.Context) (store.Lead, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.cfg.Now()
	if e.held && now.Before(e.renewed.Add(e.cfg.Lease/3)) && now.Before(e.until) {
		return e.lead, true
	}
	l, err := e.st.LeaderAcquire(ctx, store.LeaderAcquireParams{Name: e.cfg.Name, Owner: e.cfg.Owner, Now: now, Until: now.Add(e.cfg.Lease)})
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("leader lease not renewed", "err", err)
		}
		e.lapses = time.Time{} // not known now: no hurry to try again
		if e.held && now.Before(e.until) {
			return e.lead, true
		}
		e.lose("the store could not be reached")
		return store.Lead{}, false
	}
	if l.Owner != e.cfg.Owner {
		e.lose("held by " + l.Owner)
		e.lapses = l.Expires
		return store.Lead{}, false
	}
	e.lapses = time.Time{}
	lead := store.Lead{Name: l.Name, Owner: l.Owner, Term: l.Term}
	if !e.held || e.lead.Term != lead.Term {
		e.log.Info("leading the chores", "term", lead.Term)
	}
	e.lead, e.held, e.renewed, e.until = lead, true, now, l.Expires
	return lead, true
}

// Lapses is when the lease another process holds lapses unless renewed,
// as the last Lead saw it; zero when this process leads or saw no other
// lease. A loop that calls Lead should call it again then: if the leader
// died, this process takes over at once instead of at its next round.
func (e *Elector) Lapses() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lapses
}

// lose forgets a held lease; e.mu is held.
func (e *Elector) lose(why string) {
	if e.held {
		e.log.Warn("no longer leading the chores", "term", e.lead.Term, "why", why)
	}
	e.held = false
}

// Release gives the lease up, if held, so that another process takes the
// chores over at once instead of after the lease: for a graceful stop.
func (e *Elector) Release(ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.held {
		return
	}
	if err := e.st.LeaderRelease(ctx, e.lead); err != nil {
		e.log.Warn("leader lease not released", "err", err)
	}
	e.held = false
}

// Leading reports, without asking the store, whether this process held
// the lease when it last asked and the lease has not lapsed since: for
// readiness reports, which must not contend for the lease.
func (e *Elector) Leading() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.held && e.cfg.Now().Before(e.until)
}
