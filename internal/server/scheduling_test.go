package server_test

// How batches move: fairness between a huge batch and a small one behind
// it, live request_counts, server-side retry of failures, and retention.

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/server"
)

func TestFairnessSmallBatchBehindHugeOne(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withConfig(func(c *server.Config) {
		c.SimLatency = 20 * time.Millisecond
		c.Dispatch.Concurrency = 16
	}))
	const bigN = 3000
	big := createRaw(t, ts.URL, createBody(t, nRequests("big", bigN, "bulk work")...))
	small := createRaw(t, ts.URL, createBody(t, nRequests("small", 10, "urgent work")...))

	var bigAtEnd wireBatch
	waitFor(t, 30*time.Second, "the small batch to end", func() bool {
		if getRaw(t, ts.URL, small.ID).ProcessingStatus != "ended" {
			return false
		}
		// Read after the small batch was seen ended: at most what the big
		// one had done by then, plus a poll's worth.
		bigAtEnd = getRaw(t, ts.URL, big.ID)
		return true
	})
	c := bigAtEnd.RequestCounts
	done := c.Succeeded + c.Errored + c.Canceled + c.Expired
	if bigAtEnd.ProcessingStatus != "in_progress" || done >= bigN/2 {
		t.Errorf("when the 10-request batch ended, the %d-request batch created before it had settled %d (%s); want under half: the small batch was starved",
			bigN, done, bigAtEnd.ProcessingStatus)
	}
	t.Logf("big batch had settled %d of %d when the small one ended", done, bigN)
	// Stop the big batch so that closing the server is quick.
	do(t, "POST", ts.URL+"/v1/messages/batches/"+big.ID+"/cancel", nil)
}

func TestLiveRequestCounts(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withConfig(func(c *server.Config) { c.Dispatch.Concurrency = 2 }))
	const n = 8
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", n, "[[sim latency=150ms]] steady")...))

	var snaps []wireBatch
	waitFor(t, 15*time.Second, "the batch to end", func() bool {
		s := getRaw(t, ts.URL, b.ID)
		snaps = append(snaps, s)
		return s.ProcessingStatus == "ended"
	})
	sawProgress := false
	for i, s := range snaps {
		c := s.RequestCounts
		if c.Processing+c.Succeeded != n || c.Errored+c.Canceled+c.Expired != 0 {
			t.Errorf("snapshot %d: counts %+v do not add up to %d", i, c, n)
		}
		if s.ProcessingStatus == "in_progress" && c.Succeeded > 0 && c.Processing > 0 {
			sawProgress = true
		}
		if i > 0 {
			p := snaps[i-1].RequestCounts
			if c.Processing > p.Processing || c.Succeeded < p.Succeeded {
				t.Errorf("snapshot %d: counts went backwards: %+v after %+v", i, c, p)
			}
		}
	}
	if !sawProgress {
		t.Errorf("never saw processing fall and succeeded rise before the end (%d snapshots); counts are meant to be live", len(snaps))
	}
	if last := snaps[len(snaps)-1].RequestCounts; last.Succeeded != n || last.Processing != 0 {
		t.Errorf("final counts %+v", last)
	}
}

func TestRetryEndpoint(t *testing.T) {
	t.Parallel()
	// One request at a time so that the cancel below finds requests that
	// were never sent.
	ts := newTestServer(t, withConfig(func(c *server.Config) { c.Dispatch.Concurrency = 1 }))
	badParams := map[string]any{"model": testModel, "messages": []any{map[string]any{"role": "user", "content": "no max_tokens"}}}
	reqs := []rawRequest{
		{CustomID: "err-sim", Params: params("[[sim error=invalid_request_error]] always fails")},
		{CustomID: "err-params", Params: badParams},
		{CustomID: "ok", Params: params("fine")},
		{CustomID: "slow", Params: params("[[sim latency=1500ms]] slow")},
	}
	for i := range 4 {
		reqs = append(reqs, rawRequest{CustomID: fmt.Sprint("later-", i), Params: params(fmt.Sprintf("prompt number %d", i))})
	}
	src := createRaw(t, ts.URL, createBody(t, reqs...))
	base := ts.URL + "/v1/messages/batches/"

	wantError(t, do(t, "POST", base+src.ID+"/retry", nil), http.StatusBadRequest, "invalid_request_error", "not ended")
	waitFor(t, 10*time.Second, "the first three requests to settle", func() bool {
		c := getRaw(t, ts.URL, src.ID).RequestCounts
		return c.Errored >= 2 && c.Succeeded >= 1
	})
	cancel := wantBatch(t, do(t, "POST", base+src.ID+"/cancel", nil))
	if cancel.ProcessingStatus != "canceling" {
		t.Errorf("cancel: %s, want canceling while the slow request runs", cancel.ProcessingStatus)
	}
	waitEndedRaw(t, ts.URL, src.ID, 15*time.Second)
	srcRes := resultsRaw(t, ts.URL, src.ID, "")
	want := map[string]string{} // custom_id → source result type, for the failed ones
	for id, r := range srcRes {
		if r.Result.Type != "succeeded" {
			want[id] = r.Result.Type
		}
	}
	if want["err-sim"] != "errored" || want["err-params"] != "errored" || want["later-3"] != "canceled" {
		t.Fatalf("source results %v: want err-sim and err-params errored and later-3 canceled", want)
	}

	retry := wantBatch(t, do(t, "POST", base+src.ID+"/retry", nil))
	if retry.ID == src.ID || !strings.HasPrefix(retry.ID, "msgbatch_") || retry.ProcessingStatus != "in_progress" {
		t.Errorf("retry batch %+v", retry)
	}
	if retry.RequestCounts.Processing != int64(len(want)) {
		t.Errorf("retry batch has %d requests, want the %d failed ones", retry.RequestCounts.Processing, len(want))
	}
	waitEndedRaw(t, ts.URL, retry.ID, 15*time.Second)
	res := resultsRaw(t, ts.URL, retry.ID, "")
	if len(res) != len(want) {
		t.Errorf("retry results %d, want %d", len(res), len(want))
	}
	for id := range want {
		r, ok := res[id]
		if !ok {
			t.Errorf("retry batch lacks %s", id)
			continue
		}
		switch {
		case id == "err-sim" || id == "err-params":
			// Same params, same error.
			if r.Result.Type != "errored" || r.Result.Error.Error.Message != srcRes[id].Result.Error.Error.Message {
				t.Errorf("%s: retried as %q %+v, want the same error as before", id, r.Result.Type, r.Result.Error)
			}
		default:
			// Canceled before: now run, on the same params (the reply echoes the prompt).
			if r.Result.Type != "succeeded" {
				t.Errorf("%s: %q, want succeeded", id, r.Result.Type)
				continue
			}
			wantEcho := "prompt number " + strings.TrimPrefix(id, "later-")
			if id == "slow" {
				wantEcho = "slow"
			}
			if !strings.Contains(string(r.Result.Message), wantEcho) {
				t.Errorf("%s: reply %s does not echo its prompt %q", id, r.Result.Message, wantEcho)
			}
		}
	}
	for id := range res {
		if _, ok := want[id]; !ok {
			t.Errorf("retry batch has %s, which succeeded in the source", id)
		}
	}

	// A batch with nothing to retry, an unknown one, the source again.
	wantError(t, do(t, "POST", base+"msgbatch_nope/retry", nil), http.StatusNotFound, "not_found_error")
	clean := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "fine")...))
	waitEndedRaw(t, ts.URL, clean.ID, 10*time.Second)
	wantError(t, do(t, "POST", base+clean.ID+"/retry", nil), http.StatusBadRequest, "invalid_request_error")
	if again := wantBatch(t, do(t, "POST", base+src.ID+"/retry", nil)); again.RequestCounts.Processing != int64(len(want)) {
		t.Errorf("second retry of the source: %+v", again.RequestCounts)
	}
}

func TestRetentionArchivesResults(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withConfig(func(c *server.Config) { c.Batch.Retention = 200 * time.Millisecond }))
	b := createRaw(t, ts.URL, createBody(t, append(nRequests("r", 2, "hi"), rawRequest{CustomID: "bad", Params: params("[[sim error=api_error]]")})...))
	var got wireBatch
	waitFor(t, 10*time.Second, "the batch to be archived", func() bool {
		got = getRaw(t, ts.URL, b.ID)
		return got.ArchivedAt != nil
	})
	if got.ProcessingStatus != "ended" || got.EndedAt == nil {
		t.Errorf("archived batch: %+v, want ended", got)
	}
	created, _ := time.Parse(time.RFC3339Nano, got.CreatedAt)
	archived, _ := time.Parse(time.RFC3339Nano, *got.ArchivedAt)
	if archived.Sub(created) < 200*time.Millisecond {
		t.Errorf("archived %v after creation, before the 200ms retention", archived.Sub(created))
	}
	if c := got.RequestCounts; c.Succeeded != 2 || c.Errored != 1 {
		t.Errorf("counts of the archived batch %+v: the batch itself stays as it was", c)
	}
	base := ts.URL + "/v1/messages/batches/" + b.ID
	wantError(t, do(t, "GET", base+"/results", nil), http.StatusNotFound, "not_found_error", "archived")
	wantError(t, do(t, "GET", base+"/results?partial=true", nil), http.StatusNotFound, "not_found_error")
	wantError(t, do(t, "POST", base+"/retry", nil), http.StatusBadRequest, "invalid_request_error")
	// Still visible in the list.
	if r := do(t, "GET", ts.URL+"/v1/messages/batches", nil); !strings.Contains(string(r.Body), b.ID) {
		t.Errorf("archived batch missing from the list: %s", r.Body)
	}
}
