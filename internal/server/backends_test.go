package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/config"
	"github.com/batchd/batchd/internal/server"
)

const upstreamKey = "sk-ant-upstream-secret-42"

// fakeAnthropic is an upstream Messages API: it echoes the model, fails on
// cue (the prompt says "fail-400" or "flaky"), and records what it saw.
type fakeAnthropic struct {
	flaky     atomic.Int64
	mu        sync.Mutex
	keysSeen  []string
	betasSeen []string
}

func (f *fakeAnthropic) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.keysSeen = append(f.keysSeen, r.Header.Get("x-api-key"))
	f.betasSeen = append(f.betasSeen, r.Header.Get("anthropic-beta"))
	f.mu.Unlock()
	var p struct {
		Model string `json:"model"`
	}
	json.Unmarshal(body, &p)
	w.Header().Set("Content-Type", "application/json")
	switch {
	case bytes.Contains(body, []byte("fail-400")):
		w.WriteHeader(400)
		fmt.Fprint(w, `{"type":"error","error":{"type":"invalid_request_error","message":"messages.0: upstream says no"}}`)
		return
	case bytes.Contains(body, []byte("flaky")) && f.flaky.Add(1) == 1:
		w.Header().Set("retry-after-ms", "10")
		w.WriteHeader(529)
		fmt.Fprint(w, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)
		return
	}
	fmt.Fprintf(w, `{"id":"msg_up","type":"message","role":"assistant","model":%q,"content":[{"type":"text","text":"from upstream"},{"type":"thinking","thinking":"hm","signature":"s"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":2},"extra_field":true}`, p.Model)
}

// fakeOpenAI is a Chat Completions server such as vLLM.
func fakeOpenAI(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model string `json:"model"`
	}
	json.NewDecoder(r.Body).Decode(&req)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":"cmpl-1","object":"chat.completion","model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"from vllm"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":3}}`, req.Model)
}

// TestRoutingToRealBackends: models go to the backend their route names,
// with the server's upstream key; upstream errors become errored results or
// retries; a model no route serves is errored naming it; GET /v1/backends
// lists everything but the key; the key is in no log line.
func TestRoutingToRealBackends(t *testing.T) {
	t.Parallel()
	up := &fakeAnthropic{}
	anthropicSrv := httptest.NewServer(up)
	t.Cleanup(anthropicSrv.Close)
	vllm := httptest.NewServer(http.HandlerFunc(fakeOpenAI))
	t.Cleanup(vllm.Close)

	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := &config.Config{
		Backends: []config.Backend{
			{Name: "claude", Kind: config.KindAnthropic, BaseURL: anthropicSrv.URL, APIKeyEnv: "UPSTREAM_KEY", Concurrency: 4, RequestsPerMinute: 6000},
			{Name: "vllm", Kind: config.KindOpenAI, BaseURL: vllm.URL + "/v1"},
			{Name: "sim", Kind: config.KindSim},
		},
		Routes: []config.Route{{Model: "claude-*", Backend: "claude"}, {Model: "llama-*", Backend: "vllm"}, {Model: "gpt-*", Backend: "sim"}},
	}
	ts := newTestServer(t, withConfig(func(c *server.Config) {
		c.Backends = cfg
		c.Getenv = func(k string) string { return map[string]string{"UPSTREAM_KEY": upstreamKey}[k] }
		c.Logger = logger
	}))
	req := func(id, model, prompt string) rawRequest {
		return rawRequest{CustomID: id, Params: map[string]any{"model": model, "max_tokens": 16,
			"messages": []any{map[string]any{"role": "user", "content": prompt}}}}
	}
	b := createRaw(t, ts.URL, createBody(t,
		req("claude", "claude-x", "hello"),
		req("claude-bad", "claude-x", "fail-400"),
		req("claude-flaky", "claude-x", "flaky"),
		req("llama", "llama-3", "hello"),
		req("gpt", "gpt-4o", "hello"),
		req("nomatch", "mistral-7b", "hello"),
	), "x-api-key", "client-key-must-not-go-upstream",
		"anthropic-beta", "feature-a-2025-01-01,message-batches-2024-09-24", "anthropic-beta", "feature-b-2026-02-02")
	waitEndedRaw(t, ts.URL, b.ID, 20*time.Second)
	res := resultsRaw(t, ts.URL, b.ID, "")

	check := func(id, typ, contains string) {
		t.Helper()
		r := res[id]
		got := string(r.Result.Message)
		if r.Result.Error != nil {
			got = r.Result.Error.Error.Type + ": " + r.Result.Error.Error.Message
		}
		if r.Result.Type != typ || !strings.Contains(got, contains) {
			t.Errorf("%s: %s %s, want %s containing %q", id, r.Result.Type, got, typ, contains)
		}
	}
	check("claude", "succeeded", `"extra_field":true`) // stored as it came
	check("claude", "succeeded", `"type":"thinking"`)
	check("claude-bad", "errored", "invalid_request_error: messages.0: upstream says no")
	check("claude-flaky", "succeeded", "from upstream")
	check("llama", "succeeded", "from vllm")
	check("gpt", "succeeded", "Simulated reply")
	check("nomatch", "errored", `invalid_request_error: model: no backend serves "mistral-7b"`)

	up.mu.Lock()
	for _, k := range up.keysSeen {
		if k != upstreamKey {
			t.Errorf("upstream got key %q, want the server's upstream key", k)
		}
	}
	// The create's betas, from one comma-joined and one separate header,
	// reach the upstream with each request; the batches beta does not.
	for _, b := range up.betasSeen {
		if b != "feature-a-2025-01-01,feature-b-2026-02-02" {
			t.Errorf("upstream got anthropic-beta %q", b)
		}
	}
	up.mu.Unlock()

	r := do(t, "GET", ts.URL+"/v1/backends", nil)
	var list struct {
		Data []struct {
			Name   string   `json:"name"`
			Kind   string   `json:"kind"`
			Models []string `json:"models"`
			Limits struct {
				RequestsPerMinute int `json:"requests_per_minute"`
			} `json:"limits"`
			Throttled int64 `json:"throttled"`
		} `json:"data"`
	}
	if err := json.Unmarshal(r.Body, &list); err != nil || len(list.Data) != 3 {
		t.Fatalf("GET /v1/backends: %v %s", err, r.Body)
	}
	if d := list.Data[0]; d.Name != "claude" || d.Kind != "anthropic" || fmt.Sprint(d.Models) != "[claude-*]" || d.Limits.RequestsPerMinute != 6000 || d.Throttled != 1 {
		t.Errorf("claude backend listed as %+v", d)
	}
	if bytes.Contains(r.Body, []byte(upstreamKey)) {
		t.Error("GET /v1/backends shows the upstream key")
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), upstreamKey) {
		t.Error("the upstream key appears in the logs")
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
