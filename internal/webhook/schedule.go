package webhook

import (
	"math/rand/v2"
	"time"
)

// schedule is the delay before each attempt of a delivery, the Standard
// Webhooks example schedule: schedule[0] precedes the first attempt,
// schedule[n] follows the n-th failure. Ten attempts over about 75.6 hours,
// in line with the three days of OpenAI and Stripe, so an event survives a
// receiver that is down over a weekend. An array, so it cannot be changed.
var schedule = [MaxAttempts]time.Duration{
	0,
	5 * time.Second,
	5 * time.Minute,
	30 * time.Minute,
	2 * time.Hour,
	5 * time.Hour,
	10 * time.Hour,
	14 * time.Hour,
	20 * time.Hour,
	24 * time.Hour,
}

// MaxAttempts is how many attempts a delivery gets before it fails.
const MaxAttempts = 10

// Schedule returns a copy of the nominal delays before attempts 1 to
// MaxAttempts (before jitter, floor and Retry-After), for documentation and
// for an API that shows when the next attempt is due.
func Schedule() []time.Duration { return append([]time.Duration(nil), schedule[:]...) }

const (
	// Jitter spreads each delay uniformly over ±20%, so endpoints that
	// failed together do not all retry in the same instant.
	Jitter = 0.2
	// ThrottleFloor is the least wait after a timeout or a 429: a receiver
	// that is overloaded gets a minute, not the 5 s of the second slot.
	ThrottleFloor = 60 * time.Second
	// MaxRetryAfter caps any wait a receiver can ask for.
	MaxRetryAfter = 24 * time.Hour
)

// NextDelay returns how long to wait before the next attempt of a delivery
// that has made attempt attempts so far (0 before the first), or false when
// the schedule is exhausted and the delivery has failed. rnd returns a
// uniform value in [0, 1) (nil means math/rand/v2); tests pass a constant.
//
// The scheduled delay is jittered uniformly within ±20%. A Retry-After from
// the receiver can only lengthen the wait, never shorten it: the result is
// the larger of the jittered delay and Retry-After clamped to twice the
// scheduled delay and to MaxRetryAfter. That is Svix's [scheduled,
// 2×scheduled] rule, except that jitter never pulls a delay below a
// Retry-After within the clamp, so a receiver asking for 120 s after a 429
// (floor 60 s, clamp 120 s) is not retried earlier. The clamp stops a
// receiver from stalling its own deliveries for days; the 60 s floor for
// timeouts and 429s is applied by Result.NextDelay, which knows the cause.
func NextDelay(attempt int, retryAfter time.Duration, rnd func() float64) (time.Duration, bool) {
	return nextDelay(attempt, 0, retryAfter, rnd)
}

func nextDelay(attempt int, floor, retryAfter time.Duration, rnd func() float64) (time.Duration, bool) {
	if attempt < 0 {
		attempt = 0
	}
	if attempt >= len(schedule) {
		return 0, false
	}
	base := schedule[attempt]
	if attempt > 0 {
		// The floor never applies to the first attempt, which is immediate.
		base = max(base, floor)
	}
	if rnd == nil {
		rnd = rand.Float64
	}
	r := rnd()
	if !(r >= 0) { // NaN or negative
		r = 0
	}
	if r >= 1 {
		r = 0.999999
	}
	d := time.Duration(float64(base) * (1 - Jitter + 2*Jitter*r))
	if retryAfter > 0 && attempt > 0 {
		d = max(d, min(retryAfter, 2*base, MaxRetryAfter))
	}
	return d, true
}

// ScaledDelay is Result.NextDelay with every wait multiplied by scale: the
// same schedule, compressed for tests that run real processes (serve's
// hidden --webhook-retry-scale). rnd is as for NextDelay.
func ScaledDelay(scale float64, rnd func() float64) func(r Result, attempt int) (time.Duration, bool) {
	return func(r Result, attempt int) (time.Duration, bool) {
		d, more := r.NextDelay(attempt, rnd)
		return time.Duration(float64(d) * scale), more
	}
}
