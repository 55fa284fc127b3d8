package main

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// TestCrashRecovery kills a real `batchd serve` with SIGKILL in the middle
// of a batch, restarts it on the same data dir, and checks that every
// request ends with exactly one result and the counts equal the results.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const n = 400
	p := startServe(t, dir, "--sim-latency", "20ms", "--concurrency", "16")
	b := createBatch(t, p.URL, bodyReader(n, func(i int) string {
		if i%50 == 0 {
			return "[[sim fail=1]] retried " + fmt.Sprint(i)
		}
		return fmt.Sprint("hello ", i)
	}))
	// Wait until the batch is part done, so requests are in flight and
	// some results are written, then kill without warning.
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := getBatch(t, p.URL, b.ID)
		done := got.RequestCounts.Succeeded + got.RequestCounts.Errored
		if done >= n/4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch made no progress: %+v", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.kill(syscall.SIGKILL)

	p2 := startServe(t, dir, "--sim-latency", "1ms", "--concurrency", "16", "--retry-backoff", "10ms")
	end := waitEnded(t, p2.URL, b.ID, 60*time.Second)
	c := end.RequestCounts
	if c.Processing != 0 || c.Succeeded+c.Errored+c.Canceled+c.Expired != n {
		t.Fatalf("counts after restart do not add up to %d: %+v", n, c)
	}
	if c.Succeeded != n {
		t.Fatalf("want every request succeeded, got %+v", c)
	}
	res := results(t, p2.URL, b.ID)
	if len(res) != n {
		t.Fatalf("want %d distinct results, got %d", n, len(res))
	}
	for i := range n {
		id := fmt.Sprintf("req-%d", i)
		if got := res[id]; len(got) != 1 || got[0] != "succeeded" {
			t.Fatalf("%s: want exactly one succeeded result, got %v", id, got)
		}
	}
	// Usage is added in the settle's transaction: the crash lost none and
	// counted none twice.
	checkUsageRecount(t, p2.URL, b.ID)
}
