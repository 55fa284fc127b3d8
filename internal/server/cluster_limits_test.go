package server_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/batchd/batchd/internal/backend/backendtest"
	"github.com/batchd/batchd/internal/config"
	"github.com/batchd/batchd/internal/server"
)

// withCappedUpstream routes every model to u through an anthropic backend
// whose ceiling is the server's --concurrency, c; key is the process's API
// key, so that the upstream tells the processes apart.
func withCappedUpstream(u *backendtest.Upstream, c int, key string) func(*server.Config) {
	return func(cfg *server.Config) {
		cfg.Backends = &config.Config{
			Backends: []config.Backend{{Name: "up", Kind: config.KindAnthropic, BaseURL: u.URL, APIKeyEnv: "UP_KEY"}},
			Routes:   []config.Route{{Model: "*", Backend: "up"}},
		}
		cfg.Getenv = func(string) string { return key }
		cfg.Dispatch.Concurrency = c
	}
}

// TestClusterConcurrencyHoldsAcrossProcesses: three processes, each
// configured with concurrency C, share one batch against an upstream
// capped at C: together they never have more than C calls in flight.
// Before, each process had C of its own and the upstream saw up to 3·C.
func TestClusterConcurrencyHoldsAcrossProcesses(t *testing.T) {
	t.Parallel()
	const c, n = 8, 400
	up := backendtest.NewUpstream(t, c, 40*time.Millisecond)
	url := clusterURL(t)
	var procs []*testServer
	for _, key := range []string{"sk-a", "sk-b", "sk-c"} {
		procs = append(procs, clusterServer(t, url, withCappedUpstream(up, c, key)))
	}
	bt := sdkBatch(t, procs[0].Client, requests(n, "r")...)
	got := waitEnded(t, procs[1].Client, bt.ID, 120*time.Second)
	if rc := got.RequestCounts; rc.Succeeded != n {
		t.Fatalf("counts %+v, want %d succeeded", rc, n)
	}
	t.Logf("peak %d in flight (cap %d), %d throttled, calls by process %v", up.Peak(), c, up.Rejected(), up.ByKey())
	if p := up.Peak(); p > c {
		t.Fatalf("the upstream saw %d calls in flight from the cluster, above its concurrency %d", p, c)
	}
}

// TestClusterDeadProcessShareGoesToOthers: the limit splits 3, 3, 2
// between three processes; one dies without giving its share back, and
// once its lease lapses the two others share the limit, 4 and 4.
func TestClusterDeadProcessShareGoesToOthers(t *testing.T) {
	t.Parallel()
	const c = 8
	up := backendtest.NewUpstream(t, c, time.Millisecond)
	url := clusterURL(t)
	var procs []*testServer
	for _, key := range []string{"sk-a", "sk-b", "sk-c"} {
		procs = append(procs, clusterServer(t, url, withCappedUpstream(up, c, key)))
	}
	shares := func(ps []*testServer) []int {
		var out []int
		for _, p := range ps {
			s, _ := p.Srv.Shares.Share("up")
			out = append(out, s.Concurrency)
		}
		return out
	}
	settled := func(ps []*testServer, want int) bool {
		sum := 0
		for _, s := range shares(ps) {
			if s < want || s > want+1 {
				return false
			}
			sum += s
		}
		return sum == c
	}
	waitFor(t, 10*clusterLease, "the limit to split between three", func() bool { return settled(procs, c/3) })
	// The first dies: its parts stop, its store closes, its shares stay
	// in the table until their lease lapses.
	ctx := context.Background()
	dead := procs[0].Srv
	dead.Dispatcher.Stop(ctx)
	dead.Deliverer.Stop(ctx)
	dead.Store.Close()
	waitFor(t, 10*clusterLease, "the two others to take the dead one's share", func() bool { return settled(procs[1:], c/2) })
	t.Logf("shares after the death: %v", shares(procs[1:]))
	// They run a batch within the limit.
	bt := sdkBatch(t, procs[1].Client, requests(50, "r")...)
	if got := waitEnded(t, procs[2].Client, bt.ID, 60*time.Second); got.RequestCounts.Succeeded != 50 {
		t.Fatalf("counts %+v", got.RequestCounts)
	}
	if p := up.Peak(); p > c {
		t.Fatalf("peak %d in flight above %d", p, c)
	}
}

// TestClusterWorkspaceCapAndIdempotencyAcrossProcesses: the cap on a
// workspace's batches in progress and an Idempotency-Key hold for creates
// racing through two processes (the PostgreSQL driver's advisory locks).
func TestClusterWorkspaceCapAndIdempotencyAcrossProcesses(t *testing.T) {
	t.Parallel()
	const maxInProgress = 5
	url := clusterURL(t)
	var procs []*testServer
	for range 2 {
		procs = append(procs, newTestServer(t, withoutDispatcher(), withConfig(func(c *server.Config) {
			c.DatabaseURL, c.Webhooks.Key = url, clusterKey
			c.Lease, c.Dispatch.Lease = clusterLease, clusterLease
			c.Batch.MaxInProgress = maxInProgress
		})))
	}
	ctx := context.Background()
	race := func(n int, fn func(i int, p *testServer)) {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() { <-start; fn(i, procs[i%2]) })
		}
		close(start)
		wg.Wait()
	}

	// One Idempotency-Key, one body, sent through both at once: one
	// batch is made, and every answer that is not "still running, retry"
	// names it.
	params := anthropic.MessageBatchNewParams{Requests: requests(3, "idem")}
	var mu sync.Mutex
	ids := map[string]int{}
	race(10, func(i int, p *testServer) {
		b, err := p.Client.Messages.Batches.New(ctx, params, option.WithHeader("Idempotency-Key", "same"))
		if err == nil {
			mu.Lock()
			ids[b.ID]++
			mu.Unlock()
		}
	})
	for _, p := range procs { // once the first has finished, every resend gets it
		b, err := p.Client.Messages.Batches.New(ctx, params, option.WithHeader("Idempotency-Key", "same"))
		if err != nil {
			t.Fatalf("resend after the race: %v", err)
		}
		ids[b.ID]++
	}
	if len(ids) != 1 {
		t.Fatalf("one Idempotency-Key made %d batches through two processes: %v", len(ids), ids)
	}

	// The cap: the idempotent batch is in progress; 20 creates race for
	// the rest of it.
	var created atomic.Int64
	race(20, func(i int, p *testServer) {
		if _, err := p.Client.Messages.Batches.New(ctx, anthropic.MessageBatchNewParams{Requests: requests(1, fmt.Sprint("cap", i))}); err == nil {
			created.Add(1)
		}
	})
	if created.Load() != maxInProgress-1 {
		t.Fatalf("%d batches created through two processes beside the first, want %d (the cap %d)", created.Load(), maxInProgress-1, maxInProgress)
	}
}
