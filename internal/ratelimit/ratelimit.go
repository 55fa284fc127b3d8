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
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/backend"
)

// Limits configures a Limiter. Zero means "no limit" for the per-minute
// figures.
type Limits struct {
	// Concurrency is the starting limit on calls in flight (default 64).
	Concurrency int
	// MaxConcurrency caps adaptive growth (default 16 × Concurrency).
	MaxConcurrency int
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

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced whenever a waiter may proceed
	limit     float64       // current concurrency limit
	inFlight  int
	successes int       // successes in the current window
	cutAt     time.Time // when the limit was last halved
	window    time.Duration
	wmax      float64 // calls the upstream accepted when it last throttled; 0 before
	paused    time.Time
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
}

// New wraps inner.
func New(inner backend.Backend, l Limits) *Limiter {
	if l.Concurrency <= 0 {
		l.Concurrency = 64
	}
	if l.MaxConcurrency <= 0 {
		l.MaxConcurrency = 16 * l.Concurrency
	}
	l.MaxConcurrency = max(l.MaxConcurrency, l.Concurrency)
	lim := &Limiter{
		inner: inner, limits: l, now: time.Now, changed: make(chan struct{}),
		limit: float64(l.Concurrency), window: time.Second,
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

// Limits returns the configured limits.
func (l *Limiter) Limits() Limits { return l.limits }

// maxTries bounds the throttled calls resent here: an upstream that keeps
// throttling one call is the dispatcher's to retry with backoff, attempts
// counted, not a loop here until the request times out.
const maxTries = 8

// Do implements backend.Backend.
func (l *Limiter) Do(ctx context.Context, call backend.Call) (json.RawMessage, error) {
	inTok, outTok := estimate(call.Params)
	inner := call.OnResponse
	call.OnResponse = func(status int, h http.Header) {
		l.observe(h)
		if inner != nil {
			inner(status, h)
		}
	}
	for try := 1; ; try++ {
		// Only a call never sent may be withdrawn; a resend after a
		// throttle settles with the throttle's error instead.
		withdrawn := call.Withdrawn
		if try > 1 {
			withdrawn = nil
		}
		if err := l.acquire(ctx, inTok, outTok, withdrawn); err != nil {
			return nil, err
		}
		start := l.now()
		msg, err := l.inner.Do(ctx, call)
		l.release(start, inTok, outTok, msg, err)
		if err == nil {
			return msg, nil
		}
		be := backend.AsError(err)
		if (be.Type != backend.ErrRateLimit && be.Type != backend.ErrOverloaded) || ctx.Err() != nil || try >= maxTries {
			return nil, err
		}
		// Throttled: acquire paces the next try (a cut limit, a pause for
		// retry-after); it does not count as one of the request's attempts.
	}
}

// acquire waits for a concurrency slot and the tokens of the per-minute
// buckets, until ctx ends or withdrawn closes (backend.ErrWithdrawn).
func (l *Limiter) acquire(ctx context.Context, inTok, outTok int, withdrawn <-chan struct{}) error {
	for {
		select {
		case <-withdrawn:
			return backend.ErrWithdrawn
		default:
		}
		l.mu.Lock()
		now := l.now()
		wait := time.Duration(0)
		if l.paused.After(now) {
			wait = l.paused.Sub(now)
		} else if l.nextAt.After(now) {
			wait = l.nextAt.Sub(now)
		} else if float64(l.inFlight) < l.limit {
			wait = max(l.rpm.wait(1, now), l.itpm.wait(inTok, now), l.otpm.wait(outTok, now))
			if wait == 0 {
				l.rpm.take(1, now)
				l.itpm.take(inTok, now)
				l.otpm.take(outTok, now)
				if now.Before(l.spacingUntil) {
					l.nextAt = now.Add(l.spacing)
				}
				l.inFlight++
				l.mu.Unlock()
				return nil
			}
		}
		ch := l.changed
		l.mu.Unlock()
		var t *time.Timer
		var timer <-chan time.Time
		if wait > 0 {
			t = time.NewTimer(wait)
			timer = t.C
		}
		select {
		case <-ctx.Done():
		case <-ch:
		case <-timer:
		case <-withdrawn:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

func (l *Limiter) signal() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// release ends a call: it adapts the concurrency limit and corrects the
// token estimates with the real usage.
func (l *Limiter) release(start time.Time, inTok, outTok int, msg json.RawMessage, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.signal()
	now := l.now()
	l.inFlight--
	if err != nil {
		be := backend.AsError(err)
		// A request's own fault (bad params, too large) says nothing about
		// the upstream's health, which is what last_error reports.
		if be.Type != backend.ErrInvalidRequest && be.Type != backend.ErrRequestTooLarge && be.Type != backend.ErrNotFound {
			l.lastErr = be.Type + ": " + be.Message
		}
		if be.Type == backend.ErrRateLimit || be.Type == backend.ErrOverloaded {
			l.throttled++
			// A rejected call used no tokens; its request slot stays spent,
			// which slows the resend a little.
			l.itpm.give(inTok, now)
			l.otpm.give(outTok, now)
			if be.RetryAfter > 0 {
				l.paused = maxTime(l.paused, now.Add(be.RetryAfter))
			}
			l.cut(now, be.Type)
		}
		return
	}
	if latency := now.Sub(start); latency > 0 {
		// The window of AIMD is one call's latency: a smoothed average.
		l.window = (7*l.window + latency) / 8
	}
	if in, out, ok := usage(msg); ok {
		l.itpm.give(inTok-in, now)
		l.otpm.give(outTok-out, now)
	}
	l.grow()
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
	default:
		l.limit++
	}
	l.limit = min(l.limit, float64(l.limits.MaxConcurrency))
}

// observe reads anthropic-ratelimit-* headers to pace before a limit is
// hit: when the requests budget runs low (under a tenth of its limit), the
// remaining requests are spread evenly until its reset; when any budget is
// spent, the backend pauses until that budget's reset instead of being told
// with a 429.
func (l *Limiter) observe(h http.Header) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for _, kind := range []string{"requests", "input-tokens", "output-tokens", "tokens"} {
		rem, err := strconv.ParseInt(h.Get("anthropic-ratelimit-"+kind+"-remaining"), 10, 64)
		if err != nil {
			continue
		}
		reset, err := time.Parse(time.RFC3339, h.Get("anthropic-ratelimit-"+kind+"-reset"))
		if err != nil || !reset.After(now) {
			continue
		}
		if rem <= 0 {
			l.paused = maxTime(l.paused, reset)
			continue
		}
		limit, _ := strconv.ParseInt(h.Get("anthropic-ratelimit-"+kind+"-limit"), 10, 64)
		if kind == "requests" && limit > 0 && rem*10 < limit {
			l.spacing, l.spacingUntil = reset.Sub(now)/time.Duration(rem), reset
		}
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// estimate guesses a call's tokens before sending it: input from the
// params' size (about four bytes a token), output from max_tokens, which
// is reserved in full and refunded with the real usage.
func estimate(params json.RawMessage) (in, out int) {
	var p struct {
		MaxTokens int `json:"max_tokens"`
	}
	json.Unmarshal(params, &p)
	return max(1, len(params)/4), max(1, p.MaxTokens)
}

// usage reads a Message's usage.
func usage(msg json.RawMessage) (in, out int, ok bool) {
	var m struct {
		Usage *struct {
			InputTokens              int `json:"input_tokens"`
			OutputTokens             int `json:"output_tokens"`
			CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
			CacheReadInputTokens     int `json:"cache_read_input_tokens"`
		} `json:"usage"`
	}
	if json.Unmarshal(msg, &m) != nil || m.Usage == nil {
		return 0, 0, false
	}
	u := m.Usage
	return u.InputTokens + u.CacheCreationInputTokens + u.CacheReadInputTokens, u.OutputTokens, true
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
