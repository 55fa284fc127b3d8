package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/server"
)

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct{ id, event, data string }

// readSSE reads events from a stream until stop says so or it ends.
func readSSE(t *testing.T, url string, headers map[string]string, stop func(sseEvent) bool) []sseEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("x-api-key", "test")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); res.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("stream: %d %s", res.StatusCode, ct)
	}
	var out []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.event != "" {
				out = append(out, cur)
				if stop(cur) {
					return out
				}
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			cur.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			cur.data = line[6:]
		}
	}
	return out
}

// TestBatchEventStream: a batch's stream carries its created event, live
// progress with processing falling, and its ended event, then closes; a
// reconnect with Last-Event-ID resumes after what was seen.
func TestBatchEventStream(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withConfig(func(c *server.Config) { c.Dispatch.Concurrency = 2 }))
	// Three waves of two, long enough for progress (polled every 250 ms) to see several counts.
	b := createRaw(t, ts.URL, createBody(t, nRequests("s", 6, "[[sim latency=600ms]] hi")...))
	url := ts.URL + "/v1/messages/batches/" + b.ID + "/events"
	events := readSSE(t, url, nil, func(sseEvent) bool { return false }) // ends by itself
	if len(events) < 3 || events[0].event != "message_batch.created" || events[len(events)-1].event != "message_batch.ended" {
		t.Fatalf("events %+v", events)
	}
	var processing []int
	for _, e := range events {
		if e.event != "progress" {
			continue
		}
		var p struct {
			ID            string `json:"id"`
			RequestCounts struct {
				Processing int `json:"processing"`
			} `json:"request_counts"`
		}
		if json.Unmarshal([]byte(e.data), &p) != nil || p.ID != b.ID {
			t.Fatalf("progress %s", e.data)
		}
		processing = append(processing, p.RequestCounts.Processing)
	}
	if len(processing) < 2 || processing[0] <= processing[len(processing)-1] {
		t.Fatalf("progress should show processing falling, got %v", processing)
	}
	var ended struct {
		Data struct {
			ResultsURL string `json:"results_url"`
		} `json:"data"`
	}
	json.Unmarshal([]byte(events[len(events)-1].data), &ended)
	if !strings.HasSuffix(ended.Data.ResultsURL, "/v1/messages/batches/"+b.ID+"/results") {
		t.Fatalf("ended event %s", events[len(events)-1].data)
	}
	again := readSSE(t, url, map[string]string{"Last-Event-ID": events[0].id}, func(sseEvent) bool { return false })
	if len(again) != 1 || again[0].event != "message_batch.ended" {
		t.Fatalf("resumed stream %+v, want only the ended event", again)
	}
}

// TestWorkspaceEventStream: the workspace stream carries every batch's
// events; another workspace's are absent.
func TestWorkspaceEventStream(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	b := createRaw(t, ts.URL, createBody(t, nRequests("w", 2, "hi")...))
	events := readSSE(t, ts.URL+"/v1/events?after=0", nil, func(e sseEvent) bool {
		return e.event == "message_batch.ended" && strings.Contains(e.data, b.ID)
	})
	if events[0].event != "message_batch.created" || !strings.Contains(events[0].data, b.ID) {
		t.Fatalf("events %+v", events)
	}
	r := do(t, "GET", ts.URL+"/v1/messages/batches/msgbatch_nope/events", nil)
	wantError(t, r, 404, "not_found_error")
}

// TestWorkspaceStreamStartsNow: without Last-Event-ID the workspace stream
// carries only what happens after the subscription, not the history.
func TestWorkspaceStreamStartsNow(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	old := createRaw(t, ts.URL, createBody(t, nRequests("old", 1, "hi")...))
	waitEndedRaw(t, ts.URL, old.ID, 10*time.Second)
	created := make(chan struct{})
	go func() {
		defer close(created)
		time.Sleep(300 * time.Millisecond) // after the subscription below
		createRaw(t, ts.URL, createBody(t, nRequests("new", 1, "hi")...))
	}()
	events := readSSE(t, ts.URL+"/v1/events", nil, func(e sseEvent) bool { return e.event == "message_batch.ended" })
	for _, e := range events {
		if strings.Contains(e.data, old.ID) {
			t.Fatalf("the stream replayed an earlier batch's event: %+v", e)
		}
	}
	<-created
	if len(events) == 0 || !strings.Contains(events[0].data, "msgbatch_") {
		t.Fatalf("events %+v", events)
	}
}

// TestWorkspaceStreamSince: ?since= replays the events created from that
// time on, and none before; a bad time is a 400 naming since.
func TestWorkspaceStreamSince(t *testing.T) {
	t.Parallel()
	now := time.Now()
	clock := &testClock{now: now.Add(-2 * time.Hour)}
	ts := newTestServer(t, withConfig(func(c *server.Config) { c.Now = clock.Now }))
	old := createRaw(t, ts.URL, createBody(t, nRequests("old", 1, "hi")...))
	waitEndedRaw(t, ts.URL, old.ID, 10*time.Second)
	clock.Add(115 * time.Minute) // five minutes ago
	recent := createRaw(t, ts.URL, createBody(t, nRequests("recent", 1, "hi")...))
	waitEndedRaw(t, ts.URL, recent.ID, 10*time.Second)

	since := now.Add(-10 * time.Minute).UTC().Format(time.RFC3339)
	events := readSSE(t, ts.URL+"/v1/events?since="+since, nil, func(e sseEvent) bool {
		return e.event == "message_batch.ended" && strings.Contains(e.data, recent.ID)
	})
	var got []string
	for _, e := range events {
		if e.event == "progress" {
			continue
		}
		if strings.Contains(e.data, old.ID) {
			t.Errorf("an event from before since was replayed: %+v", e)
		}
		got = append(got, e.event)
	}
	if len(got) != 2 || got[0] != "message_batch.created" || got[1] != "message_batch.ended" {
		t.Fatalf("events since %s: %v, want the recent batch's created and ended", since, got)
	}

	wantError(t, do(t, "GET", ts.URL+"/v1/events?since=yesterday", nil), 400, "invalid_request_error", "since")
}
