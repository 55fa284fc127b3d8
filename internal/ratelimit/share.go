package ratelimit

import "time"

// share is the part of a cluster's limits a Limiter applies: calls in
// flight at most, and whether a per-minute share is zero (nothing may go).
type share struct {
	ceiling float64
	blocked bool
}

// SetShare makes the Limiter apply this process's share of limits that
// hold for a whole cluster (Shares keeps it current): at most concurrency
// calls in flight, which the adaptive limit never grows above, and the
// per-minute limits rpm, itpm and otpm in place of the configured ones,
// whose buckets shrink or grow with them. A per-minute figure applies only
// where its limit is configured; a share of 0 of one stops every call.
// A lower share takes effect for new calls at once; the calls in flight
// above it finish (Stats().InFlight says when they have).
func (l *Limiter) SetShare(concurrency, rpm, itpm, otpm int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	old := l.ceilingLocked()
	c := float64(max(0, min(concurrency, l.limits.MaxConcurrency)))
	if l.share == nil {
		l.share = &share{}
	}
	l.share.ceiling, l.share.blocked = c, false
	switch {
	case l.limits.Fixed:
		l.limit = min(float64(l.limits.Concurrency), c)
	case l.limit >= old:
		// The share held the adaptive limit down: it resumes from where
		// it was, or from its configured start, within the new share.
		l.limit = min(c, max(l.limit, float64(l.limits.Concurrency)))
	default:
		l.limit = min(l.limit, c)
	}
	for _, b := range []struct {
		b     *bucket
		share int
	}{{l.rpm, rpm}, {l.itpm, itpm}, {l.otpm, otpm}} {
		switch {
		case b.b == nil: // no such limit configured
		case b.share <= 0:
			l.share.blocked = true
		default:
			b.b.resize(b.share, now)
		}
	}
	l.grantLocked()
}

// Ceiling is the most calls that may be in flight now: this process's
// share of a cluster's concurrency limit (0 while a per-minute share is
// zero), or the configured ceiling when no share was set. The adaptive
// limit (Stats().Concurrency) moves below it.
func (l *Limiter) Ceiling() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.ceilingLocked())
}

// ceilingLocked is the most calls that may be in flight: the share of a
// cluster's limit, or the configured ceiling when no share was set.
func (l *Limiter) ceilingLocked() float64 {
	switch {
	case l.share == nil:
		return float64(l.limits.MaxConcurrency)
	case l.share.blocked:
		return 0
	}
	return l.share.ceiling
}

// resize sets the bucket's rate to perMinute (paced, as newBucket does)
// and its depth to a second of it; what it holds above the new depth is
// dropped.
func (b *bucket) resize(perMinute int, now time.Time) {
	b.refill(now)
	b.perMinute = pace * float64(perMinute)
	b.capacity = max(1, b.perMinute/60)
	b.level = min(b.level, b.capacity)
}
