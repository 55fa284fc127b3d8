package delegate_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/delegate"
	"github.com/batchd/batchd/internal/leader"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/faultstore"
	"github.com/batchd/batchd/internal/store/postgres/pgtest"
	"github.com/batchd/batchd/internal/store/sqlite"
)

// fakeUpstream is a Message Batches API whose batches end as soon as they
// are created, every request succeeding; it counts what it was sent.
type fakeUpstream struct {
	mu       sync.Mutex
	batches  map[string][]string // id → custom_ids
	received map[string]int      // custom_id → times sent
	canceled map[string]bool
	n        int
	// hold keeps batches in progress until they are canceled; gone makes
	// every batch answer 404; hangGets is how many GETs of a batch hang
	// until the caller gives up.
	hold, gone bool
	hangGets   int
	// cutResults is how many results lines the next results download
	// sends before its connection breaks (0: none is cut).
	cutResults int
	// stallResults is how many results lines the next results download
	// sends before it stalls, sending nothing more until the client gives
	// up (0: none stalls).
	stallResults int
	downloads    int           // results downloads begun
	created      chan struct{} // one send per batch created
	// block, when set, holds the first create's answer until it is
	// closed, after sending on arrived.
	block, arrived chan struct{}
}

func newFakeUpstream(t *testing.T) (*fakeUpstream, *httptest.Server) {
	f := &fakeUpstream{batches: map[string][]string{}, received: map[string]int{}, canceled: map[string]bool{}, created: make(chan struct{}, 100)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/messages/batches", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Requests []struct {
				CustomID string `json:"custom_id"`
			} `json:"requests"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.n++
		id := fmt.Sprintf("msgbatch_up%d", f.n)
		for _, rq := range body.Requests {
			f.batches[id] = append(f.batches[id], rq.CustomID)
			f.received[rq.CustomID]++
		}
		block := f.block
		f.block = nil
		f.mu.Unlock()
		if block != nil {
			f.arrived <- struct{}{}
			<-block
		}
		fmt.Fprintf(w, `{"id":%q,"type":"message_batch","processing_status":"in_progress"}`, id)
		f.created <- struct{}{}
	})
	mux.HandleFunc("GET /v1/messages/batches/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		_, ok := f.batches[r.PathValue("id")]
		ok = ok && !f.gone
		inProgress := f.hold && !f.canceled[r.PathValue("id")]
		hang := f.hangGets > 0
		if hang {
			f.hangGets--
		}
		f.mu.Unlock()
		if hang {
			<-r.Context().Done()
			return
		}
		if inProgress {
			fmt.Fprintf(w, `{"id":%q,"type":"message_batch","processing_status":"in_progress"}`, r.PathValue("id"))
			return
		}
		if !ok {
			http.Error(w, `{"type":"error","error":{"type":"not_found_error","message":"no"}}`, http.StatusNotFound)
			return
		}
		fmt.Fprintf(w, `{"id":%q,"type":"message_batch","processing_status":"ended"}`, r.PathValue("id"))
	})
	mux.HandleFunc("POST /v1/messages/batches/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.canceled[r.PathValue("id")] = true
		f.mu.Unlock()
		fmt.Fprintf(w, `{"id":%q,"type":"message_batch","processing_status":"canceling"}`, r.PathValue("id"))
	})
	mux.HandleFunc("GET /v1/messages/batches/{id}/results", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		ids := f.batches[r.PathValue("id")]
		canceled := f.canceled[r.PathValue("id")]
		cut := f.cutResults
		f.cutResults = 0
		stall := f.stallResults
		f.stallResults = 0
		f.downloads++
		f.mu.Unlock()
		bw := bufio.NewWriter(w)
		for i, cid := range ids {
			if cut > 0 && i == cut {
				bw.Flush()
				panic(http.ErrAbortHandler)
			}
			if stall > 0 && i == stall {
				bw.Flush()
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				return
			}
			if canceled {
				fmt.Fprintf(bw, `{"custom_id":%q,"result":{"type":"canceled"}}`+"\n", cid)
				continue
			}
			fmt.Fprintf(bw, `{"custom_id":%q,"result":{"type":"succeeded","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}}}`+"\n", cid)
		}
		bw.Flush()
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return f, srv
}

// sentTwice lists the custom_ids the upstream received more than once.
func (f *fakeUpstream) sentTwice() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for id, n := range f.received {
		if n > 1 {
			out = append(out, id)
		}
	}
	return out
}

func (f *fakeUpstream) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.received)
}

// opener opens a fresh store for t, closed when t ends.
type opener func(t *testing.T) store.Store

// eachStore runs fn on SQLite and, when BATCHD_TEST_DATABASE_URL is set,
// on PostgreSQL.
func eachStore(t *testing.T, fn func(t *testing.T, open opener)) {
	t.Parallel()
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		fn(t, func(t *testing.T) store.Store {
			st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "batchd.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		})
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		fn(t, func(t *testing.T) store.Store { return pgtest.NewStore(t) })
	})
}

type harness struct {
	url   string
	fs    *faultstore.Store
	svc   *batch.Service
	d     *delegate.Delegator
	up    *fakeUpstream
	ended chan int64 // seqs of batches the delegator ended
}

func newHarness(t *testing.T, open opener, tweak ...func(*fakeUpstream, *delegate.Config)) *harness {
	t.Helper()
	h := &harness{fs: faultstore.New(open(t)), ended: make(chan int64, 100)}
	var srv *httptest.Server
	h.up, srv = newFakeUpstream(t)
	h.url = srv.URL
	var err error
	h.svc = batch.NewService(h.fs, batch.Config{Route: func(string) string { return "up" },
		OnCanceled: func(seq int64) { h.d.Canceled(seq) }})
	cfg := delegate.Config{
		Name: "up", BaseURL: srv.URL, APIKey: "k", PollInterval: 10 * time.Millisecond, PollMaxInterval: 50 * time.Millisecond,
		ClaimInterval: 20 * time.Millisecond, Lease: 3 * time.Second, Owner: "test-owner",
		OnChange: func(ch *store.BatchChange) {
			if ch.Ended {
				h.ended <- ch.Batch.Seq
			}
		},
	}
	for _, f := range tweak {
		f(h.up, &cfg)
	}
	h.d, err = delegate.New(h.fs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// startDelegator starts another delegator on the harness's store and
// upstream, as another backend or process would run one: backend, owner,
// lease and leader from the arguments, the rest as the harness's own.
func (h *harness) startDelegator(t *testing.T, backend, owner string, lease time.Duration, el *leader.Elector) *delegate.Delegator {
	t.Helper()
	d, err := delegate.New(h.fs, delegate.Config{
		Name: backend, BaseURL: h.url, APIKey: "k", PollInterval: 10 * time.Millisecond, PollMaxInterval: 50 * time.Millisecond,
		ClaimInterval: 20 * time.Millisecond, Lease: lease, Owner: owner, Leader: el,
		OnChange: func(ch *store.BatchChange) {
			if ch.Ended {
				h.ended <- ch.Batch.Seq
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return d
}

func (h *harness) start(t *testing.T) {
	t.Helper()
	if err := h.d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.d.Stop(context.Background()) })
}

func (h *harness) create(t *testing.T, n int) *store.Batch {
	t.Helper()
	var b strings.Builder
	b.WriteString(`{"requests":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"custom_id":"c%d","params":{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}}`, i)
	}
	b.WriteString(`]}`)
	bt, err := h.svc.Create(context.Background(), "w", nil, strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	h.d.Wake()
	return bt
}

// waitEnded waits (generously) for the delegator to end batch b, then
// checks one succeeded result per request and that the upstream was sent
// each request once.
func (h *harness) waitEnded(t *testing.T, b *store.Batch, n int) {
	t.Helper()
	got := h.waitEnd(t, b)
	if got.Counts.Succeeded != int64(n) {
		t.Fatalf("counts %+v, want %d succeeded", got.Counts, n)
	}
	res, err := h.fs.Store.ResultsList(context.Background(), store.ResultsListParams{BatchSeq: b.Seq, Limit: 10 * n})
	if err != nil || len(res) != n {
		t.Fatalf("%d results, want %d: %v", len(res), n, err)
	}
	if twice := h.up.sentTwice(); len(twice) > 0 {
		t.Fatalf("the upstream was sent %v more than once", twice)
	}
}

// waitEnd waits (generously) for the delegator to end batch b.
func (h *harness) waitEnd(t *testing.T, b *store.Batch) *store.Batch {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case seq := <-h.ended:
			if seq != b.Seq {
				continue
			}
		case <-timeout:
			got, _ := h.fs.Store.BatchGet(context.Background(), store.BatchGetParams{Workspace: "w", ID: b.ID})
			t.Fatalf("batch did not end: %+v; upstream holds %d requests", got, h.up.total())
		}
		break
	}
	got, err := h.fs.Store.BatchGet(context.Background(), store.BatchGetParams{Workspace: "w", ID: b.ID})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestDelegatesThroughFaults: every request is delegated once and gets one
// result, on the plain path and through the faults below.
func TestDelegatesThroughFaults(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*fakeUpstream, *delegate.Config)
		// verb fails its first times calls.
		verb  string
		times int
	}{
		{name: "plain"},
		// A failed record of an upstream batch's intent gives its
		// requests back: they are claimed again and delegated, instead of
		// staying leased (and renewed by the heartbeat) by a delegator
		// that forgot them.
		{name: "insert fails", verb: "UpstreamBatchInsert", times: 1},
		// An upstream batch whose id could not be recorded at once is
		// polled all the same: its results are written while the process
		// lives, instead of its requests hanging until a restart sends
		// them again.
		{name: "start record fails", verb: "UpstreamBatchStart", times: 5},
		// A poll that gets no answer is given up after Config.Timeout, as
		// every upstream call is, and polled again: it does not hold the
		// upstream batch's results back for ever.
		{name: "poll hangs", setup: func(f *fakeUpstream, c *delegate.Config) { f.hangGets = 1; c.Timeout = 200 * time.Millisecond }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eachStore(t, func(t *testing.T, open opener) {
				var opts []func(*fakeUpstream, *delegate.Config)
				if tt.setup != nil {
					opts = append(opts, tt.setup)
				}
				h := newHarness(t, open, opts...)
				if tt.verb != "" {
					h.fs.FailAfter(tt.verb, 0, tt.times, nil)
				}
				h.start(t)
				b := h.create(t, 5)
				h.waitEnded(t, b, 5)
			})
		})
	}
}

// A cancel of our batch is forwarded to its running upstream batch, whose
// canceled results end ours.
func TestCancelForwarded(t *testing.T) {
	eachStore(t, func(t *testing.T, open opener) {
		h := newHarness(t, open, func(f *fakeUpstream, _ *delegate.Config) { f.hold = true })
		h.start(t)
		b := h.create(t, 4)
		<-h.up.created
		if _, err := h.svc.Cancel(context.Background(), "w", b.ID); err != nil {
			t.Fatal(err)
		}
		got := h.waitEnd(t, b)
		h.up.mu.Lock()
		defer h.up.mu.Unlock()
		if got.Counts.Canceled != 4 || len(h.up.canceled) != 1 {
			t.Fatalf("counts %+v, upstream cancels %v", got.Counts, h.up.canceled)
		}
	})
}

// An upstream batch gone upstream (404) settles its requests errored, even
// when the store fails the first time they are listed.
func TestGoneUpstreamSettlesAfterStoreFault(t *testing.T) {
	eachStore(t, func(t *testing.T, open opener) {
		h := newHarness(t, open, func(f *fakeUpstream, _ *delegate.Config) { f.gone = true })
		h.fs.FailAfter("UpstreamBatchRequests", 0, 1, nil)
		h.start(t)
		b := h.create(t, 3)
		if got := h.waitEnd(t, b); got.Counts.Errored != 3 {
			t.Fatalf("counts %+v, want 3 errored", got.Counts)
		}
	})
}

// A delegator that stops while its upstream batch runs leaves it to the
// next one (another process), which adopts it and writes its results: each
// request sent upstream once, one result each.
func TestAdoptedAfterStop(t *testing.T) {
	eachStore(t, func(t *testing.T, open opener) {
		h := newHarness(t, open, func(f *fakeUpstream, _ *delegate.Config) { f.hold = true })
		h.start(t)
		b := h.create(t, 6)
		<-h.up.created
		// Wait until the upstream id is recorded, then stop.
		for deadline := time.Now().Add(30 * time.Second); ; {
			ubs, err := h.fs.Store.UpstreamBatchesList(context.Background(), "up")
			if err != nil {
				t.Fatal(err)
			}
			if len(ubs) == 1 && ubs[0].UpstreamID != "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("upstream id not recorded: %+v", ubs)
			}
			time.Sleep(5 * time.Millisecond)
		}
		h.d.Stop(context.Background())
		h.up.mu.Lock()
		h.up.hold = false
		h.up.mu.Unlock()

		d2, err := delegate.New(h.fs, delegate.Config{
			Name: "up", BaseURL: h.url, APIKey: "k", PollInterval: 10 * time.Millisecond, PollMaxInterval: 50 * time.Millisecond,
			ClaimInterval: 20 * time.Millisecond, Lease: 3 * time.Second, Owner: "second-owner",
			OnChange: func(ch *store.BatchChange) {
				if ch.Ended {
					h.ended <- ch.Batch.Seq
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := d2.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer d2.Stop(context.Background())
		h.waitEnded(t, b, 6)
	})
}

// A graceful stop lets a create on its way finish, and goes on renewing
// the lease of its upstream batch meanwhile: the leader (another process)
// does not take the batch over as never created and send its requests
// upstream a second time.
func TestStopKeepsLeaseOfCreateInFlight(t *testing.T) {
	eachStore(t, func(t *testing.T, open opener) {
		const lease = 300 * time.Millisecond
		release := make(chan struct{})
		h := newHarness(t, open, func(f *fakeUpstream, c *delegate.Config) {
			f.hold, f.block, f.arrived = true, release, make(chan struct{}, 1)
			c.Lease = lease
		})
		var once sync.Once
		unblock := func() { once.Do(func() { close(release) }) }
		t.Cleanup(unblock) // before the upstream closes, which waits for its handlers
		mk := func(owner string) *delegate.Delegator {
			return h.startDelegator(t, "up", owner, lease, leader.New(h.fs, leader.Config{Owner: owner, Lease: lease}))
		}
		a := mk("process-a")
		h.d = a
		b := h.create(t, 6)
		<-h.up.arrived // a's create is on its way
		stopped := make(chan struct{})
		go func() { a.Stop(context.Background()); close(stopped) }()
		other := mk("process-b") // the next leader, once a's leadership lapses
		defer other.Stop(context.Background())
		// Long past a's leases, unless they are renewed: the other process has
		// had every chance to take the batch over and send it again.
		select {
		case <-h.up.created: // the blocked create's own signal comes after release
			t.Fatal("a second upstream batch was created while the first create was on its way")
		case <-time.After(20 * lease):
		}
		unblock()
		<-stopped
		h.up.mu.Lock()
		h.up.hold = false
		h.up.mu.Unlock()
		h.waitEnded(t, b, 6)
	})
}

// Two anthropic-batch backends run in one process under one owner. The
// first to stop must not hand the other's upstream batches to the leader
// (another process) while the other still creates one: the leader would
// take it over as never created and send its requests upstream again.
func TestStopLeavesOtherBackendsLeases(t *testing.T) {
	eachStore(t, func(t *testing.T, open opener) {
		release := make(chan struct{})
		h := newHarness(t, open, func(f *fakeUpstream, _ *delegate.Config) {
			f.hold, f.block, f.arrived = true, release, make(chan struct{}, 1)
		})
		var once sync.Once
		unblock := func() { once.Do(func() { close(release) }) }
		t.Cleanup(unblock)
		// This process leads chores of another name, so that the other
		// process is the leader that adopts.
		mine := leader.New(h.fs, leader.Config{Name: "not-the-chores", Owner: "process-a"})
		// Long leases here, so that only a stop's release of them lets the
		// other process adopt while the test watches.
		y := h.startDelegator(t, "up", "process-a", time.Minute, mine)
		x := h.startDelegator(t, "other-backend", "process-a", time.Minute, mine)
		h.d = y
		b := h.create(t, 4)
		<-h.up.arrived // y's create is on its way
		z := h.startDelegator(t, "up", "process-b", 300*time.Millisecond, leader.New(h.fs, leader.Config{Owner: "process-b", Lease: 300 * time.Millisecond}))
		defer z.Stop(context.Background())
		x.Stop(context.Background())
		select {
		case <-h.up.created: // the blocked create's own signal comes after release
			t.Fatal("a second upstream batch was created while the first create was on its way")
		case <-time.After(3 * time.Second):
		}
		unblock()
		y.Stop(context.Background())
		h.up.mu.Lock()
		h.up.hold = false
		h.up.mu.Unlock()
		h.waitEnded(t, b, 4)
	})
}

// A results download cut midway is read again: what was written stays
// written, the rest follows, each request with one result.
func TestResultsCutMidway(t *testing.T) {
	eachStore(t, func(t *testing.T, open opener) {
		h := newHarness(t, open, func(f *fakeUpstream, _ *delegate.Config) { f.cutResults = 700 })
		h.start(t)
		b := h.create(t, 1200)
		h.waitEnded(t, b, 1200)
		h.up.mu.Lock()
		defer h.up.mu.Unlock()
		if h.up.downloads < 2 {
			t.Fatalf("%d results downloads: the cut did not happen", h.up.downloads)
		}
	})
}

// TestResultsStallMidway: a results download that stalls mid-stream is
// given up once it has waited Config.Timeout for bytes, and read again: the
// batch ends, one result each. Before, the download had no deadline but
// the caller's, and a stalled upstream held the batch for the life of the
// process.
func TestResultsStallMidway(t *testing.T) {
	eachStore(t, func(t *testing.T, open opener) {
		h := newHarness(t, open, func(f *fakeUpstream, c *delegate.Config) { f.stallResults = 3; c.Timeout = 300 * time.Millisecond })
		h.start(t)
		b := h.create(t, 10)
		h.waitEnded(t, b, 10)
		h.up.mu.Lock()
		defer h.up.mu.Unlock()
		if h.up.downloads < 2 {
			t.Fatalf("%d results downloads: the stall did not happen", h.up.downloads)
		}
	})
}
