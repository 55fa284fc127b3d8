package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/server"
)

// shiftClock is a server clock that reads the real time moved back by an
// offset the test changes, so that events can be stamped in the past.
type shiftClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *shiftClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(-c.offset)
}

func (c *shiftClock) set(d time.Duration) {
	c.mu.Lock()
	c.offset = d
	c.mu.Unlock()
}

// startRealServer runs a real batchd (SQLite, dispatcher, simulator, API)
// behind an httptest listener.
func startRealServer(t *testing.T, now func() time.Time) string {
	t.Helper()
	ctx := context.Background()
	srv, err := server.Open(ctx, server.Config{DataDir: t.TempDir(), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		srv.Close(ctx)
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
	})
	return hs.URL
}

// createEnded creates a one-request batch on a real server and waits until
// it has ended.
func createEnded(t *testing.T, url, customID string) string {
	t.Helper()
	body := fmt.Sprintf(`{"requests":[{"custom_id":%q,"params":{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}}]}`, customID)
	call := func(method, path string, body []byte) map[string]any {
		t.Helper()
		req, _ := http.NewRequest(method, url+path, bytes.NewReader(body))
		req.Header.Set("x-api-key", "test")
		req.Header.Set("anthropic-version", "2023-06-01")
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(res.Body).Decode(&out); err != nil || res.StatusCode != 200 {
			t.Fatalf("%s %s: %d %v %v", method, path, res.StatusCode, out, err)
		}
		return out
	}
	id := call("POST", "/v1/messages/batches", []byte(body))["id"].(string)
	deadline := time.Now().Add(30 * time.Second)
	for call("GET", "/v1/messages/batches/"+id, nil)["processing_status"] != "ended" {
		if time.Now().After(deadline) {
			t.Fatalf("batch %s did not end", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return id
}

// TestListenSinceReplaysFromRealServer: against a real batchd, listen
// --since 10m forwards the events of the last ten minutes, which happened
// before listen started, and none older.
func TestListenSinceReplaysFromRealServer(t *testing.T) {
	t.Parallel()
	clock := &shiftClock{offset: 2 * time.Hour}
	url := startRealServer(t, clock.Now)
	old := createEnded(t, url, "old")
	clock.set(5 * time.Minute)
	recent := createEnded(t, url, "recent")
	clock.set(0)

	receiver, got := newReceiver(t)
	stdout, stderr, stop := startCLI(t, "listen", "--forward-to", receiver.URL, "--since", "10m", "--base-url", url)
	var types []string
	for range 2 {
		r := receive(t, got)
		var env struct {
			Data struct {
				Type string `json:"type"`
				ID   string `json:"id"`
			} `json:"data"`
		}
		if err := json.Unmarshal(r.body, &env); err != nil {
			t.Fatalf("forwarded %s: %v", r.body, err)
		}
		if env.Data.ID != recent {
			t.Errorf("forwarded an event of %s, want only %s's (old batch %s)", env.Data.ID, recent, old)
		}
		types = append(types, env.Data.Type)
	}
	if err := stop(); err != nil {
		t.Fatalf("listen: %v\nstderr: %s", err, stderr)
	}
	if strings.Join(types, " ") != "message_batch.created message_batch.ended" {
		t.Errorf("forwarded %v\nstdout: %s", types, stdout)
	}
	select {
	case r := <-got:
		t.Errorf("a third event was forwarded: %s", r.body)
	default:
	}
}
