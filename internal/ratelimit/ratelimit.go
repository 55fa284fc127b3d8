// Package ratelimit paces the calls batchd makes to one backend so that it
// gets close to the upstream's limits without tripping them: the four
// limits Anthropic enforces (concurrency, requests per minute, input and
// output tokens per minute), an adaptive concurrency limit (AIMD: cut on
// 429/529, grow by one per window of successes) and the upstream's own
// anthropic-ratelimit-* headers.
//
// It wraps a backend.Backend. A call waits until the limits allow it; a
// call the upstream throttles (429, 529) is paced and sent again here,
// without spending one of the request's attempts, until its context ends.
package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"net/textproto"
	"strconv"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/backend"
	"github.com/batchd/batchd/internal/cost"
)

// Limits configures a Limiter. Zero means "no limit" for the per-minute
// figures.
type Limits struct {
	// MaxConcurrency is the ceiling on calls in flight: the adaptive limit
	// never goes above it, and the dispatcher runs this many workers for
	// the backend (default: Concurrency, or 64 if neither is set).
	MaxConcurrency int
	// Concurrency is where the adaptive limit starts (default, and at most,
	// MaxConcurrency). A low guess with room to grow is Concurrency 8,
	// MaxConcurrency 128.
	Concurrency int
	// Fixed turns adaptive concurrency off: Concurrency is then the limit.
	Fixed bool
	// HalveOn429 makes a 429 halve the limit, as a 529 does (classic AIMD),
	// instead of stepping it towards what the upstream accepted.
	HalveOn429 bool
	// RequestsPerMinute, InputTokensPerMinute and OutputTokensPerMinute are
	// the upstream's limits.
	RequestsPerMinute     int
	InputTokensPerMinute  int
	OutputTokensPerMinute int
	// Logger receives, at debug level, each upstream throttle and each
	// backend-wide pause, so an operator can see why calls slow down
	// (default: discard).
	Logger *slog.Logger
}

// Stats is a snapshot for GET /v1/backends.
type Stats struct {
	Concurrency    int    `json:"concurrency"`
	MaxConcurrency int    `json:"max_concurrency"`
	InFlight       int    `json:"in_flight"`
	Throttled      int64  `json:"throttled"`
	LastError      string `json:"last_error,omitempty"`
}

// Limiter is a backend.Backend that paces calls to the one it wraps.
type Limiter struct {
	inner  backend.Backend
	limits Limits
	now    func() time.Time
	log    *slog.Logger

	mu sync.Mutex
	// queue holds the calls waiting, first come first served. A call that
	// finds it empty and the limits open goes at once; otherwise it queues
	// and grant hands it a slot, so a release wakes only the waiter that
	// can use what was freed, never every waiting worker.
	queue []*waiter
	// timer runs grant when the waiter at the head of the queue is held by
	// time (a pause, the spacing, a bucket) rather than by a slot.
	timer      *time.Timer
	timerArmed bool
	timerAt    time.Time

	limit     float64 // current concurrency limit
	inFlight  int
	successes int       // successes in the current window
	cutAt     time.Time // when the limit was last halved
	window    time.Duration
	wmax      float64 // calls the upstream accepted when it last throttled; 0 before
	// probeEvery is how many windows of successes the limit waits, at or
	// above wmax, before it steps one above it again; it grows fourfold
	// with each throttle (at most once per window) and halves when a step
	// above held.
	probeEvery int
	probeWins  int       // windows of successes at the current probing level
	probing    bool      // the limit stepped above wmax and no throttle has come since
	probeCutAt time.Time // when probeEvery was last raised
	// lastOK is when a call last succeeded; streakSince is when the first
	// throttle since then came (zero when none has).
	lastOK      time.Time
	streakSince time.Time
	paused      time.Time
	// spacing, until spacingUntil, is the least time between two calls
	// while the upstream's requests budget runs low; nextAt is the earliest
	// the next call may go.
	spacing      time.Duration
	spacingUntil time.Time
	nextAt       time.Time
	rpm          *bucket
	itpm         *bucket
	otpm         *bucket
	throttled    int64
	lastErr      string
	// share is this process's part of a cluster's limits (share.go); nil
	// when it was never set: the configured limits are all its own.
	share *share
}

// waiter is one call queued in acquire.
type waiter struct {
	inTok, outTok int
	ready         chan struct{} // closed once granted
	granted       bool          // a slot and its tokens were taken for it
	gone          bool          // it stopped waiting (ctx, withdrawn); skip it
}

// maxProbeEvery caps the windows between two probes above the level the
// upstream last accepted: a concurrency cap rarely moves, and each probe
// above it costs one throttled call. (Against an upstream capped at 32
// calls, probing every window throttled 3% of the calls.)
const maxProbeEvery = 64

// New wraps inner.
func New(inner backend.Backend, l Limits) *Limiter {
	if l.MaxConcurrency <= 0 {
		l.MaxConcurrency = l.Concurrency
	}
	if l.MaxConcurrency <= 0 {
		l.MaxConcurrency = 64
	}
	if l.Concurrency <= 0 || l.Concurrency > l.MaxConcurrency {
		l.Concurrency = l.MaxConcurrency
	}
	log := l.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lim := &Limiter{
		inner: inner, limits: l, now: time.Now, log: log,
		limit: float64(l.Concurrency), window: time.Second, probeEvery: 1,
	}
	t := lim.now()
	lim.rpm = newBucket(l.RequestsPerMinute, t)
	lim.itpm = newBucket(l.InputTokensPerMinute, t)
	lim.otpm = newBucket(l.OutputTokensPerMinute, t)
	return lim
}

// Name implements backend.Backend.
func (l *Limiter) Name() string { return l.inner.Name() }

// Unwrap returns the wrapped backend.
func (l *Limiter) Unwrap() backend.Backend { return l.inner }

// Stats returns the current state.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{Concurrency: int(l.limit), MaxConcurrency: l.limits.MaxConcurrency, InFlight: l.inFlight, Throttled: l.throttled, LastError: l.lastErr}
}

// Limits returns the configured limits, defaults applied.
func (l *Limiter) Limits() Limits { return l.limits }

// maxTries bounds the throttled calls resent here: an upstream that keeps
// throttling one call is the dispatcher's to retry with backoff, attempts
// counted, not a loop here until the request times out.
const maxTries = 8

// Do implements backend.Backend.
func (l *Limiter) Do(ctx context.Context, call backend.Call) (json.RawMessage, error) {
	inTok, outTok := estimate(call)
	inner := call.OnResponse
	call.OnResponse = func(status int, h http.Header) {
		l.observe(h)
		if inner != nil {
			inner(status, h)
		}
	}
	var throttled error // the last throttle's error, once one came
	for try := 1; ; try++ {
		// Only a call never sent may be withdrawn; a resend after a
		// throttle settles with the throttle's error instead, and is
		// not sent again.
		if err := l.acquire(ctx, inTok, outTok, call.Withdrawn); err != nil {
			if throttled != nil && errors.Is(err, backend.ErrWithdrawn) {
				return nil, throttled
			}
			return nil, err
		}
		if call.OnSend != nil {
			call.OnSend()
		}
		start := l.now()
		msg, err := l.inner.Do(ctx, call)
		own := l.release(start, inTok, outTok, msg, err)
		if err == nil {
			return msg, nil
		}
		be := backend.AsError(err)
		if (be.Type != backend.ErrRateLimit && be.Type != backend.ErrOverloaded) || ctx.Err() != nil || try >= maxTries {
			return nil, err
		}
		throttled = err
		// Throttled: acquire paces the next try (a cut limit, a backend-wide
		// pause); a retry-after meant for this call alone is waited here,
		// holding no slot. It does not count as one of the request's
		// attempts.
		if own > 0 {
			t := time.NewTimer(own)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, err
			case <-call.Withdrawn:
				t.Stop()
				return nil, err
			case <-t.C:
			}
		}
	}
}

// acquire waits for a concurrency slot and the tokens of the per-minute
// buckets, until ctx ends or withdrawn closes (backend.ErrWithdrawn).
func (l *Limiter) acquire(ctx context.Context, inTok, outTok int, withdrawn <-chan struct{}) error {
	select {
	case <-withdrawn:
		return backend.ErrWithdrawn
	default:
	}
	l.mu.Lock()
	if len(l.queue) == 0 {
		now := l.now()
		wait, ok := l.admitLocked(now, inTok, outTok)
		if ok {
			l.mu.Unlock()
			return nil
		}
		if wait > 0 {
			l.armLocked(now, wait)
		}
	}
	w := &waiter{inTok: inTok, outTok: outTok, ready: make(chan struct{})}
	l.queue = append(l.queue, w)
	l.grantLocked() // the head may be one that gave up
	l.mu.Unlock()
	var err error
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-withdrawn:
		err = backend.ErrWithdrawn
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.granted {
		// Granted as it gave up: hand the slot and tokens on.
		l.inFlight--
		now := l.now()
		l.rpm.give(1, now)
		l.itpm.give(inTok, now)
		l.otpm.give(outTok, now)
	}
	w.gone = true
	l.grantLocked()
	return err
}

// admitLocked takes a slot and the call's tokens if the limits allow it
// now. Otherwise it returns how long until time alone may allow it: 0 when
// the call waits for a slot, which only a release or a grown limit frees.
func (l *Limiter) admitLocked(now time.Time, inTok, outTok int) (time.Duration, bool) {
	switch {
	case l.paused.After(now):
		return l.paused.Sub(now), false
	case l.nextAt.After(now):
		return l.nextAt.Sub(now), false
	case float64(l.inFlight) >= min(l.limit, l.ceilingLocked()):
		return 0, false
	}
	if wait := max(l.rpm.wait(1, now), l.itpm.wait(inTok, now), l.otpm.wait(outTok, now)); wait > 0 {
		return wait, false
	}
	l.rpm.take(1, now)
	l.itpm.take(inTok, now)
	l.otpm.take(outTok, now)
	if now.Before(l.spacingUntil) {
		l.nextAt = now.Add(l.spacing)
	}
	l.inFlight++
	return 0, true
}

// grantLocked admits waiters from the head of the queue while the limits
// allow, waking each one it admits and no other. When the head is held by
// time, the timer runs grant again then.
func (l *Limiter) grantLocked() {
	if len(l.queue) == 0 {
		return
	}
	now := l.now()
	for len(l.queue) > 0 {
		w := l.queue[0]
		if !w.gone {
			wait, ok := l.admitLocked(now, w.inTok, w.outTok)
			if !ok {
				if wait > 0 {
					l.armLocked(now, wait)
				}
				return
			}
			w.granted = true
			close(w.ready)
		}
		l.queue[0] = nil
		l.queue = l.queue[1:]
	}
	l.queue = nil // let the emptied backing array go
}

// armLocked makes sure grant runs within wait.
func (l *Limiter) armLocked(now time.Time, wait time.Duration) {
	at := now.Add(wait)
	if l.timerArmed && !at.Before(l.timerAt) {
		return
	}
	l.timerArmed, l.timerAt = true, at
	if l.timer == nil {
		l.timer = time.AfterFunc(wait, l.onTimer)
		return
	}
	l.timer.Reset(wait)
}

func (l *Limiter) onTimer() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.timerArmed = false
	l.grantLocked()
}

// throttleEvent is what a throttle changed, logged after the lock is let go.
type throttleEvent struct {
	status     int
	typ        string
	retryAfter time.Duration
	limit      int
	inFlight   int
	pausedFor  time.Duration // > 0: the whole backend pauses
	reason     string
}

// release ends a call: it adapts the concurrency limit, corrects the token
// estimates with the real usage and admits the waiters that can now go. It
// returns how long the call must wait before it is sent again, when the
// upstream throttled it alone.
//
// A 429's retry-after applies to the throttled call only while other calls
// still get through: that is an upstream's concurrency cap, and pausing
// every call for one excess call would idle the capacity that is there. The
// whole backend pauses for it when throttles repeat: no call has succeeded
// for at least the retry-after since the first of them (the throttled calls
// waited and were throttled again), or nothing else is in flight and
// nothing succeeded within the retry-after. A 529's retry-after (the
// upstream overloaded as a whole) always pauses the backend, as does a
// spent anthropic-ratelimit-* budget (observe).
func (l *Limiter) release(start time.Time, inTok, outTok int, msg json.RawMessage, err error) (own time.Duration) {
	// The reply's usage only corrects the token buckets: without one
	// configured it is not read at all (the dispatcher reads it anyway, for
	// the usage totals), and with one it is read before the lock is taken,
	// which every other call's acquire and release wait on.
	var used tokensUsed
	if err == nil && (l.itpm != nil || l.otpm != nil) {
		used.in, used.out, used.ok = usage(msg)
	}
	l.mu.Lock()
	ev, own := l.releaseLocked(start, inTok, outTok, used, err)
	l.grantLocked()
	l.mu.Unlock()
	if ev != nil {
		l.logThrottle(ev)
	}
	return own
}

// tokensUsed is what a reply's usage says the call used; ok is false
// when it was not read or says nothing.
type tokensUsed struct {
	in, out int
	ok      bool
}

func (l *Limiter) releaseLocked(start time.Time, inTok, outTok int, used tokensUsed, err error) (*throttleEvent, time.Duration) {
	now := l.now()
	l.inFlight--
	if err != nil {
		be := backend.AsError(err)
		// A request's own fault (bad params, too large) says nothing about
		// the upstream's health, which is what last_error reports.
		if be.Type != backend.ErrInvalidRequest && be.Type != backend.ErrRequestTooLarge && be.Type != backend.ErrNotFound {
			l.lastErr = be.Type + ": " + be.Message
		}
		if be.Type != backend.ErrRateLimit && be.Type != backend.ErrOverloaded {
			return nil, 0
		}
		l.throttled++
		// A rejected call used no tokens; its request slot stays spent,
		// which slows the resend a little.
		l.itpm.give(inTok, now)
		l.otpm.give(outTok, now)
		if l.streakSince.IsZero() {
			l.streakSince = now
		}
		l.cut(now, be.Type)
		ev := &throttleEvent{status: be.Status, typ: be.Type, retryAfter: be.RetryAfter, limit: int(l.limit), inFlight: l.inFlight}
		var own time.Duration
		if ra := be.RetryAfter; ra > 0 {
			switch {
			case be.Type == backend.ErrOverloaded:
				ev.reason = "overloaded"
			case now.Sub(l.streakSince) >= ra:
				ev.reason = "throttles repeated for a whole retry-after"
			case l.inFlight <= 0 && now.Sub(l.lastOK) >= ra:
				ev.reason = "nothing else in flight or succeeding"
			default:
				own = ra
			}
			if ev.reason != "" {
				ev.pausedFor = ra
				l.paused = maxTime(l.paused, now.Add(ra))
			}
		}
		return ev, own
	}
	l.lastOK, l.streakSince = now, time.Time{}
	if latency := now.Sub(start); latency > 0 {
		// The window of AIMD is one call's latency: a smoothed average.
		l.window = (7*l.window + latency) / 8
	}
	if used.ok {
		l.itpm.give(inTok-used.in, now)
		l.otpm.give(outTok-used.out, now)
	}
	l.grow()
	return nil, 0
}

func (l *Limiter) logThrottle(ev *throttleEvent) {
	ctx := context.Background()
	if !l.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	l.log.LogAttrs(ctx, slog.LevelDebug, "upstream throttled", slog.String("backend", l.inner.Name()),
		slog.Int("status", ev.status), slog.String("type", ev.typ), slog.Duration("retry_after", ev.retryAfter),
		slog.Int("limit", ev.limit), slog.Int("in_flight", ev.inFlight))
	if ev.pausedFor > 0 {
		l.log.LogAttrs(ctx, slog.LevelDebug, "backend paused", slog.String("backend", l.inner.Name()),
			slog.Duration("for", ev.pausedFor), slog.String("reason", ev.reason))
	}
}

// cut lowers the limit after a throttle. A 529 (the upstream is
// overloaded as a whole) halves it, once per window. A 429 takes it one
// step towards the calls still in flight, which the upstream did accept: halving
// there too would leave the upstream half idle until the limit grew back,
// a quarter of its capacity lost on average (measured in
// BenchmarkWrongGuess).
func (l *Limiter) cut(now time.Time, typ string) {
	if l.limits.Fixed {
		return
	}
	accepted := float64(max(1, l.inFlight))
	l.wmax = accepted
	l.successes = 0
	l.probeWins, l.probing = 0, false
	// The throttles of one overshoot come back together: they count as one
	// for the probing backoff.
	if now.Sub(l.probeCutAt) >= l.window {
		l.probeCutAt = now
		l.probeEvery = min(4*l.probeEvery, maxProbeEvery)
	}
	if typ == backend.ErrOverloaded || l.limits.HalveOn429 {
		if now.Sub(l.cutAt) >= l.window {
			l.cutAt = now
			l.limit = max(1, l.limit/2)
		}
		return
	}
	// One step down per throttle, never below what is in flight: the excess
	// calls are each throttled at once, so the limit still falls fast from
	// a guess far too high, and it does not dip below the upstream's
	// capacity when a call happened to finish just before.
	l.limit = max(1, min(l.limit, max(accepted, l.limit-1)))
}

// grow adds one to the limit per window of successes (a window being as
// many successes as the limit), and returns quickly to just below the level
// the upstream last accepted; before any throttle it doubles (slow start).
// At or above that level each step is a probe that costs a throttled call
// if the upstream's capacity has not moved, so it waits probeEvery windows,
// which grows fourfold with each throttle and halves when a step held.
func (l *Limiter) grow() {
	if l.limits.Fixed {
		return
	}
	// A limit that is not binding proves nothing about the upstream: grow
	// only while the calls in flight (this one included) are near it, so a
	// light load does not leave a limit far above anything ever tried.
	if float64(l.inFlight+1) < 0.8*l.limit {
		return
	}
	l.successes++
	if float64(l.successes) < l.limit {
		return
	}
	l.successes = 0
	switch {
	case l.wmax == 0:
		l.limit *= 2
	case l.limit < 0.9*l.wmax:
		l.limit = min(2*l.limit, 0.9*l.wmax)
	case l.limit < l.wmax:
		l.limit++
	default:
		l.probeWins++
		if l.probeWins < l.probeEvery {
			return
		}
		l.probeWins = 0
		if l.probing {
			// The last step above held for a whole probing period: the
			// upstream accepts this much now; probe sooner.
			l.wmax = l.limit
			l.probeEvery = max(1, l.probeEvery/2)
		}
		l.probing = true
		l.limit++
	}
	l.limit = min(l.limit, l.ceilingLocked())
}

// observe reads anthropic-ratelimit-* headers to pace before a limit is
// hit: when the requests budget runs low (under a tenth of its limit), the
// remaining requests are spread evenly until its reset; when any budget is
// spent, the backend pauses until that budget's reset instead of being told
// with a 429.
func (l *Limiter) observe(h http.Header) {
	// Most upstreams send none of these headers: look each budget's
	// remaining count up once, by its canonical key as Header.Get would,
	// and take the lock only when one is there.
	var rems [len(rateHeaders)]string
	found := false
	for i, k := range rateHeaders {
		if v := h[k.remaining]; len(v) > 0 {
			rems[i], found = v[0], true
		}
	}
	if !found {
		return
	}
	var spent string
	var pausedFor time.Duration
	l.mu.Lock()
	now := l.now()
	for i, k := range rateHeaders {
		rem, err := strconv.ParseInt(rems[i], 10, 64)
		if err != nil {
			continue
		}
		reset, err := time.Parse(time.RFC3339, h.Get(k.reset))
		if err != nil || !reset.After(now) {
			continue
		}
		// Bounded as a retry-after is: a broken header or a skewed clock
		// must not park the backend for days.
		reset = minTime(reset, now.Add(backend.MaxRetryAfter))
		if rem <= 0 {
			if !l.paused.After(now) {
				spent, pausedFor = k.kind, reset.Sub(now) // a new pause, not one extended
			}
			l.paused = maxTime(l.paused, reset)
			continue
		}
		limit, _ := strconv.ParseInt(h.Get(k.limit), 10, 64)
		if k.kind == "requests" && limit > 0 && rem*10 < limit {
			l.spacing, l.spacingUntil = reset.Sub(now)/time.Duration(rem), reset
		}
	}
	l.mu.Unlock()
	if spent != "" {
		l.log.LogAttrs(context.Background(), slog.LevelDebug, "backend paused", slog.String("backend", l.inner.Name()),
			slog.Duration("for", pausedFor), slog.String("reason", "anthropic-ratelimit-"+spent+"-remaining: 0"))
	}
}

// rateHeader names the anthropic-ratelimit-* headers of one budget, keys
// in canonical form.
type rateHeader struct{ kind, remaining, reset, limit string }

var rateHeaders = func() (hs [4]rateHeader) {
	for i, kind := range []string{"requests", "input-tokens", "output-tokens", "tokens"} {
		key := func(s string) string {
			return textproto.CanonicalMIMEHeaderKey("anthropic-ratelimit-" + kind + "-" + s)
		}
		hs[i] = rateHeader{kind: kind, remaining: key("remaining"), reset: key("reset"), limit: key("limit")}
	}
	return hs
}()

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// estimate guesses a call's tokens before sending it: input from the
// params' size (about four bytes a token), output from max_tokens, which
// is reserved in full and refunded with the real usage. max_tokens comes
// from the call when the caller read it already (the dispatcher does).
func estimate(call backend.Call) (in, out int) {
	maxTokens := call.MaxTokens
	if maxTokens <= 0 {
		var p struct {
			MaxTokens int64 `json:"max_tokens"`
		}
		json.Unmarshal(call.Params, &p)
		maxTokens = p.MaxTokens
	}
	return max(1, len(call.Params)/4), int(max(1, min(maxTokens, math.MaxInt32)))
}

// usage reads a Message's usage: input tokens (cache reads and writes
// included) and output tokens, as encoding/json reads them
// (cost.MessageUsage, the same reading the usage totals make).
func usage(msg json.RawMessage) (in, out int, ok bool) {
	u, present, valid := cost.MessageUsage(msg)
	if !present || !valid {
		return 0, 0, false
	}
	return int(u.InputTokens + u.CacheCreationInputTokens + u.CacheReadInputTokens), int(u.OutputTokens), true
}

// bucket is a token bucket refilled continuously at its per-minute rate.
// It holds at most a second's allowance: the upstream's own bucket may be
// no deeper, so a burst of a minute's worth would be throttled, while the
// sustained rate is the same. Its level may go below zero when a call used
// more than was reserved; later calls then wait for it to refill.
type bucket struct {
	perMinute float64
	capacity  float64
	level     float64
	at        time.Time
}

// pace is the share of a per-minute limit batchd uses: arrivals jitter, so
// aiming at exactly the limit would be throttled now and then.
const pace = 0.98

func newBucket(perMinute int, now time.Time) *bucket {
	if perMinute <= 0 {
		return nil
	}
	rate := pace * float64(perMinute)
	c := max(1, rate/60)
	return &bucket{perMinute: rate, capacity: c, level: c, at: now}
}

func (b *bucket) refill(now time.Time) {
	b.level = min(b.capacity, b.level+now.Sub(b.at).Minutes()*b.perMinute)
	b.at = now
}

// wait is how long until n fit; a call larger than the bucket waits for a
// full bucket and then goes, leaving a debt.
func (b *bucket) wait(n int, now time.Time) time.Duration {
	if b == nil {
		return 0
	}
	b.refill(now)
	need := min(float64(n), b.capacity)
	if b.level >= need {
		return 0
	}
	return time.Duration((need - b.level) / b.perMinute * float64(time.Minute))
}

func (b *bucket) take(n int, now time.Time) {
	if b == nil {
		return
	}
	b.refill(now)
	b.level -= float64(n)
}

// give returns n (negative: takes more), never above a full bucket.
func (b *bucket) give(n int, now time.Time) {
	if b == nil {
		return
	}
	b.refill(now)
	b.level = min(b.capacity, b.level+float64(n))
}
