package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/batchd/batchd/internal/store/postgres/pgtest"
	"github.com/batchd/batchd/internal/webhook"
)

// clusterReceiver is a webhook endpoint that is down (503) until every
// event it expects has been attempted once, or for downMax at most, then
// up. It verifies every signature and tracks what is in flight, per
// webhook-id and in all.
type clusterReceiver struct {
	expect  int           // events to see failing before coming up
	downMax time.Duration // the longest it stays down, from its first call
	hold    time.Duration // how long each call takes, so that calls overlap
	wh      atomic.Pointer[standardwebhooks.Webhook]
	up      atomic.Bool

	mu        sync.Mutex
	failed    map[string]int // webhook-id → 503s answered
	succeeded map[string]int // webhook-id → 204s answered
	inFlight  map[string]int // webhook-id → calls in the handler
	total     int            // calls in the handler
	maxTotal  int
	problems  []string
	firstCall time.Time
	upAt      time.Time
}

func newClusterReceiver(expect int, downMax, hold time.Duration) *clusterReceiver {
	return &clusterReceiver{expect: expect, downMax: downMax, hold: hold, failed: map[string]int{}, succeeded: map[string]int{}, inFlight: map[string]int{}}
}

func (c *clusterReceiver) problem(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

func (c *clusterReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	id := r.Header.Get("webhook-id")
	c.mu.Lock()
	c.inFlight[id]++
	c.total++
	c.maxTotal = max(c.maxTotal, c.total)
	if c.inFlight[id] > 1 {
		c.problem("%s delivered %d times at once", id, c.inFlight[id])
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.inFlight[id]--
		c.total--
		c.mu.Unlock()
	}()
	time.Sleep(c.hold) // the receiver's work: lets concurrent calls overlap

	wh := c.wh.Load()
	if wh == nil {
		c.mu.Lock()
		c.problem("%s arrived before the endpoint existed", id)
		c.mu.Unlock()
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if err := wh.Verify(body, r.Header); err != nil {
		c.mu.Lock()
		c.problem("%s: signature: %v", id, err)
		c.mu.Unlock()
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	var env struct{ ID string }
	if json.Unmarshal(body, &env); env.ID != id {
		c.mu.Lock()
		c.problem("webhook-id %s carries event %q", id, env.ID)
		c.mu.Unlock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.firstCall.IsZero() {
		c.firstCall = time.Now()
	}
	if !c.up.Load() && time.Since(c.firstCall) >= c.downMax {
		c.up.Store(true) // down long enough: what comes later finds it up
		c.upAt = time.Now()
	}
	if !c.up.Load() {
		c.failed[id]++
		if len(c.failed) >= c.expect {
			c.up.Store(true) // every event has failed once: the receiver comes up
			c.upAt = time.Now()
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if c.succeeded[id]++; c.succeeded[id] > 1 {
		c.problem("%s succeeded %d times", id, c.succeeded[id])
	}
	w.WriteHeader(http.StatusNoContent)
}

// snapshot returns how many events have succeeded and the problems seen.
func (c *clusterReceiver) snapshot() (succeeded int, problems []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.succeeded), slices.Clone(c.problems)
}

// sseEvent is one event of a stream that carries an id (the outbox's
// events; progress events have none).
type sseEvent struct {
	seq        int64
	typ, evtID string
	batchID    string
}

// eventStream reads a workspace event stream until the test ends.
type eventStream struct {
	mu     sync.Mutex
	events []sseEvent
	err    error
}

// openEventStream opens GET url/v1/events resuming after lastID (the
// Last-Event-ID header; "0" for the whole history).
func openEventStream(t *testing.T, url, lastID string) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/v1/events", nil)
	req.Header.Set("Last-Event-ID", lastID)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 {
		raw, _ := io.ReadAll(res.Body)
		res.Body.Close()
		t.Fatalf("GET %s/v1/events: %d %s", url, res.StatusCode, raw)
	}
	s := &eventStream{}
	go func() {
		defer res.Body.Close()
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(nil, 1<<20)
		var cur sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				cur.seq, _ = strconv.ParseInt(strings.TrimPrefix(line, "id: "), 10, 64)
			case strings.HasPrefix(line, "event: "):
				cur.typ = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				var env struct {
					ID   string
					Data struct{ ID string }
				}
				json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &env)
				cur.evtID, cur.batchID = env.ID, env.Data.ID
			case line == "":
				if cur.seq != 0 {
					s.mu.Lock()
					s.events = append(s.events, cur)
					s.mu.Unlock()
				}
				cur = sseEvent{}
			}
		}
		s.mu.Lock()
		s.err = fmt.Errorf("stream of %s ended: %v", url, sc.Err())
		s.mu.Unlock()
	}()
	return s
}

func (s *eventStream) got() ([]sseEvent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events), s.err
}

// waitCluster polls cond every 20 ms until it holds, failing t after
// timeout with what it says.
func waitCluster(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %s", what, timeout, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClusterWebhooks: three `batchd serve` processes on one PostgreSQL
// schema, sharing the webhook key through a file, end 100 batches. Their
// one endpoint is down (503) until each of the 200 events (created and
// ended) has failed once (or for 4 s), then up. Each event arrives exactly once
// successfully, signed; no event is ever in flight twice at once, and the
// endpoint never has more deliveries in flight than the cap for the whole
// cluster. Every process's event stream carries all 200 events in seq
// order, and a stream resumed on another process with the Last-Event-ID
// one process sent carries exactly the rest.
func TestClusterWebhooks(t *testing.T) {
	t.Parallel()
	const batches, events, procs = 100, 200, 3
	pgURL := pgtest.URL(t) + "&search_path=" + pgtest.Schema(t)
	keyFile := filepath.Join(t.TempDir(), "webhook.key")
	key := make([]byte, webhook.KeySize)
	rand.Read(key)
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	// Down until every event has failed once, which takes as long as the
	// creates (2-3 s; more on a loaded machine), but not beyond the first
	// event's third attempt: the receiver never makes an event wait for
	// the 36 s slot.
	rc := newClusterReceiver(events, 4*time.Second, 10*time.Millisecond)
	recv := httptest.NewServer(rc)
	t.Cleanup(recv.Close)

	flags := []string{"--database-url", pgURL, "--webhook-key-file", keyFile, "--webhook-allow-cidr", "127.0.0.0/8",
		// Retries after 100 ms, 6 s (at least 4.8 s) and 36 s.
		"--webhook-retry-scale", "0.02"}
	var ps []*proc
	for range procs {
		ps = append(ps, startServe(t, t.TempDir(), flags...))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, p := range ps {
				t.Logf("process %d:\n%s", i, p.Logs())
			}
		}
	})
	epID, secret := endpoint(t, ps[0].URL, recv.URL, `"message_batch.created","message_batch.ended"`)
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	rc.wh.Store(wh)
	var streams []*eventStream
	for _, p := range ps {
		streams = append(streams, openEventStream(t, p.URL, "0"))
	}

	start := time.Now()
	// Created through every process at once, so that the receiver's down
	// time (until the last event has failed) stays short.
	ids := map[string]bool{}
	var idsMu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, batches)
	for i := range batches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := postBatch(ps[i%procs].URL, bodyReader(1, func(int) string { return fmt.Sprintf("hook %d", i) }))
			if err != nil {
				errs <- err
				return
			}
			idsMu.Lock()
			ids[id] = true
			idsMu.Unlock()
		}()
		if i%procs == procs-1 {
			wg.Wait() // one create per process at a time
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	created := time.Since(start)
	waitCluster(t, 60*time.Second, "every event delivered", func() (bool, string) {
		n, problems := rc.snapshot()
		if len(problems) > 0 {
			t.Fatalf("receiver: %s", strings.Join(problems[:min(len(problems), 10)], "; "))
		}
		return n == events, fmt.Sprintf("%d of %d succeeded (up: %v)", n, events, rc.up.Load())
	})
	delivered := time.Since(start)
	// Each success is recorded once, by the process that sent it.
	waitCluster(t, 30*time.Second, "every success recorded", func() (bool, string) {
		res, err := http.Get(ps[1].URL + "/v1/webhooks/endpoints/" + epID + "/attempts?limit=1000")
		if err != nil {
			return false, err.Error()
		}
		defer res.Body.Close()
		var list struct {
			Data []struct {
				EventID string `json:"event_id"`
				Status  int
			}
		}
		json.NewDecoder(res.Body).Decode(&list)
		ok := map[string]int{}
		for _, a := range list.Data {
			if a.Status == http.StatusNoContent {
				ok[a.EventID]++
			}
		}
		for id, n := range ok {
			if n > 1 {
				t.Fatalf("event %s has %d successful attempts", id, n)
			}
		}
		return len(ok) == events, fmt.Sprintf("%d of %d successes in %d attempts listed", len(ok), events, len(list.Data))
	})
	rc.mu.Lock()
	maxInFlight, failed, up := rc.maxTotal, len(rc.failed), rc.upAt.Sub(start)
	rc.mu.Unlock()
	t.Logf("%d of the events failed once or more; all succeeded once each; at most %d in flight to the endpoint; created by %s, receiver up at %s, all delivered at %s",
		failed, maxInFlight, created.Round(time.Millisecond), up.Round(time.Millisecond), delivered.Round(time.Millisecond))
	if maxInFlight > webhook.DefaultPerEndpoint {
		t.Errorf("%d deliveries in flight to one endpoint at once across %d processes, cap %d", maxInFlight, procs, webhook.DefaultPerEndpoint)
	}
	if _, problems := rc.snapshot(); len(problems) > 0 {
		t.Fatalf("receiver: %s", strings.Join(problems, "; "))
	}

	// Every stream carries every event once, in seq order, the same on
	// every process.
	var first []sseEvent
	for i, s := range streams {
		var got []sseEvent
		waitCluster(t, 30*time.Second, fmt.Sprintf("process %d's stream", i), func() (bool, string) {
			var err error
			got, err = s.got()
			if err != nil {
				t.Fatal(err)
			}
			return len(got) >= events, fmt.Sprintf("%d of %d events", len(got), events)
		})
		checkStream(t, fmt.Sprintf("process %d", i), got, ids, events)
		if i == 0 {
			first = got
		} else if !slices.Equal(got, first) {
			t.Fatalf("process %d's stream differs from process 0's", i)
		}
	}
	// Last-Event-ID from process i resumes on process i+1 with exactly the
	// events after it.
	for i := range procs {
		cut := (i + 1) * events / (procs + 1)
		last := strconv.FormatInt(first[cut-1].seq, 10)
		s := openEventStream(t, ps[(i+1)%procs].URL, last)
		var got []sseEvent
		waitCluster(t, 30*time.Second, "a resumed stream", func() (bool, string) {
			var err error
			got, err = s.got()
			if err != nil {
				t.Fatal(err)
			}
			return len(got) >= events-cut, fmt.Sprintf("%d of %d events after %s", len(got), events-cut, last)
		})
		if !slices.Equal(got, first[cut:]) {
			t.Fatalf("resumed on process %d after %s (from process %d): got %d events from seq %d, want the %d from seq %d",
				(i+1)%procs, last, i, len(got), got[0].seq, events-cut, first[cut].seq)
		}
	}
}

// postBatch creates a batch, returning its id.
func postBatch(url string, body io.Reader) (string, error) {
	res, err := http.Post(url+"/v1/messages/batches", "application/json", body)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	var b batchJSON
	raw, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(raw, &b); res.StatusCode != 200 || err != nil {
		return "", fmt.Errorf("create: %d %s", res.StatusCode, raw)
	}
	return b.ID, nil
}

// checkStream checks that a stream holds n events in strictly increasing
// seq order, one created and one ended of each batch in ids, the created
// first.
func checkStream(t *testing.T, name string, got []sseEvent, ids map[string]bool, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("%s: %d events, want %d", name, len(got), n)
	}
	seen := map[string]string{} // batch → the types seen so far
	for i, e := range got {
		if i > 0 && e.seq <= got[i-1].seq {
			t.Fatalf("%s: seq %d after %d", name, e.seq, got[i-1].seq)
		}
		if !ids[e.batchID] || e.evtID == "" {
			t.Fatalf("%s: event %+v of no batch of the test", name, e)
		}
		seen[e.batchID] += e.typ + ";"
	}
	for id := range ids {
		if seen[id] != "message_batch.created;message_batch.ended;" {
			t.Fatalf("%s: batch %s has %q", name, id, seen[id])
		}
	}
}
