package server_test

// End-to-end tests of the anthropic-batch backend: the upstream is a second
// batchd (its default simulator backend) served by httptest, so every test
// runs the real create, poll, cancel and results wire calls.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/api"
	"github.com/batchd/batchd/internal/config"
	"github.com/batchd/batchd/internal/dispatch"
	"github.com/batchd/batchd/internal/server"
	"github.com/batchd/batchd/internal/store"
)

// delegating routes every model to an anthropic-batch backend at upURL that
// splits upstream batches at maxRequests and polls every 20ms to 100ms.
func delegating(upURL string, maxRequests int) func(*server.Config) {
	return func(c *server.Config) {
		c.Backends = &config.Config{
			Backends: []config.Backend{{
				Name: "batches", Kind: config.KindAnthropicBatch, BaseURL: upURL, APIKeyEnv: "UP_KEY",
				MaxBatchRequests: maxRequests,
				PollInterval:     config.Duration{Duration: 20 * time.Millisecond},
				PollMaxInterval:  config.Duration{Duration: 100 * time.Millisecond},
			}},
			Routes: []config.Route{{Model: "*", Backend: "batches"}},
		}
		c.Getenv = func(k string) string { return map[string]string{"UP_KEY": upstreamKey}[k] }
	}
}

// openServer opens and starts a batchd on dir with the test timings, for
// tests that restart it or need its listener; the caller closes it.
func openServer(t *testing.T, dir string, mutate ...func(*server.Config)) *server.Server {
	t.Helper()
	cfg := server.Config{
		DataDir: dir,
		Dispatch: dispatch.Config{
			Concurrency: 16, PollInterval: 10 * time.Millisecond, BackoffBase: 5 * time.Millisecond,
			BackoffMax: 50 * time.Millisecond, Lease: 2 * time.Second,
		},
	}
	for _, f := range mutate {
		f(&cfg)
	}
	srv, err := server.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open server: %v", err)
	}
	if err := srv.Start(context.Background()); err != nil {
		srv.Close(context.Background())
		t.Fatalf("start server: %v", err)
	}
	return srv
}

func closeServer(t *testing.T, srv *server.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := srv.Close(ctx); err != nil {
		t.Errorf("close server: %v", err)
	}
}

// upstreamBatches lists every batch the upstream batchd holds.
func upstreamBatches(t testing.TB, url string) []wireBatch {
	t.Helper()
	r := do(t, "GET", url+"/v1/messages/batches?limit=1000", nil)
	var page struct {
		Data []wireBatch `json:"data"`
	}
	if r.Status != 200 || json.Unmarshal(r.Body, &page) != nil {
		t.Fatalf("list upstream batches: %d %s", r.Status, r.Body)
	}
	return page.Data
}

// upstreamRequests is how many requests the upstream received in all.
func upstreamRequests(bs []wireBatch) int64 {
	var n int64
	for _, b := range bs {
		c := b.RequestCounts
		n += c.Processing + c.Succeeded + c.Errored + c.Canceled + c.Expired
	}
	return n
}

// checkResults checks one result per request and results that agree with
// the batch's counts, and returns the results by custom_id.
func checkResults(t *testing.T, url string, b wireBatch, n int) map[string]resultLine {
	t.Helper()
	res := resultsRaw(t, url, b.ID, "")
	if len(res) != n {
		t.Fatalf("%d results, want %d", len(res), n)
	}
	var got store.Counts
	for _, r := range res {
		switch r.Result.Type {
		case "succeeded":
			got.Succeeded++
		case "errored":
			got.Errored++
		case "canceled":
			got.Canceled++
		case "expired":
			got.Expired++
		default:
			t.Errorf("result type %q", r.Result.Type)
		}
	}
	if got != b.RequestCounts {
		t.Errorf("results add up to %+v, counts say %+v", got, b.RequestCounts)
	}
	return res
}

// TestDelegateSplitsIntoUpstreamBatches: requests go upstream in batches of
// at most max_batch_requests, never mixing two of our batches; succeeded
// and errored results come back as the upstream wrote them.
func TestDelegateSplitsIntoUpstreamBatches(t *testing.T) {
	t.Parallel()
	up := newTestServer(t)
	ts := newTestServer(t, withConfig(delegating(up.URL, 3)))

	reqs := nRequests("a", 7, "hello")
	reqs[4].Params = params("[[sim error=invalid_request_error]] no")
	a := createRaw(t, ts.URL, createBody(t, reqs...))
	b := createRaw(t, ts.URL, createBody(t, nRequests("b", 2, "hi")...))
	a = waitEndedRaw(t, ts.URL, a.ID, 20*time.Second)
	b = waitEndedRaw(t, ts.URL, b.ID, 20*time.Second)
	if a.RequestCounts != (store.Counts{Succeeded: 6, Errored: 1}) || b.RequestCounts != (store.Counts{Succeeded: 2}) {
		t.Fatalf("counts %+v and %+v", a.RequestCounts, b.RequestCounts)
	}
	res := checkResults(t, ts.URL, a, 7)
	if r := res["a-4"]; r.Result.Error == nil || r.Result.Error.Error.Type != "invalid_request_error" {
		t.Errorf("a-4: %+v, want the upstream's invalid_request_error", r.Result)
	}
	if r := res["a-0"]; !bytes.Contains(r.Result.Message, []byte(`"type":"message"`)) {
		t.Errorf("a-0: message %s", r.Result.Message)
	}
	checkResults(t, ts.URL, b, 2)

	// Upstream: 7+2 requests, each once, in batches of at most 3, each
	// holding requests of one of our batches only.
	owner := map[string]string{} // upstream custom_id -> our batch
	for _, bt := range []wireBatch{a, b} {
		got, err := ts.Srv.Service.Get(context.Background(), api.DefaultWorkspace, bt.ID)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := ts.Srv.Store.ResultsList(context.Background(), store.ResultsListParams{BatchSeq: got.Seq, Limit: 100})
		if err != nil || len(rs) == 0 {
			t.Fatalf("local results of %s: %v", bt.ID, err)
		}
		for _, r := range rs {
			owner[fmt.Sprint("r", r.ID)] = bt.ID
		}
	}
	ups := upstreamBatches(t, up.URL)
	if n := upstreamRequests(ups); n != 9 {
		t.Fatalf("upstream received %d requests, want 9", n)
	}
	if len(ups) < 4 {
		t.Fatalf("%d upstream batches, want at least 4 (7 split by 3, then 2)", len(ups))
	}
	for _, u := range ups {
		ur := resultsRaw(t, up.URL, u.ID, "")
		if len(ur) > 3 {
			t.Errorf("upstream batch %s holds %d requests, over max_batch_requests 3", u.ID, len(ur))
		}
		mine := ""
		for id := range ur {
			if owner[id] == "" || (mine != "" && owner[id] != mine) {
				t.Errorf("upstream batch %s: custom_id %q belongs to %q, others to %q", u.ID, id, owner[id], mine)
			}
			mine = owner[id]
		}
	}
}

// TestDelegateSplitsByBytes: max_batch_bytes splits too.
func TestDelegateSplitsByBytes(t *testing.T) {
	t.Parallel()
	up := newTestServer(t)
	ts := newTestServer(t, withConfig(delegating(up.URL, 100)), withConfig(func(c *server.Config) {
		c.Backends.Backends[0].MaxBatchBytes = 300 // each request takes about 122 bytes: two fit
	}))
	b := createRaw(t, ts.URL, createBody(t, nRequests("x", 6, "hello")...))
	b = waitEndedRaw(t, ts.URL, b.ID, 20*time.Second)
	if b.RequestCounts != (store.Counts{Succeeded: 6}) {
		t.Fatalf("counts %+v", b.RequestCounts)
	}
	checkResults(t, ts.URL, b, 6)
	ups := upstreamBatches(t, up.URL)
	if n := upstreamRequests(ups); n != 6 || len(ups) != 3 {
		t.Fatalf("upstream received %d requests in %d batches, want 6 in 3", n, len(ups))
	}
}

// TestDelegateCancelForwardsUpstream: canceling our batch cancels its
// upstream batch at once; the upstream's canceled results come back.
func TestDelegateCancelForwardsUpstream(t *testing.T) {
	t.Parallel()
	// One request at a time upstream, so most are still queued at cancel.
	up := newTestServer(t, withConfig(func(c *server.Config) { c.Dispatch.Concurrency = 1 }))
	ts := newTestServer(t, withConfig(delegating(up.URL, 100)))
	b := createRaw(t, ts.URL, createBody(t, nRequests("c", 5, "[[sim latency=1s]] slow")...))
	var ups []wireBatch
	waitFor(t, 10*time.Second, "the upstream batch", func() bool {
		ups = upstreamBatches(t, up.URL)
		return len(ups) == 1
	})
	if r := do(t, "POST", ts.URL+"/v1/messages/batches/"+b.ID+"/cancel", nil); r.Status != 200 {
		t.Fatalf("cancel: %d %s", r.Status, r.Body)
	}
	waitFor(t, 5*time.Second, "the cancel to reach the upstream", func() bool {
		return getRaw(t, up.URL, ups[0].ID).CancelInitiatedAt != nil
	})
	b = waitEndedRaw(t, ts.URL, b.ID, 20*time.Second)
	if b.RequestCounts.Canceled < 3 || b.CancelInitiatedAt == nil {
		t.Fatalf("counts %+v, want at least the 3 queued upstream requests canceled", b.RequestCounts)
	}
	checkResults(t, ts.URL, b, 5)
	if u := getRaw(t, up.URL, ups[0].ID); u.RequestCounts.Canceled != b.RequestCounts.Canceled {
		t.Errorf("upstream counts %+v, ours %+v", u.RequestCounts, b.RequestCounts)
	}
}

// TestDelegateMirrorsUpstreamExpiry: requests the upstream expired are
// expired here too.
func TestDelegateMirrorsUpstreamExpiry(t *testing.T) {
	t.Parallel()
	up := newTestServer(t, withConfig(func(c *server.Config) {
		c.Dispatch.Concurrency = 1
		c.Batch.ExpireAfter = 300 * time.Millisecond
	}))
	ts := newTestServer(t, withConfig(delegating(up.URL, 100)))
	b := createRaw(t, ts.URL, createBody(t, nRequests("e", 5, "[[sim latency=200ms]] slow")...))
	b = waitEndedRaw(t, ts.URL, b.ID, 20*time.Second)
	if b.RequestCounts.Expired < 2 || b.RequestCounts.Succeeded+b.RequestCounts.Expired != 5 {
		t.Fatalf("counts %+v, want the requests the upstream could not reach expired", b.RequestCounts)
	}
	res := checkResults(t, ts.URL, b, 5)
	for id, r := range res {
		if r.Result.Type == "expired" && (r.Result.Message != nil || r.Result.Error != nil) {
			t.Errorf("%s: expired result carries %s %+v", id, r.Result.Message, r.Result.Error)
		}
	}
}

// TestDelegateSurvivesRestart: a server closed while its upstream batches
// run resumes them when it opens again on the same data dir; no request is
// sent upstream twice and each gets exactly one result.
func TestDelegateSurvivesRestart(t *testing.T) {
	t.Parallel()
	up := newTestServer(t)
	dir := t.TempDir()
	first := openServer(t, dir, delegating(up.URL, 3))
	hs := httptest.NewServer(first.Handler())
	b := createRaw(t, hs.URL, createBody(t, nRequests("s", 7, "[[sim latency=1s]] slow")...))
	waitFor(t, time.Minute, "3 upstream batches", func() bool {
		return upstreamRequests(upstreamBatches(t, up.URL)) == 7
	})
	hs.Close()
	closeServer(t, first)
	for _, u := range upstreamBatches(t, up.URL) {
		if u.ProcessingStatus == "ended" {
			t.Logf("upstream batch %s ended before the restart; the test is weaker for it", u.ID)
		}
	}

	second := openServer(t, dir, delegating(up.URL, 3))
	t.Cleanup(func() { closeServer(t, second) })
	hs = httptest.NewServer(second.Handler())
	t.Cleanup(hs.Close)
	b = waitEndedRaw(t, hs.URL, b.ID, 20*time.Second)
	if b.RequestCounts != (store.Counts{Succeeded: 7}) {
		t.Fatalf("counts %+v", b.RequestCounts)
	}
	checkResults(t, hs.URL, b, 7)
	ups := upstreamBatches(t, up.URL)
	if n := upstreamRequests(ups); n != 7 || len(ups) != 3 {
		t.Fatalf("upstream received %d requests in %d batches, want 7 in 3", n, len(ups))
	}
}

// TestDelegateUpstreamDownAtFirst: while the upstream refuses connections
// the create is retried; once it is up the batch runs.
func TestDelegateUpstreamDownAtFirst(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // connection refused from now on

	var logs bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logs, &mu}, nil))
	ts := newTestServer(t, withConfig(delegating("http://"+addr, 100)), withConfig(func(c *server.Config) { c.Logger = logger }))
	b := createRaw(t, ts.URL, createBody(t, nRequests("d", 3, "hello")...))
	waitFor(t, 10*time.Second, "a refused create", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(logs.String(), "create upstream batch failed")
	})
	if got := getRaw(t, ts.URL, b.ID); got.ProcessingStatus != "in_progress" || got.RequestCounts.Processing != 3 {
		t.Fatalf("batch %+v while the upstream is down", got)
	}

	upSrv := openServer(t, t.TempDir())
	t.Cleanup(func() { closeServer(t, upSrv) })
	var ln2 net.Listener
	waitFor(t, 5*time.Second, "the upstream's port", func() bool {
		ln2, err = net.Listen("tcp", addr)
		return err == nil
	})
	hs := httptest.NewUnstartedServer(upSrv.Handler())
	hs.Listener.Close()
	hs.Listener = ln2
	hs.Start()
	t.Cleanup(hs.Close)

	b = waitEndedRaw(t, ts.URL, b.ID, 20*time.Second)
	if b.RequestCounts != (store.Counts{Succeeded: 3}) {
		t.Fatalf("counts %+v", b.RequestCounts)
	}
	checkResults(t, ts.URL, b, 3)
	if ups := upstreamBatches(t, hs.URL); len(ups) != 1 || upstreamRequests(ups) != 3 {
		t.Fatalf("upstream batches %+v", ups)
	}
}
