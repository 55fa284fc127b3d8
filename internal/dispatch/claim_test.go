package dispatch

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/faultstore"
)

// logCounter is a slog.Handler that counts records by message.
type logCounter struct {
	mu   *sync.Mutex
	msgs map[string]int
}

func newLogCounter() *logCounter { return &logCounter{mu: &sync.Mutex{}, msgs: map[string]int{}} }

func (h *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCounter) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logCounter) WithGroup(string) slog.Handler            { return h }
func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs[r.Message]++
	return nil
}

func (h *logCounter) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.msgs[msg]
}

// claimTimes records when each claim was asked for.
type claimTimes struct {
	store.Store
	mu    sync.Mutex
	times []time.Time
}

func (c *claimTimes) RequestsClaim(ctx context.Context, p store.RequestsClaimParams) ([]store.ClaimedRequest, error) {
	c.mu.Lock()
	c.times = append(c.times, time.Now())
	c.mu.Unlock()
	return c.Store.RequestsClaim(ctx, p)
}

func (c *claimTimes) snapshot() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.times...)
}

// TestClaimFailuresBackOff: while claims fail (a full disk), the claim loop
// waits twice as long after each failure, even when slots free up or new
// work is announced, and logs the failure once, not at every try; a claim
// that works again is logged once and ends the backoff. Before, it retried
// every 10 ms (at most PollInterval) and logged every try.
func TestClaimFailuresBackOff(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	fs := faultstore.New(st)
	fs.Fail("RequestsClaim", store.ErrFull)
	rec := &claimTimes{Store: fs}
	logs := newLogCounter()
	gate := newGateBackend()
	d := startDispatcher(t, rec, gate, Config{Concurrency: 1, PollInterval: time.Hour, Lease: time.Hour, Logger: slog.New(logs)})

	const tries = 6 // about 10+20+40+80+160 ms of backoff
	deadline := time.Now().Add(time.Minute)
	for len(rec.snapshot()) < tries {
		if time.Now().After(deadline) {
			t.Fatalf("only %d claims in a minute", len(rec.snapshot()))
		}
		d.Wake() // new work announced during the backoff changes nothing
		time.Sleep(time.Millisecond)
	}
	times := rec.snapshot()
	// Lower bounds only: a slow machine makes the waits longer, never
	// shorter.
	for i := 1; i < len(times); i++ {
		if gap, want := times[i].Sub(times[i-1]), claimBackoffMin<<(i-1); gap < want {
			t.Errorf("claim %d came %v after the one before, want at least %v", i, gap, want)
		}
	}
	const failed = "claim failed"
	if n := logs.count(failed); n != 1 {
		t.Errorf("%d %q records after %d failed claims, want 1", n, failed, len(times))
	}

	fs.Clear("RequestsClaim")
	b := publish(t, st, time.Now(), time.Hour, prompts("after")...)
	d.Wake()
	if p := gate.nextStarted(t); p != "after" {
		t.Fatalf("started %q", p)
	}
	if n := logs.count("claims work again"); n != 1 {
		t.Errorf("%d recovery records, want 1", n)
	}
	if n := logs.count(failed); n != 1 {
		t.Errorf("%d %q records in all, want 1", n, failed)
	}
	gate.release()
	waitBatch(t, st, b, "the batch ends", func(b *store.Batch) bool { return b.Status == store.StatusEnded })
}

// completeTimes records when each write of outcomes alone was asked for.
type completeTimes struct {
	store.Store
	mu    sync.Mutex
	times []time.Time
}

func (c *completeTimes) RequestsComplete(ctx context.Context, p store.RequestsCompleteParams) ([]*store.BatchChange, error) {
	c.mu.Lock()
	c.times = append(c.times, time.Now())
	c.mu.Unlock()
	return c.Store.RequestsComplete(ctx, p)
}

func (c *completeTimes) snapshot() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.times...)
}

// TestCompleteFailuresBackOff: while outcomes cannot be written (a store
// that is down, a full disk the reserve cannot cover), the completer waits
// twice as long after each failure and logs the failure once, not at every
// try; a write that works again is logged once. Before, it logged an error
// at every try for as long as the failure lasted.
func TestCompleteFailuresBackOff(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	fs := faultstore.New(st)
	rec := &completeTimes{Store: fs}
	logs := newLogCounter()
	gate := newGateBackend()
	d := startDispatcher(t, rec, gate, Config{Concurrency: 1, PollInterval: time.Hour, Lease: time.Hour, Logger: slog.New(logs)})
	b := publish(t, st, time.Now(), time.Hour, prompts("one")...)
	d.Wake()
	if p := gate.nextStarted(t); p != "one" {
		t.Fatalf("started %q", p)
	}
	fs.Fail("RequestsCompleteAndClaim", store.ErrFull)
	fs.Fail("RequestsComplete", store.ErrFull)
	gate.release()

	const tries = 6 // about 10+20+40+80+160 ms of backoff
	deadline := time.Now().Add(time.Minute)
	for len(rec.snapshot()) < tries {
		if time.Now().After(deadline) {
			t.Fatalf("only %d writes in a minute", len(rec.snapshot()))
		}
		time.Sleep(time.Millisecond)
	}
	times := rec.snapshot()
	// Lower bounds only: a slow machine makes the waits longer, never
	// shorter.
	for i := 1; i < len(times); i++ {
		if gap, want := times[i].Sub(times[i-1]), completeBackoffMin<<(i-1); gap < want {
			t.Errorf("write %d came %v after the one before, want at least %v", i, gap, want)
		}
	}
	const failed = "complete failed"
	if n := logs.count(failed); n != 1 {
		t.Errorf("%d %q records after %d failed writes, want 1", n, failed, len(times))
	}

	fs.Clear("RequestsComplete")
	fs.Clear("RequestsCompleteAndClaim")
	waitBatch(t, st, b, "the batch ends", func(b *store.Batch) bool { return b.Status == store.StatusEnded })
	// Logged just after the write that ended the batch.
	const recovered = "completions work again"
	for deadline := time.Now().Add(time.Minute); logs.count(recovered) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q record in a minute", recovered)
		}
	}
	if n := logs.count(recovered); n != 1 {
		t.Errorf("%d %q records, want 1", n, recovered)
	}
	if n := logs.count(failed); n != 1 {
		t.Errorf("%d %q records in all, want 1", n, failed)
	}
}

// completerVerbs counts the verbs the completer writes with.
type completerVerbs struct {
	store.Store
	combined, complete atomic.Int64
}

func (c *completerVerbs) RequestsCompleteAndClaim(ctx context.Context, p store.RequestsCompleteParams, q store.RequestsClaimParams) ([]*store.BatchChange, []store.ClaimedRequest, error) {
	c.combined.Add(1)
	return c.Store.RequestsCompleteAndClaim(ctx, p, q)
}

func (c *completerVerbs) RequestsComplete(ctx context.Context, p store.RequestsCompleteParams) ([]*store.BatchChange, error) {
	c.complete.Add(1)
	return c.Store.RequestsComplete(ctx, p)
}

// TestClaimBeside: with Config.ClaimBeside the completer refills its slots
// with a claim of its own beside each write instead of one transaction for
// both, and a batch still settles every request once, the invalid ones
// (settled at once by the refill that claims them) included.
func TestClaimBeside(t *testing.T) {
	t.Parallel()
	for _, beside := range []bool{false, true} {
		t.Run(fmt.Sprintf("beside=%v", beside), func(t *testing.T) {
			t.Parallel()
			st := newStore(t)
			verbs := &completerVerbs{Store: st}
			gate := newGateBackend()
			gate.release()
			const invalid = `{"model":"m","messages":[{"role":"user","content":"no max_tokens"}]}`
			var params []string
			for i := range 200 {
				if i%10 == 0 {
					params = append(params, invalid)
				} else {
					params = append(params, prompts(fmt.Sprint("r", i))...)
				}
			}
			d := startDispatcher(t, verbs, gate, Config{Concurrency: 2, ClaimAhead: 4, PollInterval: time.Hour, ClaimBeside: beside})
			b := publish(t, st, time.Now(), time.Hour, params...)
			d.Wake()
			got := waitBatch(t, st, b, "the batch ends", func(b *store.Batch) bool { return b.Status == store.StatusEnded })
			if want := (store.Counts{Succeeded: 180, Errored: 20}); got.Counts != want {
				t.Errorf("counts %+v, want %+v", got.Counts, want)
			}
			combined, complete := verbs.combined.Load(), verbs.complete.Load()
			if beside && (combined != 0 || complete == 0) {
				t.Errorf("beside: %d combined writes and %d completions, want none and some", combined, complete)
			}
			if !beside && combined == 0 {
				t.Error("not beside: no write refilled in its transaction")
			}
		})
	}
}
