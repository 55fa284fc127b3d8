package ratelimit

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// ShareStore is the part of the store Shares needs.
type ShareStore interface {
	LimitSharesRenew(ctx context.Context, p store.LimitSharesRenewParams) ([]store.Amounts, error)
	LimitSharesRelease(ctx context.Context, owner string) error
}

// SharesConfig configures Shares.
type SharesConfig struct {
	// Owner names this process's shares (ids.Owner()).
	Owner string
	// Lease is how long a share outlives a process that stopped renewing
	// it (default 15s): what a crash costs the others in waiting before
	// they take its share over.
	Lease time.Duration
	// Interval is the time between two renewals (default a third of
	// Lease, at most a second): how fast shares follow processes coming.
	Interval time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives renewal failures and, at debug level, each change of
	// a share (default: discard).
	Logger *slog.Logger
}

// Shares makes backends' limits hold for a whole cluster rather than for
// each process: every Interval it renews this process's leased share of
// each Limiter's limits in the store, one transaction for all of them,
// and applies what it is granted with SetShare. No call waits on the
// database: a call only meets its Limiter, whose limits are the share.
//
// The sum of what may be in flight never exceeds a limit, even while the
// shares move: a process reports as held the larger of its share and its
// calls in flight, so a share lowered counts in full until the calls above
// it have finished, and the store grants a raise only out of what the
// others do not hold (store.GrantShare). A process that cannot renew for
// half a lease stops sending before its lease lapses and the others take
// its share over. With one process (SQLite) the share is the whole limit.
type Shares struct {
	st   ShareStore
	cfg  SharesConfig
	lims []*sharedLimiter

	mu      sync.Mutex
	lastOK  time.Time
	stop    chan struct{}
	done    chan struct{}
	stopped bool
}

// sharedLimiter is one Limiter with the whole limits it shares and the
// share it applies.
type sharedLimiter struct {
	name    string
	lim     *Limiter
	whole   store.Amounts
	applied store.Amounts
}

// NewShares shares the limits of limiters (by backend name) through st.
// Until Start has renewed once the limiters send nothing: a process never
// sends on a share it was not granted.
func NewShares(st ShareStore, limiters map[string]*Limiter, cfg SharesConfig) *Shares {
	cfg.Lease = cmp.Or(cfg.Lease, 15*time.Second)
	if cfg.Interval <= 0 {
		cfg.Interval = min(time.Second, cfg.Lease/3)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Shares{st: st, cfg: cfg}
	for name, lim := range limiters {
		l := lim.Limits()
		whole := store.Amounts{Concurrency: l.MaxConcurrency, RequestsPerMinute: l.RequestsPerMinute,
			InputTokensPerMinute: l.InputTokensPerMinute, OutputTokensPerMinute: l.OutputTokensPerMinute}
		if l.Fixed {
			whole.Concurrency = l.Concurrency
		}
		lim.SetShare(0, 0, 0, 0)
		s.lims = append(s.lims, &sharedLimiter{name: name, lim: lim, whole: whole})
	}
	slices.SortFunc(s.lims, func(a, b *sharedLimiter) int { return cmp.Compare(a.name, b.name) })
	return s
}

// Start renews the shares once, so that the limiters can send when it
// returns, and then every Interval in the background until Stop.
func (s *Shares) Start(ctx context.Context) error {
	if len(s.lims) == 0 {
		return nil
	}
	if err := s.renew(ctx); err != nil {
		return fmt.Errorf("start limit shares: %w", err)
	}
	s.mu.Lock()
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	s.mu.Unlock()
	go s.loop(context.WithoutCancel(ctx))
	return nil
}

func (s *Shares) loop(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.tick(ctx)
	}
}

// tick is one renewal of the loop. When renewals have failed for half a
// lease, the others may soon take this process's shares over: it stops
// sending until a renewal succeeds again.
func (s *Shares) tick(ctx context.Context) {
	err := s.renew(ctx)
	if err == nil {
		return
	}
	s.cfg.Logger.Warn("renew limit shares", "err", err)
	s.mu.Lock()
	lapsing := s.cfg.Now().Sub(s.lastOK) >= s.cfg.Lease/2
	s.mu.Unlock()
	if lapsing {
		s.apply(make([]store.Amounts, len(s.lims)))
	}
}

// renew records what each limiter holds and applies what is granted.
func (s *Shares) renew(ctx context.Context) error {
	now := s.cfg.Now()
	claims := make([]store.LimitShareClaim, len(s.lims))
	s.mu.Lock()
	for i, sl := range s.lims {
		held := sl.applied
		// Calls above a lowered share are still in flight: they count
		// until they end. The limiter admits none above the share, so
		// this bounds what is in flight until the next SetShare.
		held.Concurrency = max(held.Concurrency, sl.lim.Stats().InFlight)
		claims[i] = store.LimitShareClaim{Backend: sl.name, Limit: sl.whole, Held: held}
	}
	s.mu.Unlock()
	grants, err := s.st.LimitSharesRenew(ctx, store.LimitSharesRenewParams{Owner: s.cfg.Owner, Now: now, Until: now.Add(s.cfg.Lease), Claims: claims})
	if err != nil {
		return err
	}
	if len(grants) != len(s.lims) {
		return fmt.Errorf("renew limit shares: %d grants for %d backends", len(grants), len(s.lims))
	}
	s.mu.Lock()
	s.lastOK = now
	s.mu.Unlock()
	s.apply(grants)
	return nil
}

// apply makes each limiter apply its grant.
func (s *Shares) apply(grants []store.Amounts) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, sl := range s.lims {
		g := grants[i]
		if g == sl.applied {
			continue
		}
		s.cfg.Logger.Debug("limit share", "backend", sl.name, "concurrency", g.Concurrency, "of", sl.whole.Concurrency,
			"requests_per_minute", g.RequestsPerMinute, "input_tokens_per_minute", g.InputTokensPerMinute,
			"output_tokens_per_minute", g.OutputTokensPerMinute)
		sl.lim.SetShare(g.Concurrency, g.RequestsPerMinute, g.InputTokensPerMinute, g.OutputTokensPerMinute)
		sl.applied = g
	}
}

// Share is the share of backend's limits this process applies now.
func (s *Shares) Share(backend string) (store.Amounts, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sl := range s.lims {
		if sl.name == backend {
			return sl.applied, true
		}
	}
	return store.Amounts{}, false
}

// Stop ends the renewals and gives this process's shares back, so that
// the others take them over at once. Call it once nothing is in flight
// (after the dispatcher stopped).
func (s *Shares) Stop(ctx context.Context) {
	s.mu.Lock()
	stop, done, stopped := s.stop, s.done, s.stopped
	s.stopped = true
	s.mu.Unlock()
	if stopped || len(s.lims) == 0 {
		return
	}
	if stop != nil {
		close(stop)
		<-done
	}
	s.apply(make([]store.Amounts, len(s.lims)))
	if err := s.st.LimitSharesRelease(context.WithoutCancel(ctx), s.cfg.Owner); err != nil {
		s.cfg.Logger.Warn("release limit shares", "err", err)
	}
}
