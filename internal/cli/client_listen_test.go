package cli

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/batchd/batchd/internal/webhook"
)

// syncBuffer is a bytes.Buffer safe for a command writing while a test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startCLI runs the client commands with args in the background, under a
// context the test cancels as Ctrl-C would.
func startCLI(t *testing.T, args ...string) (stdout, stderr *syncBuffer, stop func() error) {
	t.Helper()
	root := &cobra.Command{Use: "batchd", SilenceUsage: true, SilenceErrors: true}
	addClientCommands(root)
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetIn(strings.NewReader(""))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the command did not end after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stdout, stderr, stop
}

// received is one request the receiver got.
type received struct {
	body   []byte
	header http.Header
}

// newReceiver records requests and answers them with the statuses in turn
// (then 204).
func newReceiver(t *testing.T, statuses ...int) (*httptest.Server, <-chan received) {
	t.Helper()
	ch := make(chan received, 10)
	var (
		mu sync.Mutex
		n  int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		status := http.StatusNoContent
		if n < len(statuses) {
			status = statuses[n]
		}
		n++
		mu.Unlock()
		if r.Method != http.MethodPost {
			status = http.StatusMethodNotAllowed
		}
		w.WriteHeader(status)
		ch <- received{body: body, header: r.Header.Clone()}
	}))
	t.Cleanup(srv.Close)
	return srv, ch
}

// waitLines waits until out has n lines.
func waitLines(t *testing.T, out *syncBuffer, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(out.String(), "\n") < n {
		if time.Now().After(deadline) {
			t.Fatalf("want %d lines:\n%s", n, out)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func receive(t *testing.T, ch <-chan received) received {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the receiver got nothing")
		return received{}
	}
}

// newEventsServer serves GET /v1/events: each connection gets the next
// script; the last connection stays open until the client leaves.
func newEventsServer(t *testing.T, scripts ...string) (*httptest.Server, func() []string) {
	t.Helper()
	var (
		mu      sync.Mutex
		lastIDs []string
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n := len(lastIDs)
		lastIDs = append(lastIDs, r.Header.Get("Last-Event-ID"))
		mu.Unlock()
		if r.Header.Get("Accept") != "text/event-stream" {
			t.Errorf("Accept = %q", r.Header.Get("Accept"))
		}
		startSSE(w)
		if n < len(scripts) {
			writeSSE(w, scripts[n])
		}
		if n >= len(scripts)-1 {
			<-r.Context().Done()
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), lastIDs...)
	}
}

func TestListenForwardsSignedEvents(t *testing.T) {
	t.Parallel()
	secret, err := webhook.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	created, _ := sseWebhookEvent(5, "message_batch.created", "msgbatch_a", "")
	old := "id: 4\nevent: message_batch.ended\ndata: " + `{"type":"event","id":"evt_old","created_at":"2026-11-28T23:59:59.999999Z","data":{"type":"message_batch.ended","id":"msgbatch_old"}}` + "\n\n"
	canceling, cancelingData := sseWebhookEvent(6, "message_batch.canceling", "msgbatch_a", `,"processing_status":"canceling"`)
	ended, endedData := sseWebhookEvent(7, "message_batch.ended", "msgbatch_a", `,"processing_status":"ended","request_counts":{"processing":0,"succeeded":1,"errored":0,"canceled":2,"expired":0}`)
	// The first connection drops after event 6; the second resumes after it.
	events, lastIDs := newEventsServer(t,
		"retry: 10\n: keepalive\n\n"+old+sseProgress("msgbatch_a", 3, 0, 0)+created+canceling,
		sseProgress("msgbatch_a", 0, 1, 0)+ended,
	)
	receiver, got := newReceiver(t, http.StatusInternalServerError)

	stdout, stderr, stop := startCLI(t, "listen", "--forward-to", receiver.URL+"/hooks", "--secret", secret,
		"--events", "message_batch.canceling,message_batch.ended", "--since", "2026-11-29T00:00:00Z", "--base-url", events.URL)
	first, second := receive(t, got), receive(t, got)
	waitLines(t, stdout, 2)
	if err := stop(); err != nil {
		t.Fatalf("listen ended with %v\nstderr: %s", err, stderr)
	}
	select {
	case r := <-got:
		t.Errorf("a third event was forwarded: %s", r.body)
	default:
	}

	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		r        received
		data, id string
	}{{first, cancelingData, "evt_0006"}, {second, endedData, "evt_0007"}} {
		if string(tc.r.body) != tc.data {
			t.Errorf("event %d body = %s\nwant %s", i, tc.r.body, tc.data)
		}
		if err := wh.Verify(tc.r.body, tc.r.header); err != nil {
			t.Errorf("event %d: verify: %v (headers %v)", i, err, tc.r.header)
		}
		if h := tc.r.header; h.Get("webhook-id") != tc.id || h.Get("Content-Type") != "application/json" || h.Get("User-Agent") != "batchd-listen" {
			t.Errorf("event %d headers: %v", i, h)
		}
	}
	if ids := lastIDs(); len(ids) != 2 || ids[0] != "" || ids[1] != "6" {
		t.Errorf("Last-Event-IDs = %q, want a reconnection resuming after 6", ids)
	}

	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	want := []*regexp.Regexp{
		regexp.MustCompile(`^2026-11-29T10:00:06Z  message_batch\.canceling  msgbatch_a  → 500 \(\d+ms\)$`),
		regexp.MustCompile(`^2026-11-29T10:00:07Z  message_batch\.ended  msgbatch_a  → 204 \(\d+ms\)$`),
	}
	if len(lines) != len(want) {
		t.Fatalf("stdout:\n%s", stdout)
	}
	for i, re := range want {
		if !re.MatchString(lines[i]) {
			t.Errorf("line %d = %q, want %s", i, lines[i], re)
		}
	}
	if s := stderr.String(); strings.Contains(s, secret) || !strings.Contains(s, "Ready! Forwarding events to "+receiver.URL+"/hooks") {
		t.Errorf("stderr:\n%s", s)
	}
}

// TestListenGeneratedSecret: without --secret, listen signs with a fresh
// secret it prints once, and a receiver that is down does not stop it.
func TestListenGeneratedSecret(t *testing.T) {
	t.Parallel()
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()
	receiver, got := newReceiver(t)
	// By default only events from the start on are forwarded, not the
	// history the server replays.
	past := "id: 1\nevent: message_batch.ended\ndata: " + `{"type":"event","id":"evt_past","created_at":"` + time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano) + `","data":{"type":"message_batch.ended","id":"msgbatch_past"}}` + "\n\n"
	data1 := `{"type":"event","id":"evt_new","created_at":"` + time.Now().Add(time.Minute).UTC().Format(time.RFC3339Nano) + `","data":{"type":"message_batch.created","id":"msgbatch_b"}}`
	ev1 := "id: 2\nevent: message_batch.created\ndata: " + data1 + "\n\n"
	events, _ := newEventsServer(t, past+ev1)

	stdout, stderr, stop := startCLI(t, "listen", "--forward-to", receiver.URL, "--base-url", events.URL)
	r := receive(t, got)
	waitLines(t, stdout, 1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`secret is (whsec_\S+)`).FindStringSubmatch(stderr.String())
	if m == nil || strings.Count(stderr.String(), m[1]) != 1 {
		t.Fatalf("stderr:\n%s", stderr)
	}
	wh, err := standardwebhooks.NewWebhook(m[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify(r.body, r.header); err != nil || string(r.body) != data1 {
		t.Errorf("verify: %v, body %s", err, r.body)
	}
	if strings.Count(stdout.String(), "\n") != 1 || !strings.Contains(stdout.String(), "message_batch.created  msgbatch_b  → 204") {
		t.Errorf("stdout:\n%s", stdout)
	}

	// A receiver that is down: the failure is a line, and listening goes on.
	ev2, _ := sseWebhookEvent(2, "message_batch.ended", "msgbatch_c", "")
	events2, _ := newEventsServer(t, ev1+ev2)
	stdout, stderr, stop = startCLI(t, "listen", "--forward-to", downURL, "--since", "2000-01-01T00:00:00Z", "--base-url", events2.URL)
	waitLines(t, stdout, 2)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "msgbatch_b  → error: ") || !strings.Contains(lines[1], "msgbatch_c  → error: ") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
}

func TestListenNeedsEventStream(t *testing.T) {
	t.Parallel()
	fake := newFakeServer(t)
	_, _, err := runCLI(t, "", "listen", "--forward-to", "http://127.0.0.1:1/x", "--base-url", fake.URL())
	if err == nil || !strings.Contains(err.Error(), "listen needs a batchd server with an event stream") {
		t.Errorf("err = %v", err)
	}
	for _, args := range [][]string{
		{"listen"},
		{"listen", "--forward-to", "localhost:3000"},
		{"listen", "--forward-to", "http://localhost:3000", "--secret", "whsec_short"},
	} {
		if _, _, err := runCLI(t, "", append(args, "--base-url", fake.URL())...); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}
