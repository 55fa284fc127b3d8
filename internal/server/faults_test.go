package server_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/config"
	"github.com/batchd/batchd/internal/server"
)

// faultyUpstream is an Anthropic Messages API that misbehaves as the prompt
// asks: the first call of "once-*" prompts fails that way, "always-*"
// prompts fail every time.
type faultyUpstream struct {
	mu   sync.Mutex
	seen map[string]int
}

func (f *faultyUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	mode := ""
	if i := bytes.Index(body, []byte("fault:")); i >= 0 {
		rest := body[i+len("fault:"):]
		mode = string(rest[:bytes.IndexByte(rest, '"')])
	}
	f.mu.Lock()
	f.seen[mode]++
	n := f.seen[mode]
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fail := strings.HasPrefix(mode, "always-") || (strings.HasPrefix(mode, "once-") && n == 1)
	if fail {
		switch strings.SplitN(mode, "-", 2)[1] {
		case "429":
			w.Header().Set("retry-after", "1")
			w.WriteHeader(429)
			fmt.Fprint(w, `{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}`)
			return
		case "529":
			w.WriteHeader(529)
			fmt.Fprint(w, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)
			return
		case "500":
			w.WriteHeader(500)
			fmt.Fprint(w, `{"type":"error","error":{"type":"api_error","message":"boom"}}`)
			return
		case "reset":
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		case "slow":
			time.Sleep(400 * time.Millisecond)
		case "badjson":
			fmt.Fprint(w, `{"id":"msg_1","type":"mess`)
			return
		case "notmessage":
			fmt.Fprint(w, `{"hello":"world"}`)
			return
		}
	}
	fmt.Fprint(w, `{"id":"msg_ok","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}`)
}

// TestFaultInjectingUpstream runs one batch whose requests meet every kind
// of upstream failure, with the upstream down when the batch starts: every
// request ends succeeded (transient faults) or errored with a clear message
// (faults that persist), nothing hangs, nothing is lost, and the upstream
// key appears in no log line.
func TestFaultInjectingUpstream(t *testing.T) {
	t.Parallel()
	// Reserve a port, leave it closed: the upstream is down at first.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ts := newTestServer(t, withConfig(func(c *server.Config) {
		c.Backends = &config.Config{
			Backends: []config.Backend{{Name: "up", Kind: config.KindAnthropic, BaseURL: "http://" + addr, APIKeyEnv: "K",
				Timeout: config.Duration{Duration: 200 * time.Millisecond}, Concurrency: 8}},
			Routes: []config.Route{{Model: "*", Backend: "up"}},
		}
		c.Getenv = func(string) string { return upstreamKey }
		c.Logger = logger
		// Attempts spread over about a second: long enough for the upstream
		// to come up, short enough for a test.
		c.Dispatch.MaxAttempts = 5
		c.Dispatch.BackoffBase = 100 * time.Millisecond
		c.Dispatch.BackoffMax = 400 * time.Millisecond
	}))
	modes := []string{"none", "once-429", "once-529", "once-500", "once-reset", "once-slow", "once-badjson", "once-notmessage",
		"always-529", "always-slow", "always-badjson", "always-notmessage"}
	var reqs []rawRequest
	for _, m := range modes {
		reqs = append(reqs, rawRequest{CustomID: m, Params: map[string]any{"model": "claude-x", "max_tokens": 8,
			"messages": []any{map[string]any{"role": "user", "content": "fault:" + m}}}})
	}
	b := createRaw(t, ts.URL, createBody(t, reqs...))

	// The upstream is down for the first attempts, then comes up: the
	// scenario is a span of time, so this one waits.
	time.Sleep(150 * time.Millisecond)
	up := &faultyUpstream{seen: map[string]int{}}
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s was taken meanwhile: %v", addr, err)
	}
	hs := &http.Server{Handler: up}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	waitEndedRaw(t, ts.URL, b.ID, 60*time.Second)
	res := resultsRaw(t, ts.URL, b.ID, "")
	if len(res) != len(modes) {
		t.Fatalf("%d results for %d requests", len(res), len(modes))
	}
	for _, m := range modes {
		r := res[m]
		if strings.HasPrefix(m, "always-") {
			if r.Result.Type != "errored" || r.Result.Error == nil || r.Result.Error.Error.Message == "" {
				t.Errorf("%s: want errored with a message, got %+v", m, r.Result)
				continue
			}
			t.Logf("%s: %s: %s", m, r.Result.Error.Error.Type, r.Result.Error.Error.Message)
			continue
		}
		if r.Result.Type != "succeeded" {
			t.Errorf("%s: want succeeded after a transient fault, got %+v", m, r.Result)
		}
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), upstreamKey) {
		t.Error("the upstream key appears in the logs")
	}
}
