package cli

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

func readAllEvents(t *testing.T, r *sseReader) []sseEvent {
	t.Helper()
	var evs []sseEvent
	for {
		ev, err := r.Next()
		if errors.Is(err, io.EOF) {
			return evs
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		evs = append(evs, *ev)
	}
}

func TestSSEReader(t *testing.T) {
	t.Parallel()
	stream := "\uFEFF: hello\n" +
		"id: 42\n" +
		"event: message_batch.ended\n" +
		`data: {"type":"event","id":"evt_1"}` + "\n\n" +
		"event: progress\r\n" +
		"data: line one\r\n" +
		"data:line two\r\n" +
		"data\r\n" +
		"retry: 1500\r\n\r\n" +
		": keepalive\n\n" +
		"id: 43\n\n" + // no data: not dispatched, but the id counts
		"event: cr\rdata:  two spaces\r\r" +
		"data: {\"unterminated\":true}\n" // discarded at EOF
	for name, r := range map[string]io.Reader{
		"whole":      strings.NewReader(stream),
		"byteByByte": iotest.OneByteReader(strings.NewReader(stream)),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sr := newSSEReader(r)
			evs := readAllEvents(t, sr)
			want := []sseEvent{
				{ID: "42", HasID: true, Event: "message_batch.ended", Data: []byte(`{"type":"event","id":"evt_1"}`)},
				{Event: "progress", Data: []byte("line one\nline two\n")},
				{Event: "cr", Data: []byte(" two spaces")},
			}
			if len(evs) != len(want) {
				t.Fatalf("events = %+v", evs)
			}
			for i := range want {
				if evs[i].ID != want[i].ID || evs[i].HasID != want[i].HasID || evs[i].Event != want[i].Event || string(evs[i].Data) != string(want[i].Data) {
					t.Errorf("event %d = %+v (data %q), want %+v (data %q)", i, evs[i], evs[i].Data, want[i], want[i].Data)
				}
			}
			if sr.LastEventID() != "43" || sr.Retry() != 1500*time.Millisecond {
				t.Errorf("last id %q, retry %v", sr.LastEventID(), sr.Retry())
			}
		})
	}
}

func TestSSEReaderLongLines(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 3<<20)
	evs := readAllEvents(t, newSSEReader(strings.NewReader("data: "+big+"\n\n")))
	if len(evs) != 1 || len(evs[0].Data) != len(big) {
		t.Fatalf("a 3 MB line: %d events", len(evs))
	}
	_, err := newSSEReader(strings.NewReader("data: " + strings.Repeat("x", sseMaxLine) + "\n\n")).Next()
	if err == nil || !strings.Contains(err.Error(), "longer than 4 MB") {
		t.Errorf("a line over the limit: err = %v", err)
	}
}

func TestSSEBackoff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		base, server time.Duration
		failures     int
		want         time.Duration
	}{
		{time.Second, 0, 0, time.Second},
		{time.Second, 0, 3, 8 * time.Second},
		{time.Second, 0, 100, sseMaxBackoff},
		{time.Second, 3 * time.Second, 1, 6 * time.Second},
		{time.Millisecond, 0, 2, 4 * time.Millisecond},
	} {
		if got := sseBackoff(tc.base, tc.server, tc.failures); got != tc.want {
			t.Errorf("sseBackoff(%v, %v, %d) = %v, want %v", tc.base, tc.server, tc.failures, got, tc.want)
		}
	}
}

// writeSSE writes raw stream text and flushes it.
func writeSSE(w http.ResponseWriter, text string) {
	_, _ = io.WriteString(w, text)
	w.(http.Flusher).Flush()
}

func startSSE(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
}

func sseBatchJSON(id, status string, processing, succeeded, errored int) string {
	ended := "null"
	if status == "ended" {
		ended = `"2026-11-29T10:01:30Z"`
	}
	return fmt.Sprintf(`{"id":%q,"type":"message_batch","processing_status":%q,"request_counts":{"processing":%d,"succeeded":%d,"errored":%d,"canceled":0,"expired":0},`+
		`"created_at":"2026-11-29T10:00:00Z","expires_at":"2026-11-30T10:00:00Z","ended_at":%s,"archived_at":null,"cancel_initiated_at":null,"results_url":null}`,
		id, status, processing, succeeded, errored, ended)
}

func sseProgress(id string, processing, succeeded, errored int) string {
	return fmt.Sprintf("event: progress\ndata: {\"type\":\"progress\",\"id\":%q,\"processing_status\":\"in_progress\",\"request_counts\":{\"processing\":%d,\"succeeded\":%d,\"errored\":%d,\"canceled\":0,\"expired\":0}}\n\n",
		id, processing, succeeded, errored)
}

// sseWebhookEvent is a webhook event in the stream, with its data line.
func sseWebhookEvent(seq int, typ, batchID, extra string) (event, data string) {
	data = fmt.Sprintf(`{"type":"event","id":"evt_%04d","created_at":"2026-11-29T10:00:%02dZ","data":{"type":%q,"id":%q%s}}`, seq, seq, typ, batchID, extra)
	return fmt.Sprintf("id: %d\nevent: %s\ndata: %s\n\n", seq, typ, data), data
}

func TestWaitOverSSE(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		errored  int
		wantCode int
	}{
		{"AllSucceeded", 0, 0},
		{"SomeErrored", 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const id = "msgbatch_sse"
			var (
				mu      sync.Mutex
				conns   int
				lastIDs []string
				accepts []string
				gets    int
				ended   bool
			)
			mux := http.NewServeMux()
			mux.HandleFunc("GET /v1/messages/batches/{id}/events", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				conns++
				n := conns
				lastIDs = append(lastIDs, r.Header.Get("Last-Event-ID"))
				accepts = append(accepts, r.Header.Get("Accept"))
				mu.Unlock()
				startSSE(w)
				if n == 1 {
					// Without counts, so that the first line shown is the progress event's.
					created, _ := sseWebhookEvent(1, "message_batch.created", id, `,"processing_status":"in_progress"`)
					writeSSE(w, created+": keepalive\n\n"+sseProgress(id, 5, 3, 0))
					return // the connection drops
				}
				if n == 2 {
					writeSSE(w, sseProgress(id, 4, 4, 0))
					return // drops again, having sent no id
				}
				endedEv, _ := sseWebhookEvent(2, "message_batch.ended", id, fmt.Sprintf(`,"processing_status":"ended","request_counts":{"processing":0,"succeeded":%d,"errored":%d,"canceled":0,"expired":0},"ended_at":"2026-11-29T10:01:30Z","results_url":"http://x/results"`, 8-tc.errored, tc.errored))
				writeSSE(w, sseProgress(id, 1, 7-tc.errored, tc.errored))
				mu.Lock()
				ended = true
				mu.Unlock()
				writeSSE(w, endedEv)
			})
			mux.HandleFunc("GET /v1/messages/batches/{id}", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				gets++
				w.Header().Set("Content-Type", "application/json")
				if ended {
					io.WriteString(w, sseBatchJSON(id, "ended", 0, 8-tc.errored, tc.errored))
				} else {
					io.WriteString(w, sseBatchJSON(id, "in_progress", 5, 3, 0))
				}
			})
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)

			stdout, stderr, err := runCLI(t, "", "wait", id, "--interval", "1ms", "--base-url", srv.URL)
			checkExitCode(t, err, tc.wantCode)
			if stdout != "" {
				t.Errorf("stdout = %q", stdout)
			}
			if !strings.Contains(stderr, id+" in_progress: 3/8 done (succeeded 3, errored 0") ||
				!strings.Contains(stderr, fmt.Sprintf("%s ended: 8 requests, succeeded %d, errored %d, canceled 0, expired 0 (took 1m30s)", id, 8-tc.errored, tc.errored)) {
				t.Errorf("stderr:\n%s", stderr)
			}
			mu.Lock()
			defer mu.Unlock()
			if conns != 3 || lastIDs[0] != "" || lastIDs[1] != "1" || lastIDs[2] != "1" || accepts[0] != "text/event-stream" {
				t.Errorf("%d connections, Last-Event-IDs %q, Accept %q; want reconnections resuming after 1", conns, lastIDs, accepts)
			}
			// One GET first, one after each drop, one for the full ended
			// batch: no polling.
			if gets != 4 {
				t.Errorf("%d batch GETs, want 4", gets)
			}
		})
	}
}

// TestWaitFallsBackToPolling waits against servers without the stream: one
// that answers 404 on the events path (the Anthropic API) and one that
// answers it with JSON.
func TestWaitFallsBackToPolling(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		events http.HandlerFunc
	}{
		{"404", nil},
		{"NotEventStream", func(w http.ResponseWriter, r *http.Request) {
			writeFakeJSON(w, map[string]any{"hello": "world"})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fake := newFakeServer(t)
			fake.pollsToEnd = 4
			fake.outcome = func(id string) string {
				if id == "b" {
					return "errored"
				}
				return "succeeded"
			}
			var (
				mu         sync.Mutex
				eventsHits int
			)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/events") {
					mu.Lock()
					eventsHits++
					mu.Unlock()
					if tc.events != nil {
						tc.events(w, r)
						return
					}
				}
				fake.srv.Config.Handler.ServeHTTP(w, r)
			}))
			t.Cleanup(srv.Close)
			in := `{"custom_id":"a","params":{}}` + "\n" + `{"custom_id":"b","params":{}}` + "\n" + `{"custom_id":"c","params":{}}` + "\n" + `{"custom_id":"d","params":{}}` + "\n"
			stdout, _, err := runCLI(t, in, "submit", "-", "--base-url", srv.URL, "--state-dir", t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			id := strings.TrimSpace(stdout)
			_, stderr, err := runCLI(t, "", "wait", id, "--interval", "1ms", "--base-url", srv.URL)
			checkExitCode(t, err, 2)
			if !strings.Contains(stderr, id+" in_progress: 1/4 done") || !strings.Contains(stderr, id+" ended: 4 requests, succeeded 3, errored 1") {
				t.Errorf("stderr:\n%s", stderr)
			}
			mu.Lock()
			defer mu.Unlock()
			if eventsHits != 1 {
				t.Errorf("events path asked %d times, want once", eventsHits)
			}
		})
	}
}

// TestWaitSSEAlreadyEnded: a stream that closes at once (the batch ended
// before we came) is settled by one GET.
func TestWaitSSEAlreadyEnded(t *testing.T) {
	t.Parallel()
	const id = "msgbatch_done"
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/messages/batches/{id}/events", func(w http.ResponseWriter, r *http.Request) { startSSE(w) })
	mux.HandleFunc("GET /v1/messages/batches/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, sseBatchJSON(id, "ended", 0, 4, 0))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	_, stderr, err := runCLI(t, "", "wait", id, "--interval", "1ms", "--base-url", srv.URL)
	checkExitCode(t, err, 0)
	if !strings.Contains(stderr, id+" ended: 4 requests") {
		t.Errorf("stderr:\n%s", stderr)
	}
}

// TestWaitIgnoresReplayedHistory: a stream that replays a batch's history
// (in_progress 0/4 first) must not show a batch that ended or is canceling
// as in progress.
func TestWaitIgnoresReplayedHistory(t *testing.T) {
	t.Parallel()
	for _, first := range []string{"ended", "canceling"} {
		const id = "msgbatch_old"
		var mu sync.Mutex
		gets := 0
		mux := http.NewServeMux()
		mux.HandleFunc("GET /v1/messages/batches/{id}/events", func(w http.ResponseWriter, r *http.Request) {
			startSSE(w)
			fmt.Fprintf(w, "id: 1\nevent: progress\ndata: %s\n\n", sseBatchJSON(id, "in_progress", 4, 0, 0))
		})
		mux.HandleFunc("GET /v1/messages/batches/{id}", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			gets++
			n := gets
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			if first == "canceling" && n == 1 {
				io.WriteString(w, sseBatchJSON(id, "canceling", 2, 2, 0))
				return
			}
			io.WriteString(w, sseBatchJSON(id, "ended", 0, 4, 0))
		})
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)
		_, stderr, err := runCLI(t, "", "wait", id, "--interval", "1ms", "--base-url", srv.URL)
		checkExitCode(t, err, 0)
		if strings.Contains(stderr, "in_progress") || !strings.Contains(stderr, id+" ended: 4 requests") {
			t.Errorf("%s first: stderr:\n%s", first, stderr)
		}
		if first == "canceling" && !strings.Contains(stderr, id+" canceling: 2/4 done") {
			t.Errorf("canceling first: stderr:\n%s\nwant the canceling counts", stderr)
		}
	}
}
