package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/config"
	"github.com/batchd/batchd/internal/server"
	"github.com/batchd/batchd/internal/store"
)

// idlePoll is the polling interval of the cluster tests' idle processes:
// far longer than any test waits, so that only a notification can wake
// them in time.
const idlePoll = 10 * time.Minute

// slowUpstream is a Chat Completions server that takes hold to answer
// each request and records when each arrived.
type slowUpstream struct {
	hold time.Duration
	mu   sync.Mutex
	sent []time.Time
}

func (u *slowUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.sent = append(u.sent, time.Now())
	u.mu.Unlock()
	var req struct {
		Model string `json:"model"`
	}
	json.NewDecoder(r.Body).Decode(&req)
	select {
	case <-time.After(u.hold):
	case <-r.Context().Done():
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":"cmpl-1","object":"chat.completion","model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"slow"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":3}}`, req.Model)
}

// startSlowUpstream serves a slowUpstream holding each answer for hold,
// until the test ends.
func startSlowUpstream(t *testing.T, hold time.Duration) (*slowUpstream, string) {
	up := &slowUpstream{hold: hold}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	return up, srv.URL
}

// sentAfter counts the requests that arrived after t, and all of them.
func (u *slowUpstream) sentAfter(t time.Time) (after, all int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, s := range u.sent {
		if s.After(t) {
			after++
		}
	}
	return after, len(u.sent)
}

// TestClusterCancelStopsOtherProcess: B runs a batch of slow requests, two
// at a time, holding the rest claimed ahead; the batch is canceled through
// A. B sends nothing of it from 1 s after the cancel on, and the batch ends
// canceled once the two in flight answer. Before, B heard of cancels only
// from its own API and sent every claimed request.
func TestClusterCancelStopsOtherProcess(t *testing.T) {
	t.Parallel()
	url := clusterURL(t)
	up, upURL := startSlowUpstream(t, 1500*time.Millisecond)
	b := clusterServer(t, url, func(c *server.Config) {
		c.Backends = &config.Config{
			Backends: []config.Backend{{Name: "up", Kind: config.KindOpenAI, BaseURL: upURL + "/v1", Concurrency: 2}},
			Routes:   []config.Route{{Model: "*", Backend: "up"}},
		}
	})
	a := newTestServer(t, withoutDispatcher(), withConfig(func(c *server.Config) { c.DatabaseURL, c.Webhooks.Key = url, clusterKey }))

	const n = 30
	bt := sdkBatch(t, b.Client, requests(n, "r")...)
	ctx := context.Background()
	waitFor(t, 30*time.Second, "B to send two and claim the rest", func() bool {
		_, sent := up.sentAfter(time.Time{})
		due, err := b.Srv.Store.RequestNextDue(ctx, "up")
		return sent >= 2 && err == nil && due.IsZero()
	})
	if _, err := a.Client.Messages.Batches.Cancel(ctx, bt.ID, anthropic.MessageBatchCancelParams{}); err != nil {
		t.Fatal(err)
	}
	canceled := time.Now()
	got := waitEnded(t, a.Client, bt.ID, 60*time.Second)
	after, sent := up.sentAfter(canceled.Add(time.Second))
	if after > 0 {
		t.Fatalf("B sent %d requests of the batch more than 1s after it was canceled through A (%d in all)", after, sent)
	}
	t.Logf("%d of %d sent, none from 1s after the cancel; ended %v after it", sent, n, time.Since(canceled).Round(time.Millisecond))
	if c := got.RequestCounts; c.Canceled == 0 || c.Canceled+c.Succeeded != n || c.Succeeded != int64(sent) {
		t.Fatalf("counts %+v after %d sent", c, sent)
	}
}

// TestClusterIdleProcessWokenByCreate: a batch created through A, which
// runs nothing, is run by an idle B at once, not at B's next poll.
func TestClusterIdleProcessWokenByCreate(t *testing.T) {
	t.Parallel()
	url := clusterURL(t)
	b := clusterServer(t, url, func(c *server.Config) { c.Dispatch.PollInterval = idlePoll })
	a := newTestServer(t, withoutDispatcher(), withConfig(func(c *server.Config) { c.DatabaseURL, c.Webhooks.Key = url, clusterKey }))
	_ = b
	bt := sdkBatch(t, a.Client, requests(3, "r")...)
	waitEnded(t, a.Client, bt.ID, 30*time.Second)
}

// TestClusterStreamSeesOtherProcess: an event stream on B carries an
// event written through A at once, not at B's next poll of the store.
func TestClusterStreamSeesOtherProcess(t *testing.T) {
	t.Parallel()
	url := clusterURL(t)
	// Nothing but a notification wakes B: neither its stream's poll nor
	// its dispatcher, which would run the batch and wake its streams.
	b := clusterServer(t, url, func(c *server.Config) {
		c.StreamPollInterval, c.Dispatch.PollInterval = idlePoll, idlePoll
	})
	a := newTestServer(t, withoutDispatcher(), withConfig(func(c *server.Config) { c.DatabaseURL, c.Webhooks.Key = url, clusterKey }))
	events, res := openStream(t, b.URL+"/v1/events")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("stream: %s", res.Status)
	}
	until := func(what, event, id string) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case e, ok := <-events:
				if !ok {
					t.Fatal("the stream ended")
				}
				if e.event == event && strings.Contains(e.data, id) {
					return
				}
			case <-timeout:
				t.Fatalf("B's stream did not carry %s", what)
			}
		}
	}
	// A batch of B's own first, to its end: B's streams are woken by B's
	// commits (its creation, then its end a while later, so that no wake-up
	// of B's is left over), and then wait, having read everything.
	own := sdkBatch(t, b.Client, sdkRequest("b", "[[sim latency=300ms]]", 16))
	until("its own batch's end", "message_batch.ended", own.ID)
	bt := sdkBatch(t, a.Client, requests(1, "a")...)
	until("the batch A created", "message_batch.created", bt.ID)
}

// TestClusterListenerReconnects: B's listening connection is killed; B
// listens again and is woken by A's next batch as before.
func TestClusterListenerReconnects(t *testing.T) {
	t.Parallel()
	url := clusterURL(t)
	b := clusterServer(t, url, func(c *server.Config) { c.Dispatch.PollInterval = idlePoll })
	a := newTestServer(t, withoutDispatcher(), withConfig(func(c *server.Config) { c.DatabaseURL, c.Webhooks.Key = url, clusterKey }))
	_ = b
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	// The listener's connection is the one whose last statement LISTENs
	// on this schema's channel.
	listener := func() (pid int) {
		conn.QueryRow(ctx, `SELECT coalesce(max(pid), 0) FROM pg_stat_activity
			WHERE query = 'LISTEN "batchd_' || current_schema() || '"'`).Scan(&pid)
		return pid
	}
	var first int
	waitFor(t, 30*time.Second, "B to listen", func() bool { first = listener(); return first != 0 })
	var killed bool
	if err := conn.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, first).Scan(&killed); err != nil || !killed {
		t.Fatalf("terminate the listener: %v %v", killed, err)
	}
	waitFor(t, 30*time.Second, "B to listen again", func() bool { pid := listener(); return pid != 0 && pid != first })

	bt := sdkBatch(t, a.Client, requests(3, "r")...)
	waitEnded(t, a.Client, bt.ID, 30*time.Second)
}

// TestClusterCancelForwardedByHolder: B delegates a batch to an upstream
// Message Batches API and polls its upstream batch; the batch is canceled
// through A, and B forwards the cancel upstream at once. B's lease is long,
// so its look for canceled batches (every third of it) comes too late:
// only the notification does it in time. Before, the cancel reached only
// the delegators of the process it was made through.
func TestClusterCancelForwardedByHolder(t *testing.T) {
	t.Parallel()
	url := clusterURL(t)
	up := newTestServer(t, withConfig(func(c *server.Config) { c.Dispatch.Concurrency = 1 }))
	b := clusterServer(t, url, func(c *server.Config) {
		delegating(up.URL, 100)(c)
		c.Lease, c.Dispatch.Lease = time.Minute, time.Minute
	})
	a := newTestServer(t, withoutDispatcher(), withConfig(func(c *server.Config) { c.DatabaseURL, c.Webhooks.Key = url, clusterKey }))
	bt := createRaw(t, b.URL, createBody(t, nRequests("c", 5, "[[sim latency=1s]] slow")...))
	var ups []wireBatch
	waitFor(t, 20*time.Second, "the upstream batch", func() bool {
		ups = upstreamBatches(t, up.URL)
		return len(ups) == 1
	})
	if r := do(t, "POST", a.URL+"/v1/messages/batches/"+bt.ID+"/cancel", nil); r.Status != 200 {
		t.Fatalf("cancel through A: %d %s", r.Status, r.Body)
	}
	waitFor(t, 10*time.Second, "B to forward the cancel upstream", func() bool {
		return getRaw(t, up.URL, ups[0].ID).CancelInitiatedAt != nil
	})
	got := waitEndedRaw(t, a.URL, bt.ID, 30*time.Second)
	if got.RequestCounts.Canceled < 3 {
		t.Fatalf("counts %+v, want at least the 3 queued upstream requests canceled", got.RequestCounts)
	}
}

// TestDelegateFindsCancelWithoutWakeUp: a batch is canceled in the store
// with no wake-up reaching the delegator (as when the notification of a
// cancel made through another process is lost); the delegator's own look
// for canceled batches, every third of its lease, forwards it upstream.
func TestDelegateFindsCancelWithoutWakeUp(t *testing.T) {
	t.Parallel()
	up := newTestServer(t, withConfig(func(c *server.Config) { c.Dispatch.Concurrency = 1 }))
	ts := newTestServer(t, withConfig(delegating(up.URL, 100)), withConfig(func(c *server.Config) { c.Lease = time.Second }))
	bt := createRaw(t, ts.URL, createBody(t, nRequests("c", 5, "[[sim latency=3s]] slow")...))
	var ups []wireBatch
	waitFor(t, 20*time.Second, "the upstream batch", func() bool {
		ups = upstreamBatches(t, up.URL)
		return len(ups) == 1
	})
	// The store, not the service: nothing is told of it.
	if _, err := ts.Srv.Store.BatchCancel(context.Background(), store.BatchCancelParams{Workspace: "default", ID: bt.ID, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the delegator to find the cancel and forward it", func() bool {
		return getRaw(t, up.URL, ups[0].ID).CancelInitiatedAt != nil
	})
}

// TestStopSendsNothingWaitingForRateLimit: B is stopping, two calls in
// flight holding the stop open while the rest of its workers wait in the
// limiter for the requests-per-minute budget. Those were never sent: the
// stop withdraws them at once, sends nothing more, ends when the calls in
// flight answer, and leaves the withdrawn requests to run again (A, of the
// same cluster, runs them). Before, the waiting calls went out one by one
// as the budget let them, for the whole shutdown timeout, which then
// abandoned the calls still in flight.
func TestStopSendsNothingWaitingForRateLimit(t *testing.T) {
	t.Parallel()
	url := clusterURL(t)
	up, upURL := startSlowUpstream(t, 4*time.Second)
	backends := func(c *server.Config) {
		c.Backends = &config.Config{
			// 60 a minute: one call every ~1 s, so most workers wait in
			// the limiter.
			Backends: []config.Backend{{Name: "up", Kind: config.KindOpenAI, BaseURL: upURL + "/v1", Concurrency: 4, RequestsPerMinute: 60}},
			Routes:   []config.Route{{Model: "*", Backend: "up"}},
		}
	}
	b := clusterServer(t, url, backends)
	const n = 10
	bt := sdkBatch(t, b.Client, requests(n, "r")...)
	waitFor(t, 30*time.Second, "B to send two", func() bool {
		_, sent := up.sentAfter(time.Time{})
		return sent >= 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stopping := time.Now()
	if err := b.Srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(stopping)
	after, sent := up.sentAfter(stopping.Add(time.Second))
	if after > 0 {
		t.Errorf("B sent %d calls more than 1s into its stop (%d in all)", after, sent)
	}
	if took > 20*time.Second {
		t.Errorf("the stop took %v: it waited for the rate limit, not for the calls in flight", took.Round(time.Millisecond))
	}
	// What B withdrew runs again, once, on another process.
	a := clusterServer(t, url, backends)
	got := waitEnded(t, a.Client, bt.ID, 90*time.Second)
	if c := got.RequestCounts; c.Succeeded != n {
		t.Errorf("counts %+v, want all %d succeeded", c, n)
	}
	if _, all := up.sentAfter(time.Time{}); all != n {
		t.Errorf("the upstream got %d calls for %d requests", all, n)
	}
}
