package server_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/server"
)

// openStream opens an event stream and returns once the server has
// answered with its headers (the stream is subscribed by then), with a
// channel of its events; closing is the test's cleanup.
func openStream(t *testing.T, url string, headers ...string) (<-chan sseEvent, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("x-api-key", "test")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); res.Body.Close() })
	ch := make(chan sseEvent, 1000)
	if res.StatusCode != http.StatusOK {
		close(ch)
		return ch, res
	}
	go func() {
		defer close(ch)
		var cur sseEvent
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if cur.event != "" {
					ch <- cur
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
	}()
	return ch, res
}

// TestManyStreamsSeeEveryEventInOrder: many workspace streams, open at
// once, each carry every event of the batches created after they opened,
// in sequence order, none twice; batch streams carry their own batch's.
func TestManyStreamsSeeEveryEventInOrder(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	const streams, batches = 40, 6
	var chans []<-chan sseEvent
	for range streams {
		ch, res := openStream(t, ts.URL+"/v1/events")
		if res.StatusCode != http.StatusOK {
			t.Fatalf("stream: status %d", res.StatusCode)
		}
		chans = append(chans, ch)
	}
	var ids []string
	for i := range batches {
		b := createRaw(t, ts.URL, createBody(t, nRequests(fmt.Sprintf("b%d", i), 3, "hi")...))
		ids = append(ids, b.ID)
	}
	var wg sync.WaitGroup
	got := make([][]string, streams)
	errs := make([]string, streams)
	for i, ch := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.After(60 * time.Second)
			last, ended := int64(0), 0
			for ended < batches {
				select {
				case e, ok := <-ch:
					if !ok {
						errs[i] = "stream closed"
						return
					}
					if e.event == "progress" {
						continue
					}
					seq, err := strconv.ParseInt(e.id, 10, 64)
					if err != nil || seq <= last {
						errs[i] = fmt.Sprintf("event id %q after %d: out of order or repeated", e.id, last)
						return
					}
					last = seq
					got[i] = append(got[i], e.id+" "+e.event)
					if e.event == "message_batch.ended" {
						ended++
					}
				case <-deadline:
					errs[i] = fmt.Sprintf("timed out with %d events", len(got[i]))
					return
				}
			}
		}()
	}
	wg.Wait()
	for i := range streams {
		if errs[i] != "" {
			t.Fatalf("stream %d: %s", i, errs[i])
		}
		if len(got[i]) != 2*batches {
			t.Fatalf("stream %d: %d events, want %d (created and ended of each): %v", i, len(got[i]), 2*batches, got[i])
		}
		if fmt.Sprint(got[i]) != fmt.Sprint(got[0]) {
			t.Fatalf("stream %d saw %v\nstream 0 saw %v", i, got[i], got[0])
		}
	}
	// A batch stream of each batch, opened after the end, replays its own.
	for _, id := range ids {
		events := readSSE(t, ts.URL+"/v1/messages/batches/"+id+"/events", nil, func(sseEvent) bool { return false })
		if len(events) < 2 || events[0].event != "message_batch.created" || events[len(events)-1].event != "message_batch.ended" || !strings.Contains(events[0].data, id) {
			t.Fatalf("batch stream of %s: %+v", id, events)
		}
	}
}

// TestStreamsCapPerWorkspace: over --max-streams-per-workspace a new
// stream is a 429 rate_limit_error; another workspace is not affected; a
// closed stream frees its place.
func TestStreamsCapPerWorkspace(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withConfig(func(c *server.Config) { c.MaxStreamsPerWorkspace = 2 }))
	keyA, _ := addKey(t, ts.Srv.Store, "a")
	keyB, _ := addKey(t, ts.Srv.Store, "b")
	b := createRaw(t, ts.URL, createBody(t, nRequests("cap", 1, "[[sim latency=1h]] hi")...), "x-api-key", "", "x-api-key", keyA)

	_, r1 := openStream(t, ts.URL+"/v1/events", "x-api-key", keyA)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+"/v1/messages/batches/"+b.ID+"/events", nil)
	req.Header.Set("x-api-key", keyA)
	r2, err := http.DefaultClient.Do(req)
	if err != nil || r1.StatusCode != 200 || r2.StatusCode != 200 {
		t.Fatalf("the first two streams: %d, %v %v", r1.StatusCode, r2, err)
	}
	for _, path := range []string{"/v1/events", "/v1/messages/batches/" + b.ID + "/events"} {
		wantError(t, do(t, "GET", ts.URL+path, nil, "x-api-key", "", "x-api-key", keyA), 429, "rate_limit_error", "event streams")
	}
	if _, r := openStream(t, ts.URL+"/v1/events", "x-api-key", keyB); r.StatusCode != 200 {
		t.Fatalf("another workspace's stream: %d", r.StatusCode)
	}
	cancel()
	r2.Body.Close()
	waitFor(t, 20*time.Second, "a closed stream to free its place", func() bool {
		_, r := openStream(t, ts.URL+"/v1/events", "x-api-key", keyA)
		return r.StatusCode == 200
	})
}
