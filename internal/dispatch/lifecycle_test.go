package dispatch

// Tests of the dispatcher against a real SQLite store: what happens to
// requests claimed ahead of a free worker when their batch is canceled or
// expires, and what a stop does to claims in progress.

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/sqlite"
)

// gateBackend is a backend whose calls block until the test opens the gate:
// it says when each call starts, so a test knows what is in flight.
type gateBackend struct {
	started chan string   // the prompt of each call, as it starts
	open    chan struct{} // closed: every call, blocked or later, answers
	once    sync.Once
	calls   atomic.Int64
}

// release opens the gate, once.
func (g *gateBackend) release() { g.once.Do(func() { close(g.open) }) }

func newGateBackend() *gateBackend {
	return &gateBackend{started: make(chan string, 1024), open: make(chan struct{})}
}

func (g *gateBackend) Name() string { return "gate" }

func (g *gateBackend) Do(ctx context.Context, call backend.Call) (json.RawMessage, error) {
	g.calls.Add(1)
	var p struct {
		Messages []struct {
			Content string `json:"content"`
		} `json:"messages"`
	}
	json.Unmarshal(call.Params, &p)
	if len(p.Messages) > 0 {
		g.started <- p.Messages[0].Content
	}
	select {
	case <-g.open:
		return json.RawMessage(`{"id":"msg_gate","type":"message"}`), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// nextStarted waits for the next call to start and returns its prompt.
func (g *gateBackend) nextStarted(t *testing.T) string {
	t.Helper()
	select {
	case p := <-g.started:
		return p
	case <-time.After(20 * time.Second):
		t.Fatal("no call reached the backend")
		return ""
	}
}

// fakeClock is an injectable clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newStore(t *testing.T) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "batchd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

var batchSeq atomic.Int64

// publish creates a batch of the given params (JSON objects) on the gate
// backend, created at now and expiring after ttl.
func publish(t *testing.T, st store.Store, now time.Time, ttl time.Duration, params ...string) *store.Batch {
	t.Helper()
	ctx := context.Background()
	b, err := st.BatchInsert(ctx, store.BatchInsertParams{
		ID: fmt.Sprintf("msgbatch_%d", batchSeq.Add(1)), Workspace: "ws", CreatedAt: now, ExpiresAt: now.Add(ttl),
		UploadUntil: now.Add(time.Minute), // the sweeper discards lapsed uploads
	})
	if err != nil {
		t.Fatal(err)
	}
	reqs := make([]store.NewRequest, len(params))
	for i, p := range params {
		reqs[i] = store.NewRequest{CustomID: fmt.Sprint("r", i), Params: json.RawMessage(p), Model: "m", Backend: "gate"}
	}
	if err := st.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: b.Seq, Requests: reqs}); err != nil {
		t.Fatal(err)
	}
	b, err = st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: b.Seq, Total: int64(len(params))})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// prompts are valid params, one per prompt.
func prompts(names ...string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = fmt.Sprintf(`{"model":"m","max_tokens":8,"messages":[{"role":"user","content":%q}]}`, n)
	}
	return out
}

func getBatch(t *testing.T, st store.Store, b *store.Batch) *store.Batch {
	t.Helper()
	got, err := st.BatchGet(context.Background(), store.BatchGetParams{Workspace: b.Workspace, ID: b.ID})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// waitBatch waits (generously: CI machines are slow) until cond holds for
// the stored batch, and returns it.
func waitBatch(t *testing.T, st store.Store, b *store.Batch, what string, cond func(*store.Batch) bool) *store.Batch {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := getBatch(t, st, b)
		if cond(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: batch %s is still %s with %+v", what, b.ID, got.Status, got.Counts)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startDispatcher starts a dispatcher over st with the gate backend, and
// stops it when the test ends.
func startDispatcher(t *testing.T, st store.Store, gate *gateBackend, cfg Config) *Dispatcher {
	t.Helper()
	d := New(st, backend.NewRouter(backend.Route{Pattern: "*", Backend: gate}), cfg)
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		gate.release()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Stop(ctx)
	})
	return d
}

// TestUnsentSettleAtOnce: requests claimed ahead of a free worker settle as
// canceled or expired as soon as their batch is canceled or expires, without
// waiting for a worker, and a batch with nothing of it in flight ends at
// once; requests in flight finish. Before, they waited for a worker to pick
// them up (14 s with two workers and long requests).
func TestUnsentSettleAtOnce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		expire bool // expire the batch rather than cancel it
		// inFlight: the canceled batch has a request in flight itself;
		// otherwise another batch holds the only worker.
		inFlight bool
	}{
		{"cancel queued batch", false, false},
		{"cancel batch in flight", false, true},
		{"expire queued batch", true, false},
		{"expire batch in flight", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := newStore(t)
			gate := newGateBackend()
			clock := &fakeClock{now: time.Now()}
			// One worker, claiming far ahead; the short poll only makes the
			// sweeper look at the (fake) clock often, and the lease outlasts
			// the clock's jump past the expiry.
			d := startDispatcher(t, st, gate, Config{Concurrency: 1, ClaimAhead: 16, PollInterval: 5 * time.Millisecond, Lease: 48 * time.Hour, Now: clock.Now})
			now := clock.Now()
			var blocker, target *store.Batch
			if tt.inFlight {
				target = publish(t, st, now, time.Hour, prompts("t0", "t1", "t2", "t3")...)
			} else {
				blocker = publish(t, st, now, 24*time.Hour, prompts("b0")...)
				d.Wake()
				if got := gate.nextStarted(t); got != "b0" {
					t.Fatalf("first call %q, want b0", got)
				}
				target = publish(t, st, now, time.Hour, prompts("t0", "t1", "t2", "t3")...)
			}
			d.Wake()
			// Every request is claimed (the worker's one in flight, the
			// rest queued behind it) before the batch is canceled.
			if tt.inFlight {
				if got := gate.nextStarted(t); got != "t0" {
					t.Fatalf("first call %q, want t0", got)
				}
			}
			if tt.inFlight {
				waitQueued(t, d, 3)
			} else {
				waitQueued(t, d, 4)
			}
			want := store.Counts{Canceled: 4}
			if tt.expire {
				clock.Add(2 * time.Hour)
				want = store.Counts{Expired: 4}
			} else {
				if _, err := st.BatchCancel(context.Background(), store.BatchCancelParams{Workspace: target.Workspace, ID: target.ID, Now: clock.Now()}); err != nil {
					t.Fatal(err)
				}
				d.Canceled(target.Seq)
			}
			if tt.inFlight {
				// t0 is still in flight: t1..t3 settle now, and the batch
				// ends when t0 does.
				want.Processing, want.Canceled, want.Expired = 1, want.Canceled/4*3, want.Expired/4*3
				waitBatch(t, st, target, "unsent requests settle while one is in flight", func(b *store.Batch) bool { return b.Counts == want })
				gate.release()
				want.Processing, want.Succeeded = 0, 1
				got := waitBatch(t, st, target, "the batch ends with its last request", func(b *store.Batch) bool { return b.Status == store.StatusEnded })
				if got.Counts != want {
					t.Errorf("counts %+v, want %+v", got.Counts, want)
				}
			} else {
				// Nothing of the batch is in flight: it ends while the
				// other batch's request still holds the only worker.
				got := waitBatch(t, st, target, "the batch ends at once", func(b *store.Batch) bool { return b.Status == store.StatusEnded })
				if got.Counts != want {
					t.Errorf("counts %+v, want %+v", got.Counts, want)
				}
				if b := getBatch(t, st, blocker); b.Status != store.StatusInProgress || b.Counts.Processing != 1 {
					t.Errorf("the blocking batch is %s %+v, want its request still in flight", b.Status, b.Counts)
				}
				gate.release()
				waitBatch(t, st, blocker, "the blocking batch ends", func(b *store.Batch) bool { return b.Status == store.StatusEnded })
			}
			if n := gate.calls.Load(); n != 1 {
				t.Errorf("%d calls reached the backend, want 1: a request was sent after its batch was canceled or expired", n)
			}
		})
	}
}

// stopInBackground stops d (giving it 20 s) in a goroutine of its own;
// the channel closes once Stop has returned.
func stopInBackground(d *Dispatcher) <-chan struct{} {
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		d.Stop(ctx)
	}()
	return stopped
}

// waitQueued waits until n requests wait in the gate lane's queue for its
// worker.
func waitQueued(t *testing.T, d *Dispatcher, n int) {
	t.Helper()
	q := d.byName["gate"].queue
	deadline := time.Now().Add(20 * time.Second)
	for {
		q.mu.Lock()
		queued := 0
		for _, jobs := range q.batches {
			queued += len(jobs)
		}
		q.mu.Unlock()
		if queued >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued, want %d", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// holdingStore is a store whose first RequestsCompleteAndClaim waits, before
// it runs, until the test lets it go: it holds the dispatcher's completer in
// the middle of refilling its slots.
type holdingStore struct {
	store.Store
	once    sync.Once
	entered chan struct{} // closed when the held call starts
	proceed chan struct{} // closed by the test to let it run
}

func (h *holdingStore) RequestsCompleteAndClaim(ctx context.Context, c store.RequestsCompleteParams, p store.RequestsClaimParams) ([]*store.BatchChange, []store.ClaimedRequest, error) {
	first := false
	h.once.Do(func() { first = true })
	if first {
		close(h.entered)
		<-h.proceed
	}
	return h.Store.RequestsCompleteAndClaim(ctx, c, p)
}

// TestStopWhileRefilling: a stop that begins while the completer is
// refilling its slots in the same transaction as it writes outcomes ends
// cleanly. What that claim returns is settled at once if its params are
// invalid, or left leased for the next start, never stranded in memory;
// before, the completer sent the invalid requests' outcomes on the closed
// outcomes channel and the process panicked.
func TestStopWhileRefilling(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	hold := &holdingStore{Store: st, entered: make(chan struct{}), proceed: make(chan struct{})}
	gate := newGateBackend()
	gate.release()
	now := time.Now()
	// a's request is claimed first; its outcome starts the held refill,
	// which claims b's, published meanwhile. Nothing else is running then.
	const invalid = `{"model":"m","messages":[{"role":"user","content":"no max_tokens"}]}`
	a := publish(t, st, now, time.Hour, prompts("a0")...)
	d := New(hold, backend.NewRouter(backend.Route{Pattern: "*", Backend: gate}), Config{Concurrency: 1, ClaimAhead: 1, PollInterval: time.Hour})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-hold.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("the completer never refilled")
	}
	var bParams []string
	for i := range 10 {
		if i%2 == 0 {
			bParams = append(bParams, invalid)
		} else {
			bParams = append(bParams, prompts(fmt.Sprint("b", i))...)
		}
	}
	b := publish(t, st, now, time.Hour, bParams...)
	stopped := stopInBackground(d)
	// Let the stop get as far as it goes while the refill is held: up to
	// closing the outcomes channel (nothing else sends on it now, so a
	// receive sees only that), or for a while if it rightly waits.
	deadline := time.Now().Add(300 * time.Millisecond)
	for closed := false; !closed && time.Now().Before(deadline); {
		select {
		case _, ok := <-d.outcomes:
			closed = !ok
		default:
			time.Sleep(time.Millisecond)
		}
	}
	close(hold.proceed)
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("Stop did not return")
	}
	d.mu.Lock()
	for _, l := range d.lanes {
		if l.held != 0 {
			t.Errorf("lane %q still holds %d requests after Stop", l.name, l.held)
		}
	}
	d.mu.Unlock()

	// A new dispatcher on the same store finishes both batches: nothing
	// the stopped one claimed is lost.
	d2 := startDispatcher(t, st, gate, Config{Concurrency: 4, PollInterval: 5 * time.Millisecond})
	d2.Wake()
	for _, bt := range []*store.Batch{a, b} {
		got := waitBatch(t, st, bt, "the batch ends after a restart", func(b *store.Batch) bool { return b.Status == store.StatusEnded })
		want := store.Counts{Succeeded: 1}
		if bt == b {
			want = store.Counts{Succeeded: 5, Errored: 5}
		}
		if got.Counts != want {
			t.Errorf("batch %s: counts %+v, want %+v", bt.ID, got.Counts, want)
		}
	}
}

// countingStore counts the sweeper's expiry passes.
type countingStore struct {
	store.Store
	expires atomic.Int64
}

func (c *countingStore) BatchesExpire(ctx context.Context, p store.BatchesExpireParams) ([]*store.BatchChange, error) {
	c.expires.Add(1)
	return c.Store.BatchesExpire(ctx, p)
}

// TestSweeperRestsWhileExpiredBatchRuns: an expired batch whose last
// request is still in flight (for up to the request timeout) does not make
// the sweeper run again and again; before, the batch's past expiry was
// always the next one due, and the sweeper ran every millisecond, each run
// a handful of write transactions.
func TestSweeperRestsWhileExpiredBatchRuns(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	cs := &countingStore{Store: st}
	gate := newGateBackend()
	// Long enough for t0 to be sent on a slow machine.
	b := publish(t, st, time.Now(), 2*time.Second, prompts("t0", "t1")...)
	d := startDispatcher(t, cs, gate, Config{Concurrency: 1, PollInterval: time.Hour, Lease: time.Hour})
	d.Wake()
	gate.nextStarted(t)
	waitBatch(t, st, b, "t1 expires", func(b *store.Batch) bool { return b.Counts.Expired == 1 })
	before := cs.expires.Load()
	// The scenario is a span of time: the sweeper has nothing to do in it.
	time.Sleep(300 * time.Millisecond)
	if n := cs.expires.Load() - before; n > 2 {
		t.Errorf("the sweeper ran %d times in 300ms with nothing to expire, want at most 2", n)
	}
	gate.release()
	got := waitBatch(t, st, b, "the batch ends", func(b *store.Batch) bool { return b.Status == store.StatusEnded })
	if want := (store.Counts{Succeeded: 1, Expired: 1}); got.Counts != want {
		t.Errorf("counts %+v, want %+v", got.Counts, want)
	}
}
