package server_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"

	"github.com/batchd/batchd/internal/server"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/postgres/pgtest"
)

// clusterLease is the lease of the cluster tests' servers: short, so that
// a takeover happens within the test, and long enough for heartbeats every
// third of it on a loaded machine.
const clusterLease = 3 * time.Second

// clusterURL is a database URL of a fresh PostgreSQL schema that several
// test servers share, as the processes of a cluster share one database.
func clusterURL(t *testing.T) string {
	t.Helper()
	return pgtest.URL(t) + "&search_path=" + pgtest.Schema(t)
}

// clusterServer is a test server of the cluster at url.
func clusterServer(t *testing.T, url string, f func(*server.Config)) *testServer {
	t.Helper()
	return newTestServer(t, withConfig(func(c *server.Config) {
		c.DatabaseURL = url
		c.Webhooks.Key = clusterKey // one key for every process of a cluster
		c.Lease = clusterLease
		c.Dispatch.Lease = clusterLease
		if f != nil {
			f(c)
		}
	}))
}

// clusterKey is the webhook key every server of a test cluster shares.
var clusterKey = []byte("batchd-test-cluster-webhook-key!")

func requests(n int, prefix string) []anthropic.MessageBatchNewParamsRequest {
	reqs := make([]anthropic.MessageBatchNewParamsRequest, n)
	for i := range reqs {
		reqs[i] = sdkRequest(fmt.Sprint(prefix, i), "hello", 16)
	}
	return reqs
}

// TestClusterStartLeavesOthersWorkAlone: a second process starting on the
// database of a running one takes none of the requests the first runs.
// Before, every start returned every running request to pending
// (RequestsRescue with All), and the second process ran them again.
func TestClusterStartLeavesOthersWorkAlone(t *testing.T) {
	t.Parallel()
	url := clusterURL(t)
	// A runs its requests for an hour, holding as many as it may, with
	// no room to claim more.
	a := clusterServer(t, url, func(c *server.Config) {
		c.SimLatency = time.Hour
		c.Dispatch.Concurrency, c.Dispatch.ClaimAhead = 4, 1 // 4 in flight, 4 ahead: no room for more
	})
	held := sdkBatch(t, a.Client, requests(8, "a")...)
	ctx := context.Background()
	waitFor(t, 30*time.Second, "A to claim every request", func() bool {
		due, err := a.Srv.Store.RequestNextDue(ctx, "sim")
		return err == nil && due.IsZero()
	})

	b := clusterServer(t, url, nil)
	// B works: it runs a batch of its own to the end...
	waitEnded(t, b.Client, sdkBatch(t, b.Client, requests(3, "b")...).ID, 30*time.Second)
	// ...and left A's alone: none went back to pending, none ran twice.
	if due, err := a.Srv.Store.RequestNextDue(ctx, "sim"); err != nil || !due.IsZero() {
		t.Fatalf("A's requests were returned to pending (next due %v, %v)", due, err)
	}
	got, err := a.Client.Messages.Batches.Get(ctx, held.ID, anthropic.MessageBatchGetParams{})
	if err != nil {
		t.Fatal(err)
	}
	if c := got.RequestCounts; c.Processing != 8 || c.Succeeded != 0 {
		t.Fatalf("A's batch after B started: %+v, want all 8 still processing", c)
	}
	if _, leads := b.Srv.Leader.Lead(ctx); leads {
		t.Fatal("B leads while A, the first, is alive")
	}
}

// TestClusterLeaderDiesOtherSweeps: the leader stops without releasing its
// lease (as if killed); the other process takes over within the lease, in
// the next term, and expires a batch that expired meanwhile.
func TestClusterLeaderDiesOtherSweeps(t *testing.T) {
	t.Parallel()
	url := clusterURL(t)
	ctx := context.Background()
	a := clusterServer(t, url, nil)
	aLead, ok := a.Srv.Leader.Lead(ctx)
	if !ok {
		t.Fatal("the first server does not lead")
	}
	// B holds what it claims for an hour, one at a time: the rest of its
	// batch stays pending until the expiry sweep settles it.
	b := clusterServer(t, url, func(c *server.Config) {
		c.SimLatency = time.Hour
		c.Dispatch.Concurrency, c.Dispatch.ClaimAhead = 1, 1 // 1 in flight, 1 ahead
		c.Batch.ExpireAfter = 2 * time.Second
	})
	if _, leads := b.Srv.Leader.Lead(ctx); leads {
		t.Fatal("two leaders")
	}
	// A dies: its parts stop, its store closes, its lease stays.
	for _, d := range a.Srv.Delegators {
		d.Stop(ctx)
	}
	a.Srv.Dispatcher.Stop(ctx)
	a.Srv.Deliverer.Stop(ctx)
	a.Srv.Store.Close()

	bt := sdkBatch(t, b.Client, requests(5, "r")...)
	var got *anthropic.MessageBatch
	waitFor(t, 10*clusterLease, "B to expire the batch", func() bool {
		var err error
		got, err = b.Client.Messages.Batches.Get(ctx, bt.ID, anthropic.MessageBatchGetParams{})
		return err == nil && got.RequestCounts.Expired >= 3
	})
	if c := got.RequestCounts; c.Expired+c.Processing != 5 || c.Succeeded != 0 {
		t.Fatalf("counts %+v", c)
	}
	bLead, ok := b.Srv.Leader.Lead(ctx)
	if !ok || bLead.Term != aLead.Term+1 {
		t.Fatalf("B's lead %+v (%v), want term %d", bLead, ok, aLead.Term+1)
	}
	// The dead leader's term is refused in SQL.
	if _, err := b.Srv.Store.BatchesExpire(ctx, store.BatchesExpireParams{Now: time.Now(), Lead: aLead}); err == nil {
		t.Fatal("the dead leader's term still expires batches")
	}
}
