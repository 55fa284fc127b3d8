// Package dispatch runs the requests of batches on their backends: it
// claims pending requests under a lease, runs them under each backend's
// concurrency limit, retries transient failures with capped exponential
// backoff, and writes outcomes back in groups. It also runs the chores that
// keep batches moving: lease heartbeats, rescue of lost requests, expiry,
// retention and purging.
package dispatch

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/backend"
	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/cost"
	"github.com/batchd/batchd/internal/ids"
	"github.com/batchd/batchd/internal/leader"
	"github.com/batchd/batchd/internal/metrics"
	"github.com/batchd/batchd/internal/store"
)

// Config configures a Dispatcher. Zero values take the defaults noted.
type Config struct {
	// Metrics, when set, counts calls, settles, retries and usage.
	Metrics *metrics.Metrics
	// Prices prices usage in the metrics (nil: tokens only).
	Prices *cost.Table
	// Owner names this process in every lease it takes (default:
	// ids.Owner(), host, pid and a random suffix); the server gives the
	// dispatcher, the delegators and the deliverer the same one.
	Owner string
	// Concurrency is each backend's limit on requests in flight (default 64).
	Concurrency int
	// BackendConcurrency overrides Concurrency per backend name: the
	// workers of a rate-controlled backend are its ceiling
	// (max_concurrency), its adaptive limit at most that.
	BackendConcurrency map[string]int
	// ClaimAhead is how many requests per backend are claimed ahead of a
	// free slot (default: Concurrency, at least 256). Deeper keeps fast
	// backends busy with fewer, larger store transactions.
	ClaimAhead int
	// MaxAttempts caps attempts per request (default 8).
	MaxAttempts int
	// BackoffBase is the first retry delay, doubled on every attempt
	// (default 1s), capped at BackoffMax (default 5m); ±20% jitter.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// RequestTimeout bounds one attempt (default 10m, like the SDKs).
	RequestTimeout time.Duration
	// Lease is how long a claim holds without a heartbeat (default
	// DefaultLease; heartbeats renew it every third of it). A process that
	// dies leaves its requests to others, or to itself restarted, once
	// their lease lapses: a new process cannot tell a dead owner from a
	// live one, so it never takes a lease that is still live.
	Lease time.Duration
	// PollInterval is the longest the claimer and the sweeper sleep when
	// nothing wakes them (default 1s).
	PollInterval time.Duration
	// Retention is how long after creation results are kept (default 29
	// days); older ended batches are archived.
	Retention time.Duration
	// Leader elects the process that runs the chores (expiry, archive,
	// purge, discarding stale uploads); nil: an elector of the dispatcher's
	// own for Owner, released at Stop.
	Leader *leader.Elector
	// Delegated names backends whose requests another component claims
	// (the delegator of an anthropic-batch backend): the dispatcher runs no
	// lane, no claims and no workers for them.
	Delegated []string
	// Logger receives the dispatcher's logs (default: discard).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// ClaimBeside runs the completer's refill claim in a transaction of
	// its own beside the completion's, instead of in it: for a store of
	// many writers (PostgreSQL), where the completion holds its batches'
	// rows until it commits and the claim need not wait with them.
	ClaimBeside bool
	// OnChange, if set, sees every batch change the dispatcher makes (ends
	// in particular), after it is committed.
	OnChange func(*store.BatchChange)
}

func (c Config) withDefaults() Config {
	if c.Owner == "" {
		c.Owner = ids.Owner()
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 64
	}
	if c.ClaimAhead <= 0 {
		c.ClaimAhead = max(c.Concurrency, 256)
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 8
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 5 * time.Minute
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 10 * time.Minute
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.Retention <= 0 {
		c.Retention = batch.DefaultRetention
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.OnChange == nil {
		c.OnChange = func(*store.BatchChange) {}
	}
	return c
}

// Dispatcher claims and runs requests. Start it once; Stop waits for it.
type Dispatcher struct {
	store  store.Store
	router *backend.Router
	cfg    Config
	log    *slog.Logger

	wake     chan struct{} // new work may be claimable
	recheck  chan struct{} // look for batches canceled elsewhere now
	freed    chan struct{} // a slot was freed
	outcomes chan laneOutcome
	lanes    []*lane // one per backend, then the unroutable lane
	byName   map[string]*lane

	mu        sync.Mutex         // guards lane.held and canceling
	canceling map[int64]struct{} // batches known to be canceling, by seq
	cancel    context.CancelFunc
	stopCtx   context.Context // ends when Stop begins: no more claims
	abandon   context.CancelFunc
	done      chan struct{}
	stopOnce  sync.Once
	ownLeader bool // cfg.Leader was made by Start, and is released by Stop

	// The workers and the claim loop stop before the queues and the
	// outcomes channel close; anyone else who queues jobs or sends outcomes
	// (the completer refilling its slots, Canceled, the sweeper) enters the
	// gate first, and the shutdown shuts it and waits for them.
	gateMu   sync.Mutex
	gateShut bool
	senders  sync.WaitGroup

	withdrawals map[int64]*withdrawal // by batch seq; guarded by mu
	// stopping: Stop began, and every call still waiting inside a backend
	// is withdrawn (guarded by mu).
	stopping bool
	leases   *leaseWatch
}

// withdrawal withdraws the calls of one batch that wait inside a backend
// (for its rate limits) once the batch is canceled or expires, or the
// dispatcher stops: a worker has handed them over, but they are not sent
// yet.
type withdrawal struct {
	ch      chan struct{}
	expires time.Time
	users   int // calls in Do
	closed  bool
}

// New returns a dispatcher over st, running requests on the backends of
// router.
func New(st store.Store, router *backend.Router, cfg Config) *Dispatcher {
	cfg = cfg.withDefaults()
	d := &Dispatcher{
		store:     st,
		router:    router,
		cfg:       cfg,
		log:       cfg.Logger.With("component", "dispatch"),
		wake:      make(chan struct{}, 1),
		recheck:   make(chan struct{}, 1),
		freed:     make(chan struct{}, 1),
		byName:    map[string]*lane{},
		canceling: map[int64]struct{}{},

		withdrawals: map[int64]*withdrawal{},
		leases:      &leaseWatch{lease: cfg.Lease},
	}
	total := 0
	delegated := map[string]bool{}
	for _, name := range cfg.Delegated {
		delegated[name] = true
	}
	for _, b := range router.Backends() {
		if delegated[b.Name()] {
			continue
		}
		// Each backend holds its concurrency in flight plus ClaimAhead
		// queued, so that a finishing request is replaced at once instead
		// of after a store round trip; the fair queue keeps the depth from
		// delaying other batches.
		conc := cfg.Concurrency
		if n := cfg.BackendConcurrency[b.Name()]; n > 0 {
			conc = n
		}
		ahead := max(cfg.ClaimAhead, conc)
		l := &lane{name: b.Name(), backend: b, workers: conc, ahead: ahead, queue: newFairQueue(), slots: conc + ahead, metrics: cfg.Metrics.Backend(b.Name())}
		if c, ok := b.(ceilinger); ok {
			l.ceiling = c.Ceiling
		}
		d.lanes = append(d.lanes, l)
		d.byName[l.name] = l
		total += l.slots
	}
	// Requests no backend serves are settled as errored without a worker.
	none := &lane{name: "", slots: 256}
	d.lanes = append(d.lanes, none)
	d.byName[""] = none
	total += none.slots
	// Every held request yields at most one outcome, so sending one never
	// blocks; the completer, which also dispatches, relies on that.
	d.outcomes = make(chan laneOutcome, total)
	return d
}

// lane is one backend's share of the dispatcher: its claims, its local
// queue and its workers. Claims are per backend, so a throttled backend
// never holds another's slots.
type lane struct {
	name    string          // the backend's name; "" for requests no backend serves
	backend backend.Backend // nil for the "" lane
	workers int
	queue   *fairQueue
	slots   int // running plus queued plus unwritten, at most; see limit
	ahead   int // of slots, those queued ahead of the workers
	held    int // guarded by Dispatcher.mu
	// ceiling is the backend's current limit on calls in flight, when it
	// has one below the workers (this process's share of a limit that
	// holds for a cluster); nil: the workers are the limit.
	ceiling func() int
	drained bool // its last claim found less than it asked; claim loop only
	// metrics are the backend's collectors; nil without metrics.
	metrics *metrics.Backend
}

// ceilinger is a backend that may run fewer calls at once than the
// workers it is given: a ratelimit.Limiter applying this process's share
// of a cluster's limit.
type ceilinger interface{ Ceiling() int }

// limit is how many requests the lane may hold now. With a ceiling below
// its workers (a share of a cluster's limit), the claimed-ahead depth
// shrinks with it: requests held ahead of a share the process cannot send
// would wait here while other processes, with room to run them, find
// nothing to claim, and a batch's tail would run at one share's pace.
func (l *lane) limit() int {
	if l.ceiling == nil {
		return l.slots
	}
	c := min(max(l.ceiling(), 0), l.workers)
	if c == l.workers {
		return l.slots
	}
	return c + max((l.ahead*c+l.workers-1)/l.workers, c)
}

// laneOutcome is an outcome on its way to the store, with the lane whose
// slot it frees.
type laneOutcome struct {
	store.Outcome
	lane *lane
}

// route names the backend that serves model, "" if none does.
func (d *Dispatcher) route(model string) string {
	b, err := d.router.Lookup(model)
	if err != nil {
		return ""
	}
	return b.Name()
}

// Route is the routing function the batch service stores requests with.
func (d *Dispatcher) Route(model string) string { return d.route(model) }

// Canceled tells the dispatcher that a batch is canceling, so that requests
// of it that are claimed but not yet sent settle as canceled at once instead
// of being sent, and calls of it waiting in a backend are withdrawn. The
// cancel may have been made by any process (the server calls it on a
// store notification too); calling it again changes nothing.
func (d *Dispatcher) Canceled(batchSeq int64) {
	d.mu.Lock()
	d.canceling[batchSeq] = struct{}{}
	d.mu.Unlock()
	d.settleUnsent()
}

// Ended tells the dispatcher that a batch ended, perhaps in another
// process: it forgets that the batch was canceling.
func (d *Dispatcher) Ended(batchSeq int64) {
	d.mu.Lock()
	delete(d.canceling, batchSeq)
	d.mu.Unlock()
}

// enter admits a sender other than the workers and the claim loop; it
// reports false once the shutdown has begun, when nothing may be queued or
// sent any more. A true enter must be followed by leave.
func (d *Dispatcher) enter() bool {
	d.gateMu.Lock()
	defer d.gateMu.Unlock()
	if d.gateShut {
		return false
	}
	d.senders.Add(1)
	return true
}

func (d *Dispatcher) leave() { d.senders.Done() }

// shutGate refuses new senders and waits for those inside.
func (d *Dispatcher) shutGate() {
	d.gateMu.Lock()
	d.gateShut = true
	d.gateMu.Unlock()
	d.senders.Wait()
}

// settleUnsent settles the queued requests of batches that are canceling or
// expired without waiting for a free worker: a worker may be busy for
// minutes with a long request, and the batch should end as soon as nothing
// of it is in flight.
func (d *Dispatcher) settleUnsent() {
	now := d.cfg.Now()
	d.mu.Lock()
	for seq, w := range d.withdrawals {
		if _, canceling := d.canceling[seq]; !w.closed && (canceling || !now.Before(w.expires)) {
			close(w.ch)
			w.closed = true
		}
	}
	d.mu.Unlock()
	if !d.enter() {
		return // stopping: the queues are left to leases
	}
	defer d.leave()
	for _, l := range d.lanes {
		if l.queue == nil {
			continue
		}
		// All the jobs of a batch share what unsent looks at.
		for _, j := range l.queue.take(func(j job) bool { return d.unsent(j.ClaimedRequest) != "" }) {
			d.outcomes <- laneOutcome{store.Unsent(j.ClaimedRequest, d.unsent(j.ClaimedRequest)), l}
		}
	}
}

// withdrawAll withdraws every call waiting inside a backend, at the start
// of a stop: a graceful stop lets the calls in flight finish, and sends no
// more. Without it, calls waiting for a rate limit went out one by one for
// as long as the stop lasted.
func (d *Dispatcher) withdrawAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopping = true
	for _, w := range d.withdrawals {
		if !w.closed {
			close(w.ch)
			w.closed = true
		}
	}
}

// watch returns the channel that withdraws c's call, closed already if its
// batch is canceling or expired; unwatch must follow the call.
func (d *Dispatcher) watch(c store.ClaimedRequest) <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := d.withdrawals[c.BatchSeq]
	if w == nil {
		w = &withdrawal{ch: make(chan struct{}), expires: c.ExpiresAt}
		d.withdrawals[c.BatchSeq] = w
		_, canceling := d.canceling[c.BatchSeq]
		if canceling || d.stopping || !d.cfg.Now().Before(c.ExpiresAt) {
			close(w.ch)
			w.closed = true
		}
	}
	w.users++
	return w.ch
}

func (d *Dispatcher) unwatch(batchSeq int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if w := d.withdrawals[batchSeq]; w != nil {
		if w.users--; w.users == 0 {
			delete(d.withdrawals, batchSeq)
		}
	}
}

// giveBack returns a claimed request, never sent, to pending at now
// (store.GiveBack), or settles it as unsent if it must not be sent any more.
func (d *Dispatcher) giveBack(c store.ClaimedRequest, now time.Time) store.Outcome {
	if typ := d.unsent(c); typ != "" {
		return store.Unsent(c, typ)
	}
	return store.GiveBack(c, now)
}

// unsent is the result type for a claimed request that must not be sent
// any more, or "" if it may be sent.
func (d *Dispatcher) unsent(c store.ClaimedRequest) string {
	if !d.cfg.Now().Before(c.ExpiresAt) {
		return store.ResultExpired
	}
	d.mu.Lock()
	_, canceling := d.canceling[c.BatchSeq]
	d.mu.Unlock()
	if canceling {
		return store.ResultCanceled
	}
	return ""
}

// Wake tells the dispatcher that new requests may be claimable.
func (d *Dispatcher) Wake() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Start runs the dispatcher in the background until Stop or ctx ends.
func (d *Dispatcher) Start(ctx context.Context) error {
	// Only what another process (or this one before a crash: nobody can
	// tell) left with a lapsed lease is rescued; the leader's sweep
	// discards uploads whose lease lapsed.
	changes, err := d.store.RequestsRescue(ctx, store.RequestsRescueParams{Now: d.cfg.Now()})
	if err != nil {
		return fmt.Errorf("start dispatcher: %w", err)
	}
	d.emit(changes...)
	if d.cfg.Leader == nil {
		d.cfg.Leader = leader.New(d.store, leader.Config{Owner: d.cfg.Owner, Now: d.cfg.Now, Logger: d.cfg.Logger})
		d.ownLeader = true
	}
	// The configuration may have changed since requests were routed.
	if n, err := d.store.RequestsReroute(ctx, d.route); err != nil {
		return fmt.Errorf("start dispatcher: %w", err)
	} else if n > 0 {
		d.log.Info("rerouted pending requests to their new backends", "requests", n)
	}
	ctx, cancel := context.WithCancel(ctx)
	d.cancel = cancel
	d.stopCtx = ctx
	d.done = make(chan struct{})
	// runCtx outlives ctx so that a graceful stop lets running requests
	// finish; Stop cancels it only when its own deadline passes.
	runCtx, abandon := context.WithCancel(context.WithoutCancel(ctx))
	d.abandon = abandon
	var wg, workers sync.WaitGroup
	for _, l := range d.lanes {
		for range l.workers {
			workers.Add(1)
			go func() {
				defer workers.Done()
				d.work(runCtx, ctx, l)
			}()
		}
	}
	completed := make(chan struct{})
	go func() {
		defer close(completed)
		d.complete(runCtx)
	}()
	// Heartbeats go on through a graceful stop, until the outcomes of the
	// requests that ran in it are written: a request in flight whose lease
	// lapsed would be rescued and sent again by another process, and the
	// outcome it then has here refused.
	beatCtx, stopBeats := context.WithCancel(runCtx)
	beats := make(chan struct{})
	go func() { defer close(beats); d.heartbeatLoop(beatCtx) }()
	wg.Add(3)
	go func() { defer wg.Done(); d.cancelLoop(ctx) }()
	go func() { defer wg.Done(); d.claimLoop(ctx) }()
	go func() { defer wg.Done(); d.sweepLoop(ctx) }()
	go func() {
		wg.Wait()
		d.shutGate()
		// Claiming has stopped: drain the queues so workers finish what
		// is running and exit; queued requests stay leased (renewed with
		// those running) until Stop lets them go.
		for _, l := range d.lanes {
			if l.queue != nil {
				l.queue.close()
			}
		}
		workers.Wait()
		close(d.outcomes)
		<-completed
		stopBeats()
		<-beats
		abandon()
		close(d.done)
	}()
	return nil
}

// Stop stops claiming, lets running requests finish (until ctx ends, when
// they are abandoned to be rescued), writes their outcomes and returns.
func (d *Dispatcher) Stop(ctx context.Context) {
	d.stopOnce.Do(func() {
		if d.cancel == nil {
			return
		}
		d.cancel()
		d.withdrawAll()
		select {
		case <-d.done:
		case <-ctx.Done():
			// Out of time: abandon running requests and unwritten outcomes.
			// Their leases lapse and they run again, never twice settled.
			d.abandon()
			<-d.done
		}
		// Nothing runs any more: what is still claimed (queued ahead) is
		// let go at once rather than when its lease would lapse.
		d.store.RequestsHeartbeat(context.WithoutCancel(ctx), store.RequestsHeartbeatParams{Owner: d.cfg.Owner})
		if d.ownLeader {
			d.cfg.Leader.Release(context.WithoutCancel(ctx))
		}
	})
}

func (d *Dispatcher) emit(changes ...*store.BatchChange) {
	for _, ch := range changes {
		if ch.Ended {
			d.mu.Lock()
			delete(d.canceling, ch.Batch.Seq)
			d.mu.Unlock()
			b := ch.Batch
			d.log.Info("batch ended", "batch", b.ID, "succeeded", b.Counts.Succeeded, "errored", b.Counts.Errored,
				"canceled", b.Counts.Canceled, "expired", b.Counts.Expired)
		}
		d.cfg.OnChange(ch)
	}
}

// Failed claims (a full disk, a store that is down) are retried after a
// delay that doubles from claimBackoffMin up to claimBackoffMax and starts
// again from nothing after a claim that works.
const (
	claimBackoffMin = 10 * time.Millisecond
	claimBackoffMax = 5 * time.Second
)

// failures is a loop's state of failure (the claim loop's, the
// completer's), logged when it begins and when it ends rather than at
// every try: before, a full disk logged an error at every try, for as
// long as it lasted.
type failures struct {
	op, ops  string        // "claim", "claims": what fails, for the log
	min, max time.Duration // the backoff's bounds
	backoff  time.Duration // the wait before the next try; 0: not failing
	tries    int
	since    time.Time
}

// failed records a failed try and returns the wait before the next; attrs
// are logged with it.
func (f *failures) failed(log *slog.Logger, err error, now time.Time, attrs ...any) time.Duration {
	f.tries++
	if f.backoff == 0 {
		f.since = now
		f.backoff = f.min
		log.Error(f.op+" failed", append([]any{"err", err}, append(attrs, "retry_in", f.backoff,
			"backoff_max", f.max, "note", "logged again only when "+f.ops+" work again")...)...)
		return f.backoff
	}
	f.backoff = min(2*f.backoff, f.max)
	log.Debug(f.op+" failed again", append([]any{"err", err}, append(attrs, "tries", f.tries, "retry_in", f.backoff)...)...)
	return f.backoff
}

// succeeded records a try that worked, ending a failure if one lasted.
func (f *failures) succeeded(log *slog.Logger, now time.Time) {
	if f.backoff > 0 {
		log.Info(f.ops+" work again", "failed_tries", f.tries, "after", now.Sub(f.since).Round(time.Millisecond))
	}
	f.backoff, f.tries, f.since = 0, 0, time.Time{}
}

func (d *Dispatcher) claimLoop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	claimFails := failures{op: "claim", ops: "claims", min: claimBackoffMin, max: claimBackoffMax}
	for {
		// A lane that ran out of due work is asked again only when new work
		// may exist (a new batch, or the timer for retries), not whenever a
		// slot frees: an empty claim still costs a write transaction.
		// After a failure only the backoff's timer ends the wait.
		rescan := false
		if claimFails.backoff > 0 {
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
				rescan = true
			}
		} else {
			select {
			case <-ctx.Done():
				return
			case <-d.wake:
				rescan = true
			case <-d.freed:
			case <-timer.C:
				rescan = true
			}
		}
		drained := false // a lane ran dry in this round
		var backoff time.Duration
	lanes:
		for _, l := range d.lanes {
			if l.drained && !rescan {
				continue
			}
			l.drained = false
			for ctx.Err() == nil {
				free := d.reserve(l, 0)
				if free == 0 {
					break
				}
				now := d.cfg.Now()
				claim := store.RequestsClaimParams{Backend: l.name, Owner: d.cfg.Owner, Limit: free, Now: now, LeaseUntil: now.Add(d.cfg.Lease)}
				claimed, err := d.store.RequestsClaim(ctx, claim)
				if err != nil {
					d.unreserve(l, free)
					if ctx.Err() != nil {
						return
					}
					// The store is shared: the other lanes wait too.
					backoff = claimFails.failed(d.log, err, time.Now())
					break lanes
				}
				claimFails.succeeded(d.log, time.Now())
				d.unreserve(l, free-len(claimed))
				for _, c := range claimed {
					d.dispatch(l, c, claim.LeaseUntil)
				}
				if len(claimed) < free {
					drained, l.drained = true, true
					break
				}
			}
		}
		switch {
		case backoff > 0:
			timer.Reset(backoff)
		case drained || rescan:
			// Sleep until the next retry of a dry lane is due; a freed
			// slot or a new batch wakes the loop earlier.
			timer.Reset(d.nextDue(ctx))
		}
		// Otherwise the timer armed in an earlier round is still running.
	}
}

// reserve takes a lane's free slots, counting released as about to be
// freed, and returns how many it took; they are held until unreserve or
// release. While the lane holds requests it takes none unless a quarter of
// its slots are free: one transaction per request would spend the store's
// single writer on overhead.
func (d *Dispatcher) reserve(l *lane, released int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	// At most maxClaim at once: a first claim of thousands would keep every
	// slot idle until the whole transaction is done.
	slots := l.limit()
	free := min(slots-l.held+released, maxClaim)
	if free <= 0 || (free < max(1, slots/4) && l.held > released) {
		return 0
	}
	l.held += free
	return free
}

// maxClaim caps one claim; see reserve.
const maxClaim = 512

// unreserve gives back reserved slots that no claim filled.
func (d *Dispatcher) unreserve(l *lane, n int) {
	if n == 0 {
		return
	}
	d.mu.Lock()
	l.held -= n
	d.mu.Unlock()
}

// nextDue is how long until the next retry of a drained lane is due, at
// most PollInterval.
func (d *Dispatcher) nextDue(ctx context.Context) time.Duration {
	wait := d.cfg.PollInterval
	for _, l := range d.lanes {
		if !l.drained {
			continue
		}
		due, err := d.store.RequestNextDue(ctx, l.name)
		if err == nil && !due.IsZero() {
			wait = min(wait, max(due.Sub(d.cfg.Now()), time.Millisecond))
		}
	}
	return wait
}

// dispatch hands one claimed request, leased until until, to its lane's
// workers, or settles it at once when its params are invalid or no backend
// serves its model.
func (d *Dispatcher) dispatch(l *lane, c store.ClaimedRequest, until time.Time) {
	if typ := d.unsent(c); typ != "" {
		// Its batch was canceled or expired while the claim ran.
		d.outcomes <- laneOutcome{store.Unsent(c, typ), l}
		return
	}
	model, maxTokens, perr := checkParams(c.Params)
	if perr != nil {
		d.outcomes <- laneOutcome{d.outcome(c, nil, perr), l}
		return
	}
	if l.backend == nil {
		_, err := d.router.Lookup(model)
		if err == nil {
			// Start reroutes every pending request, so this cannot happen;
			// settle it rather than loop.
			err = &backend.Error{Type: backend.ErrInvalidRequest, Message: fmt.Sprintf("model: %q was not routed to a backend; submit it again", model)}
		}
		d.outcomes <- laneOutcome{d.outcome(c, nil, err), l}
		return
	}
	l.queue.push(job{ClaimedRequest: c, model: model, maxTokens: maxTokens, lease: d.leases.claimed(until)})
}

// job is a claimed request on its way to a backend, with what checkParams
// read from its params.
type job struct {
	store.ClaimedRequest
	model     string
	maxTokens int64
	lease     jobLease
}

// work runs requests from its lane's queue until the queue closes. runCtx
// outlives stopCtx so that a graceful stop lets running requests finish.
func (d *Dispatcher) work(runCtx, stopCtx context.Context, l *lane) {
	// One observer per worker: its callbacks are made once, not per call.
	obs := newCallObserver(l.metrics)
	for {
		c, ok := l.queue.pop()
		if !ok {
			return
		}
		if stopCtx.Err() != nil {
			// Stopping: leave queued requests leased; Stop lets them go
			// once nothing runs.
			d.release(l, 1)
			continue
		}
		if now := d.cfg.Now(); d.leases.lapsed(c.lease, now) {
			// Its lease may have lapsed while it waited here (the process
			// stalled, or its claim took most of the lease): it may be
			// rescued and claimed again, perhaps sent by another process
			// already. It is given back unsent: if the lease still held it
			// goes back to pending; if not, the attempt guard ignores this.
			d.log.Debug("request's lease may have lapsed before it was sent; given back", "batch_seq", c.BatchSeq, "request_id", c.ID, "attempt", c.Attempt)
			d.outcomes <- laneOutcome{d.giveBack(c.ClaimedRequest, now), l}
			continue
		}
		if typ := d.unsent(c.ClaimedRequest); typ != "" {
			// Claimed ahead but its batch expired or is canceling before
			// it was sent: it settles as never sent.
			l.metrics.Settled(typ)
			d.outcomes <- laneOutcome{store.Unsent(c.ClaimedRequest, typ), l}
			continue
		}
		ctx, cancel := context.WithTimeout(runCtx, d.cfg.RequestTimeout)
		withdrawn := d.watch(c.ClaimedRequest)
		call := backend.Call{Model: c.model, MaxTokens: c.maxTokens, Params: c.Params, Attempt: c.Attempt, Betas: c.Betas, Withdrawn: withdrawn}
		obs.start(&call)
		msg, err := l.backend.Do(ctx, call)
		d.unwatch(c.BatchSeq)
		cancel()
		if runCtx.Err() != nil {
			// Abandoned by Stop: the attempt did not really fail.
			d.release(l, 1)
			continue
		}
		if errors.Is(err, backend.ErrWithdrawn) {
			// It waited in the backend for its rate limits, and its batch
			// was canceled or expired meanwhile, or the dispatcher began
			// to stop: it was never sent.
			typ := d.unsent(c.ClaimedRequest)
			if typ == "" && stopCtx.Err() != nil {
				// Stopping: left leased, as a queued request is; Stop
				// lets it go once nothing runs.
				d.release(l, 1)
				continue
			}
			o := store.Unsent(c.ClaimedRequest, cmp.Or(typ, store.ResultCanceled))
			l.metrics.Settled(o.ResultType)
			d.outcomes <- laneOutcome{o, l}
			continue
		}
		o := d.outcome(c.ClaimedRequest, msg, err)
		obs.end(err)
		d.record(l.metrics, &o, msg)
		d.outcomes <- laneOutcome{o, l}
	}
}

// record counts an attempt's outcome in the metrics, and reads a succeeded
// one's usage once, to ride on the outcome to the store.
func (d *Dispatcher) record(m *metrics.Backend, o *store.Outcome, msg json.RawMessage) {
	if o.Retry {
		m.Retried()
		return
	}
	m.Settled(o.ResultType)
	if o.ResultType != store.ResultSucceeded {
		return
	}
	if model, t, ok := cost.FromMessage(msg); ok {
		o.Usage = &store.MessageUsage{Model: model, Tokens: t}
		m.Usage(model, t, d.cfg.Prices)
	}
}

// callObserver times a worker's calls for the metrics: the wait for the
// rate limiter apart from the upstream call, and each upstream response.
// A worker makes one call at a time, so one observer serves all of them.
type callObserver struct {
	m          *metrics.Backend
	model      string
	begin      time.Time
	sent       time.Time
	responded  bool
	onSend     func()
	onResponse func(int, http.Header)
}

func newCallObserver(m *metrics.Backend) *callObserver {
	o := &callObserver{m: m}
	o.onSend = func() { o.sent = time.Now() }
	o.onResponse = func(status int, _ http.Header) {
		o.responded = true
		o.m.Upstream(status)
	}
	return o
}

// start begins observing call; without metrics it does nothing.
func (o *callObserver) start(call *backend.Call) {
	if o.m == nil {
		return
	}
	o.model, o.begin, o.responded = call.Model, time.Now(), false
	o.sent = o.begin
	call.OnSend, call.OnResponse = o.onSend, o.onResponse
}

// end records the call once Do returned err.
func (o *callObserver) end(err error) {
	if o.m == nil {
		return
	}
	if o.sent.After(o.begin) {
		o.m.RateWait(o.sent.Sub(o.begin))
	}
	status := http.StatusOK
	if err != nil {
		status = backend.AsError(err).Status
	}
	if !o.responded { // a backend without HTTP (the simulator), or no answer at all
		o.m.Upstream(status)
	}
	o.m.CallDuration(o.model, time.Since(o.sent))
}

func (d *Dispatcher) release(l *lane, n int) {
	d.mu.Lock()
	l.held -= n
	d.mu.Unlock()
	select {
	case d.freed <- struct{}{}:
	default:
	}
}

// outcome turns an attempt's result into what the store records.
func (d *Dispatcher) outcome(c store.ClaimedRequest, msg json.RawMessage, err error) store.Outcome {
	o := store.Outcome{RequestID: c.ID, BatchSeq: c.BatchSeq, CustomID: c.CustomID, Attempt: c.Attempt}
	// msg is valid JSON when err is nil: backend.Backend.Do promises it,
	// so it is not checked again; a reply that must be compacted is
	// checked on the way, for free.
	if err == nil && bytes.IndexByte(msg, '\n') >= 0 {
		// A JSONL line must not contain a newline.
		var buf bytes.Buffer
		if cerr := json.Compact(&buf, msg); cerr != nil {
			err = &backend.Error{Type: backend.ErrAPI, Status: 502, Message: "backend returned a response that is not valid JSON"}
		} else {
			msg = buf.Bytes()
		}
	}
	if err == nil {
		o.ResultType = store.ResultSucceeded
		o.Result = append(append([]byte(`{"type":"succeeded","message":`), msg...), '}')
		return o
	}
	be := backend.AsError(err)
	o.ResultType = store.ResultErrored
	o.Result = erroredResult(be)
	if be.Transient() && c.Attempt < d.cfg.MaxAttempts {
		o.Retry = true
		o.RetryAt = d.cfg.Now().Add(d.backoff(c.Attempt, be.RetryAfter))
	}
	return o
}

// backoff is the delay after the given failed attempt: exponential from
// BackoffBase, capped, with ±20% jitter so that a burst of failures does not
// retry in lockstep; never shorter than what the upstream asked for.
func (d *Dispatcher) backoff(attempt int, retryAfter time.Duration) time.Duration {
	delay := d.cfg.BackoffBase
	for i := 1; i < attempt && delay < d.cfg.BackoffMax; i++ {
		delay *= 2
	}
	delay = min(delay, d.cfg.BackoffMax)
	delay = time.Duration(float64(delay) * (0.8 + 0.4*rand.Float64()))
	return max(delay, min(retryAfter, time.Hour))
}

func erroredResult(be *backend.Error) json.RawMessage {
	inner, _ := json.Marshal(struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}{be.Type, be.Message})
	out := make([]byte, 0, len(inner)+96)
	out = append(out, `{"type":"errored","error":{"type":"error","error":`...)
	out = append(out, inner...)
	out = append(out, `,"request_id":null}}`...)
	return out
}

// complete writes outcomes in groups: whatever has arrived while the last
// write ran goes into the next one. A group smaller than minGroup waits up
// to linger for more while other requests are still running: every write
// transaction has a fixed cost (its statements, the batch rows, the commit)
// that a group of a few outcomes pays nearly in full, and an HTTP backend
// delivers outcomes one by one. The claimed-ahead queue keeps the workers
// busy meanwhile, and a result is late by at most linger.
func (d *Dispatcher) complete(ctx context.Context) {
	const maxGroup = 512
	const minGroup = maxGroup / 4
	const linger = 5 * time.Millisecond
	group := make([]laneOutcome, 0, maxGroup)
	timer := time.NewTimer(linger)
	timer.Stop()
	for o := range d.outcomes {
		group = append(group[:0], o)
		lingering := false
	fill:
		for len(group) < maxGroup {
			select {
			case o, ok := <-d.outcomes:
				if !ok {
					break fill
				}
				group = append(group, o)
				continue
			default:
			}
			if len(group) >= minGroup || !d.busy(len(group)) {
				break
			}
			if !lingering {
				lingering = true
				timer.Reset(linger)
			}
			select {
			case o, ok := <-d.outcomes:
				if !ok {
					break fill
				}
				group = append(group, o)
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		d.write(ctx, group)
	}
}

// busy reports whether more requests are held than the n outcomes at hand,
// i.e. whether more outcomes are on their way.
func (d *Dispatcher) busy(n int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	held := 0
	for _, l := range d.lanes {
		held += l.held
	}
	return held > n
}

// Failed writes of outcomes (a store that is down, a full disk that even
// the reserve cannot cover) are retried after a delay that doubles from
// completeBackoffMin up to completeBackoffMax, and starts again from
// nothing after a write that works.
const (
	completeBackoffMin = 10 * time.Millisecond
	completeBackoffMax = 5 * time.Second
)

// write records a group of outcomes and releases their slots. While the
// dispatcher is claiming, the same transaction refills the lane that has
// the most slots to refill, so that under load each cycle costs the store
// one transaction, not two; the claim loop refills the others.
func (d *Dispatcher) write(ctx context.Context, group []laneOutcome) {
	outcomes := make([]store.Outcome, len(group))
	released := map[*lane]int{}
	for i, o := range group {
		outcomes[i] = o.Outcome
		released[o.lane]++
	}
	defer func() {
		for l, n := range released {
			d.release(l, n)
		}
	}()
	complete := store.RequestsCompleteParams{Owner: d.cfg.Owner, Now: d.cfg.Now(), Outcomes: outcomes}
	// The refill queues jobs and may send outcomes, so it runs inside the
	// gate: a stop that begins meanwhile waits for it.
	if d.stopCtx.Err() == nil && d.enter() {
		written := d.completeAndRefill(ctx, complete, released)
		d.leave()
		if written {
			return
		}
	}
	fails := failures{op: "complete", ops: "completions", min: completeBackoffMin, max: completeBackoffMax}
	for {
		changes, err := d.store.RequestsComplete(ctx, complete)
		if err == nil {
			fails.succeeded(d.log, time.Now())
			d.emit(changes...)
			return
		}
		if ctx.Err() != nil {
			return // abandoned by Stop; the leases lapse and the requests rerun
		}
		// Outcomes are only in memory: keep trying rather than lose them.
		// If the process dies meanwhile, the leases lapse and the requests
		// run again.
		delay := fails.failed(d.log, err, time.Now(), "outcomes", len(group))
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// completeAndRefill writes complete and, in the same transaction, refills
// the lane that has the most slots to refill; it reports whether the
// outcomes are written.
func (d *Dispatcher) completeAndRefill(ctx context.Context, complete store.RequestsCompleteParams, released map[*lane]int) bool {
	var refill *lane
	for l, n := range released {
		if refill == nil || n > released[refill] {
			refill = l
		}
	}
	free := d.reserve(refill, released[refill])
	if free == 0 {
		return false
	}
	now := d.cfg.Now()
	claim := store.RequestsClaimParams{Backend: refill.name, Owner: d.cfg.Owner, Limit: free, Now: now, LeaseUntil: now.Add(d.cfg.Lease)}
	if d.cfg.ClaimBeside {
		return d.completeBesideClaim(ctx, complete, refill, free, claim)
	}
	changes, claimed, err := d.store.RequestsCompleteAndClaim(ctx, complete, claim)
	// The group's own slots are released by write's deferred release.
	d.unreserve(refill, free-len(claimed))
	if err != nil {
		// The outcomes are written alone next, and that write's failure
		// is logged (once, by failures); the claim's is the claim
		// loop's to log.
		d.log.Debug("complete and claim failed", "err", err, "outcomes", len(complete.Outcomes))
		return false
	}
	d.emit(changes...)
	for _, c := range claimed {
		d.dispatch(refill, c, claim.LeaseUntil)
	}
	return true
}

// completeBesideClaim is completeAndRefill for Config.ClaimBeside: the
// refill's claim (free slots reserved on refill) runs in a transaction of
// its own while the outcomes are written, so that it neither waits for the
// completion nor holds its batches' rows longer, and what it claims is
// dispatched as soon as it returns, even if the write then fails (write
// writes alone next).
func (d *Dispatcher) completeBesideClaim(ctx context.Context, complete store.RequestsCompleteParams, refill *lane, free int, claim store.RequestsClaimParams) bool {
	done := make(chan struct{})
	go func() {
		// Inside the caller's gate, which waits for done.
		defer close(done)
		claimed, err := d.store.RequestsClaim(ctx, claim)
		d.unreserve(refill, free-len(claimed))
		if err != nil {
			// The claim loop claims for the slots instead, and logs
			// its own failures.
			d.log.Debug("claim beside completion failed", "err", err)
		}
		for _, c := range claimed {
			d.dispatch(refill, c, claim.LeaseUntil)
		}
	}()
	changes, err := d.store.RequestsComplete(ctx, complete)
	<-done
	if err != nil {
		d.log.Debug("completion beside claim failed", "err", err, "outcomes", len(complete.Outcomes))
		return false
	}
	d.emit(changes...)
	return true
}

func (d *Dispatcher) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			now := d.cfg.Now()
			until := d.leases.heartbeat(now)
			if err := d.store.RequestsHeartbeat(ctx, store.RequestsHeartbeatParams{Owner: d.cfg.Owner, LeaseUntil: until, Now: now}); err != nil && ctx.Err() == nil {
				d.log.Error("heartbeat failed", "err", err)
			}
		}
	}
}

// RecheckCanceled makes the dispatcher look at once for batches canceled
// through another process whose requests it holds: the server calls it
// when the store's notifications may have been lost (its listener
// connected again).
func (d *Dispatcher) RecheckCanceled() {
	select {
	case d.recheck <- struct{}{}:
	default:
	}
}

// cancelLoop looks, every third of a lease (±20%, so that the processes of
// a cluster spread their looks) and when RecheckCanceled asks, for the
// canceling batches whose requests this process holds, and treats each as
// Canceled: the notification of a cancel made through another process
// normally does that at once, and this finds the cancels whose
// notification was lost.
func (d *Dispatcher) cancelLoop(ctx context.Context) {
	for {
		every := d.cfg.Lease / 3
		t := time.NewTimer(every*4/5 + rand.N(every*2/5+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-d.recheck:
			t.Stop()
		}
		seqs, err := d.store.BatchesCancelingHeld(ctx, store.BatchesCancelingHeldParams{Owner: d.cfg.Owner})
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("look for canceled batches failed", "err", err)
			}
			continue
		}
		for _, seq := range seqs {
			d.Canceled(seq)
		}
	}
}

// sweepLoop expires batches, rescues requests whose lease lapsed, archives
// old batches and purges deleted requests.
func (d *Dispatcher) sweepLoop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		wait := d.cfg.PollInterval
		swept := d.cfg.Now()
		if err := d.sweep(ctx, swept); err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log.Error("sweep failed", "err", err)
		}
		// An expiry this sweep has passed stays the next one while the
		// batch still has requests in flight: it is not due again.
		if next, err := d.store.BatchNextExpiry(ctx); err == nil && next.After(swept) {
			wait = min(wait, max(next.Sub(d.cfg.Now()), time.Millisecond))
		}
		// Another process leads: contend again when its lease lapses, so
		// that a dead leader's chores resume within its lease rather than
		// up to a poll later.
		if lapses := d.cfg.Leader.Lapses(); !lapses.IsZero() {
			wait = min(wait, max(lapses.Sub(d.cfg.Now())+time.Millisecond, time.Millisecond))
		}
		timer.Reset(wait)
	}
}

func (d *Dispatcher) sweep(ctx context.Context, now time.Time) error {
	rescued, err := d.store.RequestsRescue(ctx, store.RequestsRescueParams{Now: now})
	if err != nil {
		return err
	}
	d.emit(rescued...)
	err = d.chores(ctx, now)
	// Requests of expired batches that were claimed ahead are not pending,
	// so the store cannot settle them: settle them here, not when a worker
	// frees up (on every process: the leader expired the batch).
	d.settleUnsent()
	if err != nil {
		return err
	}
	if len(rescued) > 0 {
		d.Wake()
	}
	return nil
}
