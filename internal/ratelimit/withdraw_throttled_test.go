package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
)

// throttledThenWithdrawn throttles its first call and withdraws the call
// (closes withdrawn) as it does: the batch was canceled meanwhile.
type throttledThenWithdrawn struct {
	withdrawn chan struct{}
	calls     atomic.Int64
	ra        time.Duration
}

func (b *throttledThenWithdrawn) Name() string { return "throttled" }

func (b *throttledThenWithdrawn) Do(ctx context.Context, _ backend.Call) (json.RawMessage, error) {
	if b.calls.Add(1) == 1 {
		close(b.withdrawn)
	}
	return nil, &backend.Error{Type: backend.ErrRateLimit, Status: 429, Message: "too many", RetryAfter: b.ra}
}

// TestThrottledCallWithdrawnIsNotSentAgain: a call throttled and then
// withdrawn (its batch canceled) is not sent again: it settles with the
// throttle's error, which the dispatcher retries, and so settles as its
// canceled batch's pending requests do.
func TestThrottledCallWithdrawnIsNotSentAgain(t *testing.T) {
	t.Parallel()
	for _, ra := range []time.Duration{0, time.Hour} {
		inner := &throttledThenWithdrawn{withdrawn: make(chan struct{}), ra: ra}
		l := New(inner, Limits{Concurrency: 4})
		l.lastOK = time.Now() // a success just before: the retry-after holds this call alone
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := l.Do(ctx, backend.Call{Params: json.RawMessage(`{}`), Withdrawn: inner.withdrawn})
		waited := ctx.Err() != nil
		cancel()
		if waited {
			t.Errorf("retry-after %s: Do returned only when its context ended, not when the call was withdrawn", ra)
		}
		if be := backend.AsError(err); be.Type != backend.ErrRateLimit || errors.Is(err, backend.ErrWithdrawn) {
			t.Errorf("retry-after %s: Do returned %v, want the throttle's error", ra, err)
		}
		if n := inner.calls.Load(); n != 1 {
			t.Errorf("retry-after %s: sent %d times, want once: it was withdrawn after the first", ra, n)
		}
		if s := l.Stats(); s.InFlight != 0 {
			t.Errorf("retry-after %s: %d in flight after Do returned", ra, s.InFlight)
		}
	}
}
