package api_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/api"
	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/sqlite"
)

// countingSource is the real store, counting the event reads.
type countingSource struct {
	*sqlite.Store
	lists atomic.Int64 // every event read
	own   atomic.Int64 // reads of one workspace: a stream's own history
}

func (c *countingSource) EventsList(ctx context.Context, p store.EventsListParams) ([]*store.Event, error) {
	c.lists.Add(1)
	if !p.AllWorkspaces {
		c.own.Add(1)
	}
	return c.Store.EventsList(ctx, p)
}

// TestStreamsShareOnePoller: with many idle streams open, the store is read
// for events by one poller, not once per stream and tick. Over a second an
// idle server reads events about once per tick whatever the streams; one
// poller per stream would read streams × ticks times.
func TestStreamsShareOnePoller(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "batchd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	src := &countingSource{Store: st}
	h := api.New(api.Config{Service: batch.NewService(st, batch.Config{}), Keys: st, Events: src})
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)

	const streams = 50
	for range streams {
		sctx, cancel := context.WithCancel(ctx)
		req, _ := http.NewRequestWithContext(sctx, "GET", hs.URL+"/v1/events", nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); res.Body.Close() })
		if res.StatusCode != http.StatusOK {
			t.Fatalf("stream: status %d", res.StatusCode)
		}
	}
	// Each stream first reads its (empty) history once.
	deadline := time.Now().Add(30 * time.Second)
	for src.own.Load() < streams {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d streams read their history", src.own.Load(), streams)
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := src.lists.Load()
	time.Sleep(time.Second) // the scenario is a span of idle time
	reads := src.lists.Load() - before
	// A second is four ticks; allow many more for a slow machine's
	// catch-up reads, far below one read per stream.
	if reads >= streams {
		t.Fatalf("%d event reads in a second with %d idle streams, want one poller's few", reads, streams)
	}
	t.Logf("%d event reads in a second with %d idle streams", reads, streams)
}
