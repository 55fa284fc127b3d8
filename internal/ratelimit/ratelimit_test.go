package ratelimit

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
)

// fake is an upstream that admits at most capacity calls at once and
// throttles the rest at once, as a concurrency-limited API does.
type fake struct {
	capacity int64
	latency  time.Duration
	inFlight atomic.Int64
	peak     atomic.Int64
	calls    atomic.Int64
	rejected atomic.Int64
	header   http.Header
}

func (f *fake) Name() string { return "fake" }

func (f *fake) Do(ctx context.Context, call backend.Call) (json.RawMessage, error) {
	f.calls.Add(1)
	if call.OnResponse != nil && f.header != nil {
		call.OnResponse(200, f.header)
	}
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	if f.capacity > 0 && n > f.capacity {
		f.rejected.Add(1)
		return nil, &backend.Error{Type: backend.ErrRateLimit, Status: 429, Message: "too many"}
	}
	for p := f.peak.Load(); n > p && !f.peak.CompareAndSwap(p, n); p = f.peak.Load() {
	}
	select {
	case <-time.After(f.latency):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return json.RawMessage(`{"type":"message","usage":{"input_tokens":10,"output_tokens":5}}`), nil
}

func run(t *testing.T, l *Limiter, n int) {
	t.Helper()
	if failed := runCount(l, n); failed > 0 {
		t.Errorf("%d of %d calls failed", failed, n)
	}
}

// runCount makes n concurrent calls and returns how many failed.
func runCount(l *Limiter, n int) int64 {
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range n {
		wg.Go(func() {
			if _, err := l.Do(context.Background(), backend.Call{Params: json.RawMessage(`{"max_tokens":5}`)}); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	return failed.Load()
}

func TestFixedConcurrencyIsNeverExceeded(t *testing.T) {
	t.Parallel()
	f := &fake{latency: 5 * time.Millisecond}
	l := New(f, Limits{Concurrency: 4, Fixed: true})
	run(t, l, 100)
	if p := f.peak.Load(); p > 4 {
		t.Fatalf("peak %d in flight over a limit of 4", p)
	}
}

func TestAdaptiveFindsCapacityFromAbove(t *testing.T) {
	t.Parallel()
	f := &fake{capacity: 10, latency: 5 * time.Millisecond}
	l := New(f, Limits{Concurrency: 40})
	// Throttled calls are paced and resent here; only a call throttled
	// maxTries times goes back to the dispatcher as a failure.
	if failed := runCount(l, 600); failed > 30 {
		t.Fatalf("%d of 600 calls gave up: the limit came down too slowly", failed)
	}
	got := l.Stats().Concurrency
	if got < 5 || got > 20 {
		t.Fatalf("limit %d after settling; the upstream admits 10", got)
	}
	if f.rejected.Load() == 0 || l.Stats().Throttled != f.rejected.Load() {
		t.Fatalf("throttles seen %d, sent back %d", l.Stats().Throttled, f.rejected.Load())
	}
}

func TestAdaptiveGrowsFromBelow(t *testing.T) {
	t.Parallel()
	f := &fake{latency: 2 * time.Millisecond}
	l := New(f, Limits{Concurrency: 2, MaxConcurrency: 64})
	run(t, l, 2000)
	if got := l.Stats().Concurrency; got < 16 {
		t.Fatalf("limit only grew to %d with no throttling", got)
	}
}

func TestRequestsPerMinutePaces(t *testing.T) {
	t.Parallel()
	f := &fake{latency: time.Millisecond}
	l := New(f, Limits{Concurrency: 50, RequestsPerMinute: 600}) // 10 a second, burst of 600
	l.rpm.level = 0                                              // start empty to see the pace
	start := time.Now()
	run(t, l, 5)
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("5 calls at 10 a second from an empty bucket took %s", took)
	}
}

func TestRetryAfterPausesTheBackend(t *testing.T) {
	t.Parallel()
	b := &bucket{perMinute: 60, capacity: 60, level: 0, at: time.Unix(0, 0)}
	if w := b.wait(1, time.Unix(0, 0)); w < 900*time.Millisecond || w > 1100*time.Millisecond {
		t.Fatalf("an empty 60/min bucket should wait about 1s for one, waits %s", w)
	}
	b.give(-30, time.Unix(1, 0)) // used 30 more than reserved: debt
	if w := b.wait(1, time.Unix(1, 0)); w < 29*time.Second {
		t.Fatalf("debt must be paid before the next call, waits %s", w)
	}
	l := New(&fake{latency: time.Millisecond}, Limits{Concurrency: 1})
	l.release(time.Now(), 1, 1, nil, &backend.Error{Type: backend.ErrRateLimit, RetryAfter: 200 * time.Millisecond})
	l.inFlight++ // release above ended a call acquire never started
	l.inFlight--
	start := time.Now()
	run(t, l, 1)
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Fatalf("retry-after 200ms not honoured: next call after %s", took)
	}
}

func TestRateLimitHeadersPause(t *testing.T) {
	t.Parallel()
	reset := time.Now().Add(300 * time.Millisecond).UTC().Format(time.RFC3339Nano)
	h := http.Header{}
	h.Set("anthropic-ratelimit-requests-remaining", "0")
	h.Set("anthropic-ratelimit-requests-reset", reset)
	f := &fake{latency: time.Millisecond, header: h}
	l := New(f, Limits{Concurrency: 1})
	run(t, l, 1)
	f.header = nil
	start := time.Now()
	run(t, l, 1)
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Fatalf("a spent budget must pause until its reset; next call after %s", took)
	}
}

// BenchmarkWrongGuess: an upstream admits C calls at once with latency L
// and throttles the rest. Starting from C/4 and from 4C, N calls should
// take at most 1.10 × N·L/C. Reports the ratio.
func BenchmarkWrongGuess(b *testing.B) {
	const n, c = 4000, 40
	const lat = 20 * time.Millisecond
	for _, start := range []int{c / 4, 4 * c, c} {
		b.Run("start="+strconv.Itoa(start), func(b *testing.B) {
			for range b.N {
				f := &fake{capacity: c, latency: lat}
				// start == c is the baseline: a fixed, perfect guess.
				l := New(f, Limits{Concurrency: start, MaxConcurrency: 4 * c, Fixed: start == c, HalveOn429: os.Getenv("HALVE_ON_429") != ""})
				t0 := time.Now()
				var wg sync.WaitGroup
				for range n {
					wg.Go(func() { l.Do(context.Background(), backend.Call{Params: json.RawMessage(`{"max_tokens":5}`)}) })
				}
				wg.Wait()
				ideal := time.Duration(n) * lat / c
				b.ReportMetric(time.Since(t0).Seconds()/ideal.Seconds(), "ratio")
				b.ReportMetric(float64(f.rejected.Load())/float64(f.calls.Load()), "throttled_share")
			}
		})
	}
}

func TestLowRequestsBudgetSpreadsCalls(t *testing.T) {
	t.Parallel()
	h := http.Header{}
	h.Set("anthropic-ratelimit-requests-limit", "1000")
	h.Set("anthropic-ratelimit-requests-remaining", "5") // under a tenth
	h.Set("anthropic-ratelimit-requests-reset", time.Now().Add(500*time.Millisecond).UTC().Format(time.RFC3339Nano))
	f := &fake{latency: time.Millisecond, header: h}
	l := New(f, Limits{Concurrency: 10})
	run(t, l, 1) // learns the budget
	start := time.Now()
	run(t, l, 3)
	// 5 left over 500ms: one call every ~100ms.
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Fatalf("3 calls on a nearly spent budget took %s; they should be spread out", took)
	}
}

func TestHalveOn429(t *testing.T) {
	t.Parallel()
	l := New(&fake{}, Limits{Concurrency: 32, HalveOn429: true})
	l.inFlight = 1
	l.release(time.Now(), 1, 1, nil, &backend.Error{Type: backend.ErrRateLimit})
	if got := l.Stats().Concurrency; got != 16 {
		t.Fatalf("limit %d after a 429 with HalveOn429, want 16", got)
	}
	l2 := New(&fake{}, Limits{Concurrency: 32})
	l2.inFlight = 21
	l2.release(time.Now(), 1, 1, nil, &backend.Error{Type: backend.ErrRateLimit})
	if got := l2.Stats().Concurrency; got != 31 {
		t.Fatalf("limit %d after a 429 by default, want one step down to 31", got)
	}
	l2.inFlight = 1
	l2.release(time.Now(), 1, 1, nil, &backend.Error{Type: backend.ErrOverloaded})
	if got := l2.Stats().Concurrency; got != 15 {
		t.Fatalf("limit %d after a 529, want halved to 15", got)
	}
}
