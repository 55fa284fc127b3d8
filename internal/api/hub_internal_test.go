package api

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/sqlite"
)

// newInternalAPI is an API over a fresh SQLite store, for tests that reach
// into its parts before serving it.
func newInternalAPI(t *testing.T) (*sqlite.Store, *API) {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "batchd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, New(Config{Service: batch.NewService(st, batch.Config{}), Keys: st, Events: st})
}

// TestStreamThatFallsBehindMissesNothing: a stream whose queue overflows
// (here: more than one event waiting) reads what was dropped from the store
// and still carries every event once, in order.
func TestStreamThatFallsBehindMissesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, a := newInternalAPI(t)
	a.hub.queueMax = 1
	hs := httptest.NewServer(a)
	t.Cleanup(hs.Close)
	sctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(sctx, "GET", hs.URL+"/v1/events", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()

	// Written straight to the store, so nothing wakes the poller: its next
	// tick finds them all and overflows the queue.
	const n = 20
	now := time.Now()
	for i := range n {
		b, err := st.BatchInsert(ctx, store.BatchInsertParams{ID: fmt.Sprintf("msgbatch_lag%02d", i), Workspace: DefaultWorkspace, CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: b.Seq}); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan []string)
	go func() {
		var got []string
		sc := bufio.NewScanner(res.Body)
		id := ""
		for sc.Scan() && len(got) < n {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				id = line[4:]
			case strings.HasPrefix(line, "event: message_batch.created"):
				got = append(got, id)
			}
		}
		done <- got
	}()
	var got []string
	select {
	case got = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the stream did not carry every event")
	}
	last := int64(0)
	for _, id := range got {
		seq, _ := strconv.ParseInt(id, 10, 64)
		if seq <= last {
			t.Fatalf("events %v: out of order or repeated", got)
		}
		last = seq
	}
	if len(got) != n {
		t.Fatalf("%d events, want %d", len(got), n)
	}
}
