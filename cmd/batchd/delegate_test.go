package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDelegationBetweenTwoProcesses runs two real `batchd serve` processes:
// one is the upstream (simulator), the other delegates to it through an
// anthropic-batch backend. The delegating one is killed with SIGKILL while
// its upstream batches run, and restarted: every request ends with exactly
// one result, and the upstream received each request exactly once.
func TestDelegationBetweenTwoProcesses(t *testing.T) {
	// Not parallel: it sets an environment variable for the child process.
	up := startServe(t, t.TempDir(), "--sim-latency", "300ms", "--concurrency", "2")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "batchd.toml")
	body := fmt.Sprintf(`[[backends]]
name = "upstream"
kind = "anthropic-batch"
base_url = %q
api_key_env = "BATCHD_TEST_UPSTREAM_KEY"
max_batch_requests = 4
poll_interval = "50ms"
poll_max_interval = "200ms"

[[routes]]
model = "*"
backend = "upstream"
`, up.URL)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BATCHD_TEST_UPSTREAM_KEY", "any-key-the-open-upstream-accepts")
	data := filepath.Join(dir, "data")
	p := startServe(t, data, "--config", cfg)

	const n = 10
	b := createBatch(t, p.URL, bodyReader(n, func(i int) string { return fmt.Sprint("delegated ", i) }))
	// Wait until all three upstream batches exist and batchd has recorded
	// their ids (it logs each after recording it), then kill without
	// warning. A kill between the upstream's answer and the local record
	// is the documented crash window, in which requests are sent twice.
	deadline := time.Now().Add(20 * time.Second)
	for upstreamRequests(t, up.URL) < n || strings.Count(p.Logs(), "created upstream batch") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("upstream batches not created; upstream holds %d requests", upstreamRequests(t, up.URL))
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.kill(syscall.SIGKILL)

	p2 := startServe(t, data, "--config", cfg)
	end := waitEnded(t, p2.URL, b.ID, 60*time.Second)
	if end.RequestCounts.Succeeded != n {
		t.Fatalf("counts after restart %+v", end.RequestCounts)
	}
	res := results(t, p2.URL, b.ID)
	for i := range n {
		if got := res[fmt.Sprintf("req-%d", i)]; len(got) != 1 || got[0] != "succeeded" {
			t.Fatalf("req-%d: results %v", i, got)
		}
	}
	if got := upstreamRequests(t, up.URL); got != n {
		t.Fatalf("the upstream received %d requests, want each of the %d exactly once", got, n)
	}
}

// upstreamRequests sums the requests of every batch the upstream holds.
func upstreamRequests(t *testing.T, url string) int64 {
	t.Helper()
	res, err := http.Get(url + "/v1/messages/batches?limit=1000")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var page struct {
		Data []batchJSON `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&page); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, b := range page.Data {
		c := b.RequestCounts
		total += c.Processing + c.Succeeded + c.Errored + c.Canceled + c.Expired
	}
	return total
}
