package ratelimit

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
)

// scripted answers each call with the next of its answers (a 429 with a
// long retry-after, say), then holds the calls after them until release
// closes.
type scripted struct {
	answers []error
	n       atomic.Int64
	started chan struct{}
	release chan struct{}
}

func (s *scripted) Name() string { return "scripted" }

func (s *scripted) Do(ctx context.Context, _ backend.Call) (json.RawMessage, error) {
	if i := s.n.Add(1) - 1; int(i) < len(s.answers) && s.answers[i] != nil {
		return nil, s.answers[i]
	}
	s.started <- struct{}{}
	select {
	case <-s.release:
		return json.RawMessage(`{}`), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestRetryAfterOnACapHoldsOnlyThatCall: while another call is in flight
// (the upstream is capping concurrency, not out of budget), a 429's
// retry-after holds the throttled call's resend, not the backend: a third
// call goes at once. Before, every call waited the retry-after.
func TestRetryAfterOnACapHoldsOnlyThatCall(t *testing.T) {
	t.Parallel()
	up := &scripted{
		// The first call succeeds (held); the second is throttled for an hour.
		answers: []error{nil, &backend.Error{Type: backend.ErrRateLimit, Status: 429, RetryAfter: time.Hour}},
		started: make(chan struct{}, 4), release: make(chan struct{}),
	}
	l := New(up, Limits{Concurrency: 4})
	do := func(ctx context.Context) chan error {
		c := make(chan error, 1)
		go func() {
			_, err := l.Do(ctx, backend.Call{Params: json.RawMessage(`{}`)})
			c <- err
		}()
		return c
	}
	first := do(context.Background())
	<-up.started
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	throttled := do(ctx)
	for deadline := time.Now().Add(20 * time.Second); up.n.Load() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second call was never sent")
		}
	}
	third := do(context.Background())
	select {
	case <-up.started:
	case <-time.After(20 * time.Second):
		t.Fatal("a 429 on one call paused the whole backend although another call was in flight")
	}
	close(up.release)
	for _, c := range []chan error{first, third} {
		if err := <-c; err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-throttled; backend.AsError(err).Type != backend.ErrRateLimit {
		t.Fatalf("the throttled call ended with %v; want its 429 once its context ended", err)
	}
}

// clock is a settable time for driving a Limiter without sleeping.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newClocked(l Limits) (*Limiter, *clock) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	lim := New(&fake{}, l)
	lim.now = c.now
	return lim, c
}

func throttle(typ string, ra time.Duration) error {
	return &backend.Error{Type: typ, Status: 429, RetryAfter: ra}
}

// TestWhenRetryAfterPausesTheBackend: the cases where a retry-after holds
// every call, and those where it holds only the call it came with.
func TestWhenRetryAfterPausesTheBackend(t *testing.T) {
	t.Parallel()
	ok := json.RawMessage(`{}`)
	tests := []struct {
		name string
		// run drives the limiter, two calls in flight at the start.
		run   func(l *Limiter, c *clock)
		pause bool
	}{
		{"a 429 while another call is in flight", func(l *Limiter, c *clock) {
			l.release(c.t, 1, 1, nil, throttle(backend.ErrRateLimit, time.Second))
		}, false},
		{"a 529 while another call is in flight", func(l *Limiter, c *clock) {
			l.release(c.t, 1, 1, nil, throttle(backend.ErrOverloaded, time.Second))
		}, true},
		{"a 429 with nothing else in flight nor succeeding", func(l *Limiter, c *clock) {
			l.release(c.t, 1, 1, ok, nil)
			c.advance(5 * time.Second)
			l.release(c.t, 1, 1, nil, throttle(backend.ErrRateLimit, time.Second))
		}, true},
		{"a 429 with nothing else in flight, a success just before", func(l *Limiter, c *clock) {
			l.release(c.t, 1, 1, ok, nil)
			l.release(c.t, 1, 1, nil, throttle(backend.ErrRateLimit, time.Second))
		}, false},
		{"429s with no success between them for a whole retry-after", func(l *Limiter, c *clock) {
			l.release(c.t, 1, 1, nil, throttle(backend.ErrRateLimit, time.Second))
			c.advance(time.Second)
			l.release(c.t, 1, 1, nil, throttle(backend.ErrRateLimit, time.Second))
		}, true},
		{"429s with a success between them", func(l *Limiter, c *clock) {
			l.acquire(context.Background(), 1, 1, nil)
			l.release(c.t, 1, 1, nil, throttle(backend.ErrRateLimit, time.Second))
			c.advance(500 * time.Millisecond)
			l.release(c.t, 1, 1, ok, nil)
			c.advance(500 * time.Millisecond)
			l.release(c.t, 1, 1, nil, throttle(backend.ErrRateLimit, time.Second))
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, c := newClocked(Limits{Concurrency: 4})
			for range 2 {
				if err := l.acquire(context.Background(), 1, 1, nil); err != nil {
					t.Fatal(err)
				}
			}
			tt.run(l, c)
			l.mu.Lock()
			paused := l.paused.After(c.t)
			l.mu.Unlock()
			if paused != tt.pause {
				t.Errorf("backend paused = %v, want %v", paused, tt.pause)
			}
		})
	}
}

// TestProbingAboveTheCapBacksOff drives a limiter against an upstream
// that admits C calls at once, its clock moved by the calls' latency: once
// the limit has found C, stepping above it again (a probe, one throttled
// call each) must become rarer, while the calls in flight stay at C. It
// probed every window (one throttle per C calls) before.
func TestProbingAboveTheCapBacksOff(t *testing.T) {
	t.Parallel()
	const capacity, windows = 32, 400
	const latency = 100 * time.Millisecond
	l, c := newClocked(Limits{Concurrency: 128})
	ctx := context.Background()
	var accepted []time.Time // when each call in flight upstream was sent
	throttles, busy := 0, 0
	for done := 0; done < windows*capacity; done++ {
		for {
			l.mu.Lock()
			free := float64(l.inFlight) < l.limit
			l.mu.Unlock()
			if !free {
				break
			}
			if err := l.acquire(ctx, 1, 1, nil); err != nil {
				t.Fatal(err)
			}
			if len(accepted) < capacity {
				accepted = append(accepted, c.t)
				continue
			}
			throttles++
			l.release(c.t, 1, 1, nil, throttle(backend.ErrRateLimit, 0))
		}
		busy += len(accepted)
		// The oldest call ends; calls end every latency/capacity.
		c.advance(latency / capacity)
		l.release(accepted[0], 1, 1, json.RawMessage(`{}`), nil)
		accepted = accepted[1:]
	}
	t.Logf("%d throttles, %.2f%% busy", throttles, 100*float64(busy)/float64(windows*capacity*capacity))
	// The start at 4× the capacity costs 96 throttles, the rest are probes.
	if probes := throttles - 96; probes > 12 {
		t.Errorf("%d throttles over %d windows at the upstream's capacity: probing too often", throttles, windows)
	}
	if use := float64(busy) / float64(windows*capacity*capacity); use < 0.97 {
		t.Errorf("the upstream was %.1f%% busy, want ≥ 97%%", 100*use)
	}
}
