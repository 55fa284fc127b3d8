package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/config"
	"github.com/batchd/batchd/internal/server"
)

// gatedUpstream is a real Messages API upstream whose calls block until the
// test opens the gate. It tells the test when each call arrives, so a test
// knows exactly what batchd has sent and what it holds unsent.
type gatedUpstream struct {
	URL     string
	started chan string // the prompt of each call, on arrival
	open    chan struct{}
	once    sync.Once
	calls   atomic.Int64
}

func newGatedUpstream(t *testing.T) *gatedUpstream {
	t.Helper()
	g := &gatedUpstream{started: make(chan string, 1024), open: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var p struct {
			Model    string `json:"model"`
			Messages []struct {
				Content json.RawMessage `json:"content"`
			} `json:"messages"`
		}
		json.Unmarshal(body, &p)
		g.calls.Add(1)
		if len(p.Messages) > 0 {
			g.started <- promptText(p.Messages[0].Content)
		}
		select {
		case <-g.open:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"msg_gate","type":"message","role":"assistant","model":%q,"content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}`, p.Model)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(g.release) // runs first: no handler holds the close
	g.URL = srv.URL
	return g
}

// promptText is the text of a message's content, a string or text blocks.
func promptText(content json.RawMessage) string {
	var s string
	if json.Unmarshal(content, &s) == nil {
		return s
	}
	var blocks []struct {
		Text string `json:"text"`
	}
	json.Unmarshal(content, &blocks)
	for _, b := range blocks {
		s += b.Text
	}
	return s
}

// release opens the gate, once: every call answers.
func (g *gatedUpstream) release() { g.once.Do(func() { close(g.open) }) }

// waitStarted waits for n calls to arrive and returns their prompts.
func (g *gatedUpstream) waitStarted(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	for len(got) < n {
		select {
		case p := <-g.started:
			got = append(got, p)
		case <-time.After(20 * time.Second):
			t.Fatalf("%d calls reached the upstream, want %d", len(got), n)
		}
	}
	return got
}

// withGatedUpstream routes every model to g with the given concurrency.
func withGatedUpstream(g *gatedUpstream, concurrency int) serverOpt {
	return withConfig(func(c *server.Config) {
		c.Backends = &config.Config{
			Backends: []config.Backend{{Name: "gate", Kind: config.KindAnthropic, BaseURL: g.URL, APIKeyEnv: "GATE_KEY", Concurrency: concurrency}},
			Routes:   []config.Route{{Model: "*", Backend: "gate"}},
		}
		c.Getenv = func(string) string { return "sk-gate" }
		c.Dispatch.Concurrency = concurrency
	})
}

// testClock is an injectable clock that moves only when told.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
