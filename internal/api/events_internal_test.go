package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// TestBatchStreamResumedAfterItsEndCloses: a batch stream closes after
// message_batch.ended, and a client that reconnects after seeing it — an
// EventSource does so by itself when the server closes, sending the ended
// event's id as Last-Event-ID — gets a stream that closes too, not one
// that stays open for good, holding one of the workspace's streams, with
// nothing left to carry.
func TestBatchStreamResumedAfterItsEndCloses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, a := newInternalAPI(t)
	hs := httptest.NewServer(a)
	t.Cleanup(hs.Close)

	now := time.Now()
	b, err := st.BatchInsert(ctx, store.BatchInsertParams{ID: "msgbatch_ended", Workspace: DefaultWorkspace, CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: b.Seq, Requests: []store.NewRequest{{CustomID: "r", Params: json.RawMessage(`{}`)}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: b.Seq, Total: 1}); err != nil {
		t.Fatal(err)
	}
	if ch, err := st.BatchCancel(ctx, store.BatchCancelParams{Workspace: DefaultWorkspace, ID: b.ID, Now: now}); err != nil || !ch.Ended {
		t.Fatalf("cancel: %+v %v", ch, err)
	}
	events, err := st.EventsList(ctx, store.EventsListParams{Workspace: DefaultWorkspace, BatchID: b.ID, Limit: 10})
	if err != nil || len(events) == 0 || events[len(events)-1].Type != store.EventBatchEnded {
		t.Fatalf("events %v %v", events, err)
	}
	endedSeq := events[len(events)-1].Seq

	for _, lastID := range []string{"", strconv.FormatInt(endedSeq, 10)} {
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		req, _ := http.NewRequestWithContext(sctx, "GET", hs.URL+"/v1/messages/batches/"+b.ID+"/events", nil)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		body, err := io.ReadAll(res.Body) // to the end of the stream
		res.Body.Close()
		cancel()
		if errors.Is(sctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("Last-Event-ID %q: the stream of an ended batch stayed open (got %q)", lastID, body)
		}
		if err != nil {
			t.Fatalf("Last-Event-ID %q: %v", lastID, err)
		}
		if got := strings.Count(string(body), "event: message_batch.ended"); (lastID == "") != (got == 1) {
			t.Fatalf("Last-Event-ID %q: %d ended events in %q", lastID, got, body)
		}
	}
}
