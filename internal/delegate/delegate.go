// Package delegate runs the requests of an anthropic-batch backend through
// the upstream's own Message Batches API instead of one call per request, so
// that they keep Anthropic's batch price. The delegator claims its backend's
// pending requests like a dispatcher lane would, groups them into upstream
// batches (never mixing two of our batches, so a cancel maps cleanly), creates
// them, polls them with capped backoff, forwards cancels at once and writes
// every upstream result back through the store, so counts and ends work
// exactly as for the other backends.
//
// Restarts: before the create call, the delegator records the intent (the
// upstream batch row and which requests go into it) in the same store that
// holds the requests; RequestsRescue skips requests so marked. Once the
// upstream answers, its id is recorded. The row is held under a lease the
// delegator renews; when its process dies, the leader's delegator (on any
// process, the restarted one included) adopts it once the lease lapsed,
// resumes polling it, or returns its requests to pending if it never got
// an id. The remaining crash window is between the
// upstream accepting the create call and the id being committed locally
// (one SQLite transaction, milliseconds): a crash there leaves an upstream
// batch nobody polls, and its requests are sent again in a new one. Each
// request still gets exactly one result here, since results are only ever
// read from recorded upstream batches; the cost is the duplicate upstream
// work.
package delegate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/backend"
	"github.com/batchd/batchd/internal/ids"
	"github.com/batchd/batchd/internal/leader"
	"github.com/batchd/batchd/internal/store"
)

// Defaults and the upstream's own limits.
const (
	// MaxBatchRequests and MaxBatchBytes are Anthropic's limits on one
	// Message Batch.
	MaxBatchRequests = 100_000
	MaxBatchBytes    = 256 << 20

	DefaultVersion         = "2023-06-01"
	DefaultBaseURL         = "https://api.anthropic.com"
	DefaultPollInterval    = 5 * time.Second
	DefaultPollMaxInterval = 60 * time.Second
	DefaultTimeout         = 10 * time.Minute
	// DefaultLease is how long a dead delegator's upstream batches wait
	// before another takes them over.
	DefaultLease = 15 * time.Second
)

// Config configures the delegator of one anthropic-batch backend. Zero
// values take the defaults noted.
type Config struct {
	// Name is the backend's name: the delegator claims the requests routed
	// to it, and names its leases and upstream batch records after it.
	Name string
	// BaseURL is where the Message Batches API lives (default Anthropic's).
	BaseURL string
	// APIKey is the server's upstream key, sent as x-api-key.
	APIKey string
	// Version is the anthropic-version header (default 2023-06-01).
	Version string
	// MaxBatchRequests and MaxBatchBytes split upstream batches (default
	// and at most the upstream's limits, 100,000 requests and 256 MB).
	MaxBatchRequests int
	MaxBatchBytes    int64
	// PollInterval is the first wait between polls of an upstream batch,
	// doubled after each poll up to PollMaxInterval (defaults 5s and 60s).
	PollInterval    time.Duration
	PollMaxInterval time.Duration
	// ClaimInterval is how often new work is looked for when nothing wakes
	// the delegator (default 1s).
	ClaimInterval time.Duration
	// Timeout bounds one upstream call (default 10m: a create sends up to
	// 256 MB), and how long a results download may wait for its next
	// bytes.
	Timeout time.Duration
	// HTTPClient replaces the default client, mainly for tests.
	HTTPClient *http.Client
	// Owner names this process in its leases (default ids.Owner()); the
	// server gives every part of a process the same one.
	Owner string
	// Lease is how long the delegator's claims and upstream batches stay
	// its own without a heartbeat (default DefaultLease).
	Lease time.Duration
	// Leader elects the process that adopts the upstream batches of dead
	// delegators; nil: an elector of the delegator's own for Owner.
	Leader *leader.Elector
	// Logger, Now and OnChange are as for the dispatcher.
	Logger   *slog.Logger
	Now      func() time.Time
	OnChange func(*store.BatchChange)
}

func (c Config) withDefaults() Config {
	if c.BaseURL == "" {
		c.BaseURL = DefaultBaseURL
	}
	if c.Version == "" {
		c.Version = DefaultVersion
	}
	if c.MaxBatchRequests <= 0 || c.MaxBatchRequests > MaxBatchRequests {
		c.MaxBatchRequests = MaxBatchRequests
	}
	if c.MaxBatchBytes <= 0 || c.MaxBatchBytes > MaxBatchBytes {
		c.MaxBatchBytes = MaxBatchBytes
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.PollMaxInterval <= 0 {
		c.PollMaxInterval = DefaultPollMaxInterval
	}
	c.PollMaxInterval = max(c.PollMaxInterval, c.PollInterval)
	if c.ClaimInterval <= 0 {
		c.ClaimInterval = time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Owner == "" {
		c.Owner = ids.Owner()
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
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

// Backend stands for an anthropic-batch backend in the router, so that
// models route to it like to any other; its requests never reach Do, since
// the dispatcher runs no lane for it and the delegator claims them.
type Backend struct{ Config Config }

var _ backend.Backend = (*Backend)(nil)

// Name implements backend.Backend.
func (b *Backend) Name() string { return b.Config.Name }

// Do implements backend.Backend; it is never called in a wired server.
func (b *Backend) Do(context.Context, backend.Call) (json.RawMessage, error) {
	return nil, &backend.Error{Type: backend.ErrAPI, Message: "backend " + b.Config.Name + " delegates to the Message Batches API and runs no single requests"}
}

// Delegator runs one anthropic-batch backend. Start it once; Stop waits
// for it.
type Delegator struct {
	st    store.Store
	cfg   Config
	log   *slog.Logger
	up    *client
	owner string

	wake chan struct{}

	mu        sync.Mutex
	canceling map[int64]bool // our batches known to be canceling
	kick      chan struct{}  // closed and replaced when one starts canceling
	polling   map[int64]bool // upstream batches polled here, by local id
	ownLeader bool           // cfg.Leader was made by New: released at Stop

	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// New returns the delegator for cfg. It fails on an unusable base URL or a
// missing key, so a misconfigured server stops at startup.
func New(st store.Store, cfg Config) (*Delegator, error) {
	cfg = cfg.withDefaults()
	if cfg.APIKey == "" {
		return nil, errors.New("delegate: APIKey is required")
	}
	up, err := newClient(cfg.BaseURL, cfg.APIKey, cfg.Version, cfg.HTTPClient)
	if err != nil {
		return nil, fmt.Errorf("delegate: %w", err)
	}
	own := cfg.Leader == nil
	if own {
		cfg.Leader = leader.New(st, leader.Config{Owner: cfg.Owner, Now: cfg.Now, Logger: cfg.Logger})
	}
	return &Delegator{
		st: st, cfg: cfg, up: up,
		log:       cfg.Logger.With("component", "delegate", "backend", cfg.Name),
		owner:     cfg.Owner,
		wake:      make(chan struct{}, 1),
		canceling: map[int64]bool{},
		kick:      make(chan struct{}),
		polling:   map[int64]bool{},
		ownLeader: own,
	}, nil
}

// Wake tells the delegator that new requests may be claimable.
func (d *Delegator) Wake() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Canceled tells the delegator that one of our batches is canceling, so it
// forwards the cancel to that batch's upstream batches at once. The cancel
// may have been made through any process: the server calls it on a store
// notification, and leaseLoop finds the cancels a lost notification did
// not bring.
func (d *Delegator) Canceled(batchSeq int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.canceling[batchSeq] {
		return
	}
	d.canceling[batchSeq] = true
	close(d.kick)
	d.kick = make(chan struct{})
}

// Ended tells the delegator that a batch ended, perhaps in another
// process: it forgets that the batch was canceling.
func (d *Delegator) Ended(batchSeq int64) {
	d.mu.Lock()
	delete(d.canceling, batchSeq)
	d.mu.Unlock()
}

func (d *Delegator) isCanceling(seq int64) (bool, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.canceling[seq], d.kick
}

// Start resumes the upstream batches of dead delegators (when this process
// leads), then keeps claiming, renewing its leases and, while leading,
// adopting what dead delegators leave behind.
func (d *Delegator) Start(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	if err := d.resume(ctx); err != nil {
		cancel()
		return fmt.Errorf("start delegator %s: %w", d.cfg.Name, err)
	}
	d.cancel = cancel
	d.wg.Add(2)
	go func() { defer d.wg.Done(); d.claimLoop(ctx) }()
	go func() { defer d.wg.Done(); d.leaseLoop(ctx) }()
	return nil
}

// leaseLoop renews this delegator's leases every third of a lease and, on
// the leader, adopts the upstream batches whose lease lapsed.
func (d *Delegator) leaseLoop(ctx context.Context) {
	for sleep(ctx, d.cfg.Lease/3, nil) {
		now := d.cfg.Now()
		until := now.Add(d.cfg.Lease)
		if err := d.st.RequestsHeartbeat(ctx, store.RequestsHeartbeatParams{Owner: d.owner, LeaseUntil: until, Now: now}); err != nil && ctx.Err() == nil {
			d.log.Error("heartbeat failed", "err", err)
		}
		if err := d.st.UpstreamBatchesHeartbeat(ctx, store.UpstreamBatchesHeartbeatParams{Owner: d.owner, Backend: d.cfg.Name, LeaseUntil: until}); err != nil && ctx.Err() == nil {
			d.log.Error("heartbeat failed", "err", err)
		}
		if err := d.resume(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("resume upstream batches failed", "err", err)
		}
		if err := d.findCanceled(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("look for canceled batches failed", "err", err)
		}
	}
}

// findCanceled marks canceling the batches of the upstream batches polled
// here whose batch is canceling: a cancel made through another process is
// forwarded even if its notification was lost.
func (d *Delegator) findCanceled(ctx context.Context) error {
	ubs, err := d.st.UpstreamBatchesList(ctx, d.cfg.Name)
	if err != nil {
		return err
	}
	for _, ub := range ubs {
		if ub.Owner == d.owner && ub.BatchStatus == store.StatusCanceling {
			d.Canceled(ub.BatchSeq)
		}
	}
	return nil
}

// resume adopts, on the leader only, every upstream batch of this backend
// whose delegator's lease lapsed (its process died, or this one before a
// restart), then polls it again, or sends its requests again if its
// creation was interrupted.
func (d *Delegator) resume(ctx context.Context) error {
	lead, ok := d.cfg.Leader.Lead(ctx)
	if !ok {
		return nil
	}
	ubs, err := d.st.UpstreamBatchesList(ctx, d.cfg.Name)
	if err != nil {
		return err
	}
	for _, ub := range ubs {
		now := d.cfg.Now()
		if ub.Owner == d.owner || ub.LeaseExpires.After(now) {
			continue // ours, or its delegator is alive
		}
		err := d.st.UpstreamBatchAdopt(ctx, store.UpstreamBatchAdoptParams{ID: ub.ID, Owner: d.owner, Now: now, LeaseUntil: now.Add(d.cfg.Lease), Lead: lead})
		switch {
		case errors.Is(err, store.ErrConflict):
			continue // renewed meanwhile, or finished
		case err != nil:
			return err
		}
		ub.Owner = d.owner
		if ub.UpstreamID == "" {
			// Created upstream or not, nobody knows: send them again.
			changes, err := d.st.UpstreamBatchAbandon(ctx, store.UpstreamBatchAbandonParams{ID: ub.ID, Now: d.cfg.Now()})
			if err != nil {
				return err
			}
			d.emit(changes...)
			d.log.Warn("resending the requests of an upstream batch whose creation was interrupted", "upstream_batch", ub.ID)
			continue
		}
		if ub.BatchStatus == store.StatusCanceling {
			d.Canceled(ub.BatchSeq)
		}
		d.log.Info("resuming upstream batch", "upstream_id", ub.UpstreamID)
		d.goPoll(ctx, ub, true)
	}
	return nil
}

// Stop stops claiming and polling and waits, until ctx ends, for the
// goroutines to return (a create on its way among them), renewing the
// leases of its upstream batches meanwhile. Upstream batches go on
// upstream; the next Start resumes them.
func (d *Delegator) Stop(ctx context.Context) { d.stopOnce.Do(func() { d.stop(ctx) }) }

func (d *Delegator) stop(ctx context.Context) {
	if d.cancel == nil {
		return
	}
	d.cancel()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	// The leases are renewed while a create on its way finishes: lapsed,
	// the leader would take its upstream batch over as never created and
	// send its requests again.
	beat := time.NewTicker(d.cfg.Lease / 3)
	defer beat.Stop()
	for stopping := true; stopping; {
		select {
		case <-done:
			// Stopped cleanly: the upstream batches go on upstream, and
			// the next leader adopts them at once instead of after the
			// lease. Only this backend's: the process's other delegators
			// share its owner, and one may still be creating one.
			d.st.UpstreamBatchesHeartbeat(context.WithoutCancel(ctx), store.UpstreamBatchesHeartbeatParams{Owner: d.owner, Backend: d.cfg.Name})
			stopping = false
		case <-ctx.Done():
			// Out of time: a create may still be on its way, so the
			// leases are left to lapse rather than let go.
			stopping = false
		case <-beat.C:
			if err := d.st.UpstreamBatchesHeartbeat(ctx, store.UpstreamBatchesHeartbeatParams{Owner: d.owner, Backend: d.cfg.Name, LeaseUntil: d.cfg.Now().Add(d.cfg.Lease)}); err != nil && ctx.Err() == nil {
				d.log.Error("heartbeat failed", "err", err)
			}
		}
	}
	if d.ownLeader {
		d.cfg.Leader.Release(context.WithoutCancel(ctx))
	}
}

func (d *Delegator) emit(changes ...*store.BatchChange) {
	for _, ch := range changes {
		if ch.Ended {
			d.mu.Lock()
			delete(d.canceling, ch.Batch.Seq)
			d.mu.Unlock()
		}
		d.cfg.OnChange(ch)
	}
}

// sleep waits d or until ctx ends, reporting whether ctx is still live.
func sleep(ctx context.Context, d time.Duration, kick <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-kick:
	}
	return true
}

// claimLoop claims pending requests, at most one upstream batch's worth at
// a time, and delegates them.
func (d *Delegator) claimLoop(ctx context.Context) {
	for ctx.Err() == nil {
		b := &builder{d: d, open: map[int64]*group{}}
		for ctx.Err() == nil {
			now := d.cfg.Now()
			limit := min(claimChunk, d.cfg.MaxBatchRequests)
			claimed, err := d.st.RequestsClaim(ctx, store.RequestsClaimParams{
				// The lease, renewed by leaseLoop, only has to last until
				// the intent is recorded: RequestsRescue skips delegated
				// requests, whose upstream batch row holds the lease.
				Backend: d.cfg.Name, Owner: d.owner, Limit: limit, Now: now, LeaseUntil: now.Add(d.cfg.Lease),
			})
			if err != nil {
				if ctx.Err() == nil {
					d.log.Error("claim failed", "err", err)
				}
				break
			}
			b.add(ctx, claimed)
			if len(claimed) < limit {
				break
			}
		}
		b.flush(ctx)
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-time.After(d.cfg.ClaimInterval):
		}
	}
}

// claimChunk is how many requests one claim takes: their params are
// spooled to the upstream batch's body file at once, so memory holds one
// chunk, however large the upstream batch.
const claimChunk = 1000

// group is the requests of one upstream batch to be, and its create body
// spooled to a temporary file.
type group struct {
	ub   *store.UpstreamBatch
	reqs []store.ClaimedRequest // without their params, which are in body
	body *os.File
	size int64 // bytes of the whole create body
}

// builder fills groups, one open per batch of ours, from claimed chunks.
type builder struct {
	d    *Delegator
	open map[int64]*group
}

// add spools claimed requests into their batch's open group, sending a
// group as soon as the next request would not fit the upstream's limits.
func (b *builder) add(ctx context.Context, claimed []store.ClaimedRequest) {
	d := b.d
	var settle []store.Outcome
	defer func() { d.write(ctx, settle) }()
	for _, c := range claimed {
		if typ := d.unsent(c); typ != "" {
			settle = append(settle, store.Unsent(c, typ))
			continue
		}
		n := itemSize(c)
		if n+int64(len(bodyHead)+len(bodyTail)) > d.cfg.MaxBatchBytes {
			settle = append(settle, errored(c, backend.ErrRequestTooLarge, fmt.Sprintf("request is %d bytes, more than an upstream batch may hold (%d)", n, d.cfg.MaxBatchBytes)))
			continue
		}
		g := b.open[c.BatchSeq]
		if g != nil && (len(g.reqs) >= d.cfg.MaxBatchRequests || g.size+n > d.cfg.MaxBatchBytes) {
			delete(b.open, c.BatchSeq)
			b.send(ctx, g)
			g = nil
		}
		if g == nil {
			f, err := os.CreateTemp("", "batchd-upstream-*.json")
			if err != nil {
				// Given back, not dropped: the heartbeat would renew its
				// lease for as long as this process lives.
				d.log.Error("spool upstream batch", "err", err)
				settle = append(settle, d.giveBack(c)...)
				continue
			}
			g = &group{body: f, size: int64(len(bodyHead) + len(bodyTail))}
			b.open[c.BatchSeq] = g
		}
		if err := appendItem(g.body, c, len(g.reqs) == 0); err != nil {
			// The file may now end in part of an item: the whole group is
			// given back rather than sent broken.
			d.log.Error("spool upstream batch", "err", err)
			delete(b.open, c.BatchSeq)
			b.discard(ctx, g)
			settle = append(settle, d.giveBack(c)...)
			continue
		}
		g.size += n
		c.Params = nil
		g.reqs = append(g.reqs, c)
	}
}

// flush sends every open group.
func (b *builder) flush(ctx context.Context) {
	for seq, g := range b.open {
		delete(b.open, seq)
		b.send(ctx, g)
	}
}

// discard gives back the requests of a group that is not sent.
func (b *builder) discard(ctx context.Context, g *group) {
	g.body.Close()
	os.Remove(g.body.Name())
	b.d.write(ctx, b.d.giveBack(g.reqs...))
}

// send records the group's intent, then creates it upstream.
func (b *builder) send(ctx context.Context, g *group) {
	d := b.d
	defer func() {
		g.body.Close()
		os.Remove(g.body.Name())
	}()
	if len(g.reqs) == 0 {
		return
	}
	g.size-- // itemSize counts a comma the first item does not have
	ids := make([]int64, len(g.reqs))
	for i, c := range g.reqs {
		ids[i] = c.ID
	}
	ub, err := d.st.UpstreamBatchInsert(ctx, store.UpstreamBatchInsertParams{
		Backend: d.cfg.Name, Owner: d.owner, BatchSeq: g.reqs[0].BatchSeq, RequestIDs: ids, Now: d.cfg.Now(),
		LeaseUntil: d.cfg.Now().Add(d.cfg.Lease),
	})
	if err != nil {
		// Given back to be claimed again: left alone, their leases would
		// be renewed by the heartbeat for as long as this process lives.
		d.log.Error("record upstream batch failed", "err", err, "requests", len(ids))
		d.write(ctx, d.giveBack(g.reqs...))
		return
	}
	g.ub = ub
	d.send(ctx, g)
}

// giveBack returns claimed requests, never sent, to pending now
// (store.GiveBack), settling as unsent those that must not be sent any more.
func (d *Delegator) giveBack(reqs ...store.ClaimedRequest) []store.Outcome {
	out := make([]store.Outcome, 0, len(reqs))
	for _, c := range reqs {
		if typ := d.unsent(c); typ != "" {
			out = append(out, store.Unsent(c, typ))
			continue
		}
		out = append(out, store.GiveBack(c, d.cfg.Now()))
	}
	return out
}

// unsent is the result type of a claimed request that must not be sent any
// more, "" if it may be.
func (d *Delegator) unsent(c store.ClaimedRequest) string {
	if !d.cfg.Now().Before(c.ExpiresAt) {
		return store.ResultExpired
	}
	if canceling, _ := d.isCanceling(c.BatchSeq); canceling {
		return store.ResultCanceled
	}
	return ""
}

// send creates one recorded upstream batch, retrying transient failures
// with capped backoff, and starts polling it.
func (d *Delegator) send(ctx context.Context, g *group) {
	wait := d.cfg.PollInterval
	for {
		if typ := d.unsent(g.reqs[0]); typ != "" {
			d.finish(ctx, g.ub, g.reqs, func(c store.ClaimedRequest) store.Outcome { return store.Unsent(c, typ) })
			return
		}
		// A create already on its way is let finish when stopping: cut off,
		// the upstream may create a batch whose id is never recorded.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.Timeout)
		b, err := d.up.create(cctx, g.body, g.size, g.reqs[0].Betas)
		cancel()
		if err == nil {
			recorded := true
			if err := d.started(ctx, g.ub, b.ID); err != nil {
				// Polled all the same, recording it again meanwhile: its
				// requests are only sent again if this process stops
				// before the id is recorded.
				d.log.Error("record upstream batch id failed; polling it unrecorded", "upstream_id", b.ID, "err", err)
				g.ub.UpstreamID, recorded = b.ID, false
			}
			d.log.Info("created upstream batch", "upstream_id", b.ID, "requests", len(g.reqs))
			d.goPoll(ctx, g.ub, recorded)
			return
		}
		be := backend.AsError(err)
		if !be.Transient() {
			d.log.Error("upstream refused a batch", "err", be.Message, "requests", len(g.reqs))
			d.finish(ctx, g.ub, g.reqs, func(c store.ClaimedRequest) store.Outcome { return errored(c, be.Type, be.Message) })
			return
		}
		d.log.Warn("create upstream batch failed", "err", be.Message, "retry_in", wait)
		_, kick := d.isCanceling(g.reqs[0].BatchSeq)
		if !sleep(ctx, wait, kick) {
			return // the intent stays recorded; the next start resends
		}
		wait = min(2*wait, d.cfg.PollMaxInterval)
	}
}

// started records the upstream id, retrying briefly: until it is
// committed, a crash loses track of the upstream batch.
func (d *Delegator) started(ctx context.Context, ub *store.UpstreamBatch, upstreamID string) error {
	var err error
	for i := range 5 {
		if err = d.st.UpstreamBatchStart(context.WithoutCancel(ctx), store.UpstreamBatchStartParams{ID: ub.ID, UpstreamID: upstreamID}); err == nil {
			ub.UpstreamID = upstreamID
			return nil
		}
		time.Sleep(time.Duration(10<<i) * time.Millisecond)
	}
	return err
}

// goPoll polls ub in a goroutine of its own, unless one polls it already;
// recorded is false when ub's upstream id is not yet recorded in the store.
func (d *Delegator) goPoll(ctx context.Context, ub *store.UpstreamBatch, recorded bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.polling[ub.ID] {
		return
	}
	d.polling[ub.ID] = true
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer func() { d.mu.Lock(); delete(d.polling, ub.ID); d.mu.Unlock() }()
		d.poll(ctx, ub, recorded)
	}()
}

// poll waits for an upstream batch to end, forwarding a cancel as soon as
// our batch is canceling, then writes its results back.
func (d *Delegator) poll(ctx context.Context, ub *store.UpstreamBatch, recorded bool) {
	wait := d.cfg.PollInterval
	cancelSent := false
	for {
		if !recorded {
			// ErrConflict: recorded after all, or the row is gone (then
			// its requests are no longer held here, and nothing polled
			// is written).
			err := d.st.UpstreamBatchStart(ctx, store.UpstreamBatchStartParams{ID: ub.ID, UpstreamID: ub.UpstreamID})
			if recorded = err == nil || errors.Is(err, store.ErrConflict); !recorded && ctx.Err() == nil {
				d.log.Warn("record upstream batch id failed", "upstream_id", ub.UpstreamID, "err", err)
			}
		}
		canceling, kick := d.isCanceling(ub.BatchSeq)
		if canceling && !cancelSent {
			cctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
			_, err := d.up.cancel(cctx, ub.UpstreamID)
			cancel()
			if err != nil {
				d.log.Warn("forward cancel failed", "upstream_id", ub.UpstreamID, "err", err)
			} else {
				cancelSent = true
				wait = d.cfg.PollInterval // the end is near
				d.log.Info("forwarded cancel", "upstream_id", ub.UpstreamID)
			}
		}
		// Bounded like every upstream call: a connection that never
		// answers would hold this upstream batch for as long as the
		// process lives.
		gctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
		b, err := d.up.get(gctx, ub.UpstreamID)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && backend.AsError(err).Type == backend.ErrNotFound:
			// Deleted upstream, or another key's: nothing will ever come.
			// A failure to list its requests is tried again, not left
			// holding them.
			if err := d.finish(ctx, ub, nil, nil); err == nil || ctx.Err() != nil {
				return
			} else {
				d.log.Error("settle the requests of an upstream batch gone upstream failed", "upstream_id", ub.UpstreamID, "err", err)
			}
		case err != nil:
			d.log.Warn("poll upstream batch failed", "upstream_id", ub.UpstreamID, "err", err)
		case b.ProcessingStatus == "ended":
			if err := d.collect(ctx, ub); err == nil || ctx.Err() != nil {
				return
			} else {
				d.log.Warn("read upstream results failed", "upstream_id", ub.UpstreamID, "err", err)
			}
		}
		if !sleep(ctx, wait, kick) {
			return
		}
		wait = min(2*wait, d.cfg.PollMaxInterval)
	}
}

// maxLine bounds one results line: a Message with a large max_tokens.
const maxLine = 64 << 20

// writeGroup is how many results go into one store transaction.
const writeGroup = 512

// collect streams an ended upstream batch's results into ours, in groups.
// It is safe to repeat after a failure or a crash: requests already settled
// are no longer listed, and RequestsComplete settles each only once.
func (d *Delegator) collect(ctx context.Context, ub *store.UpstreamBatch) error {
	reqs, err := d.st.UpstreamBatchRequests(ctx, ub.ID)
	if err != nil {
		return err
	}
	byID := make(map[int64]store.ClaimedRequest, len(reqs))
	for _, c := range reqs {
		byID[c.ID] = c
	}
	body, err := d.up.results(ctx, ub.UpstreamID, d.cfg.Timeout)
	if err != nil {
		return err
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	var group []store.Outcome
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var r struct {
			CustomID string          `json:"custom_id"`
			Result   json.RawMessage `json:"result"`
		}
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("results line: %w", err)
		}
		id, ok := requestID(r.CustomID)
		c, mine := byID[id]
		if !ok || !mine {
			continue // settled already, or not ours
		}
		delete(byID, id)
		group = append(group, resultOutcome(c, r.Result))
		if len(group) >= writeGroup {
			if err := d.writeOnce(ctx, group); err != nil {
				return err
			}
			group = group[:0]
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("results stream: %w", err)
	}
	if err := d.writeOnce(ctx, group); err != nil {
		return err
	}
	missing := make([]store.ClaimedRequest, 0, len(byID))
	for _, c := range reqs {
		if _, ok := byID[c.ID]; ok {
			missing = append(missing, c)
		}
	}
	d.finish(ctx, ub, missing, nil)
	return nil
}

// finish settles reqs with how (nil: errored, missing from the upstream's
// results) and forgets the upstream batch. reqs nil means every request
// still unsettled; only listing them can fail it.
func (d *Delegator) finish(ctx context.Context, ub *store.UpstreamBatch, reqs []store.ClaimedRequest, how func(store.ClaimedRequest) store.Outcome) error {
	if reqs == nil {
		var err error
		if reqs, err = d.st.UpstreamBatchRequests(ctx, ub.ID); err != nil {
			return fmt.Errorf("finish upstream batch: %w", err)
		}
	}
	if how == nil {
		msg := "request missing from the results of upstream batch " + ub.UpstreamID
		how = func(c store.ClaimedRequest) store.Outcome { return errored(c, backend.ErrAPI, msg) }
	}
	outcomes := make([]store.Outcome, 0, len(reqs))
	for _, c := range reqs {
		outcomes = append(outcomes, how(c))
	}
	for start := 0; start < len(outcomes); start += writeGroup {
		d.write(ctx, outcomes[start:min(start+writeGroup, len(outcomes))])
	}
	if err := d.st.UpstreamBatchDelete(ctx, ub.ID); err != nil && ctx.Err() == nil {
		d.log.Error("forget upstream batch failed", "err", err)
	}
	return nil
}

func (d *Delegator) writeOnce(ctx context.Context, outcomes []store.Outcome) error {
	if len(outcomes) == 0 {
		return nil
	}
	changes, err := d.st.RequestsComplete(ctx, store.RequestsCompleteParams{Owner: d.owner, Now: d.cfg.Now(), Outcomes: outcomes})
	if err != nil {
		return err
	}
	d.emit(changes...)
	return nil
}

// write records outcomes, retrying until ctx ends: they are only in memory.
func (d *Delegator) write(ctx context.Context, outcomes []store.Outcome) {
	delay := 10 * time.Millisecond
	for {
		err := d.writeOnce(ctx, outcomes)
		if err == nil || ctx.Err() != nil {
			return
		}
		d.log.Error("complete failed", "err", err, "retry_in", delay)
		if !sleep(ctx, delay, nil) {
			return
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// resultOutcome turns an upstream result object into ours: succeeded and
// errored keep the upstream object as it came (compacted onto one line);
// canceled and expired carry none.
func resultOutcome(c store.ClaimedRequest, result json.RawMessage) store.Outcome {
	var head struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(result, &head) != nil {
		return errored(c, backend.ErrAPI, "upstream result is not a JSON object")
	}
	switch head.Type {
	case store.ResultSucceeded, store.ResultErrored:
		var buf bytes.Buffer
		if err := json.Compact(&buf, result); err != nil {
			return errored(c, backend.ErrAPI, "upstream result is not valid JSON")
		}
		return outcome(c, head.Type, buf.Bytes())
	case store.ResultCanceled, store.ResultExpired:
		return outcome(c, head.Type, nil)
	}
	return errored(c, backend.ErrAPI, fmt.Sprintf("upstream result has unknown type %q", head.Type))
}

func outcome(c store.ClaimedRequest, typ string, result json.RawMessage) store.Outcome {
	return store.Outcome{RequestID: c.ID, BatchSeq: c.BatchSeq, CustomID: c.CustomID, Attempt: c.Attempt, ResultType: typ, Result: result}
}

func errored(c store.ClaimedRequest, typ, msg string) store.Outcome {
	inner, _ := json.Marshal(struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}{typ, msg})
	res := append(append([]byte(`{"type":"errored","error":{"type":"error","error":`), inner...), `,"request_id":null}}`...)
	return outcome(c, store.ResultErrored, res)
}
