package server_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/batchd/batchd/internal/api"
	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/store"
)

// TestIdempotentCreateSurvivesLostResponse: a create whose answer was lost
// is sent again; with an Idempotency-Key the resend gets the batch the
// first request made instead of creating (and paying for) a second one.
func TestIdempotentCreateSurvivesLostResponse(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	// A proxy that passes the first create on, then loses the answer.
	var calls atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, ts.URL+r.URL.RequestURI(), r.Body)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		if calls.Add(1) == 1 {
			// The server made the batch; the client never hears of it.
			io.Copy(io.Discard, resp.Body)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(503)
			io.WriteString(w, `{"type":"error","error":{"type":"api_error","message":"lost"}}`)
			return
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(proxy.Close)
	c := newClient(proxy.URL, "test", option.WithMaxRetries(2))
	params := anthropic.MessageBatchNewParams{Requests: []anthropic.MessageBatchNewParamsRequest{sdkRequest("a", "hi", 10), sdkRequest("b", "hi", 10)}}
	// The Go SDK (v2.15) resends a create only when the server cannot have
	// seen it, so the lost answer is an error; the caller (batchd submit,
	// or another SDK that resends on 5xx) sends it again with the same key.
	if _, err := c.Messages.Batches.New(context.Background(), params, option.WithHeader("Idempotency-Key", "create-1")); err == nil {
		t.Fatal("the lost answer reached the client")
	}
	b, err := c.Messages.Batches.New(context.Background(), params, option.WithHeader("Idempotency-Key", "create-1"))
	if err != nil {
		t.Fatal(err)
	}
	page, err := ts.Client.Messages.Batches.List(context.Background(), anthropic.MessageBatchListParams{})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 1 || page.Data[0].ID != b.ID {
		t.Fatalf("%d batches after a resent create, want exactly the one returned (%s)", len(page.Data), b.ID)
	}
	// Same key, same body, later: the same batch again.
	again, err := ts.Client.Messages.Batches.New(context.Background(), params, option.WithHeader("Idempotency-Key", "create-1"))
	if err != nil || again.ID != b.ID {
		t.Fatalf("same key and body: %v %v, want %s", again, err, b.ID)
	}
	// Same key, another body: a 400 naming the header.
	other := anthropic.MessageBatchNewParams{Requests: []anthropic.MessageBatchNewParamsRequest{sdkRequest("c", "bye", 10)}}
	_, err = ts.Client.Messages.Batches.New(context.Background(), other, option.WithHeader("Idempotency-Key", "create-1"))
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(err.Error(), "Idempotency-Key") {
		t.Fatalf("same key, other body: %v, want a 400 naming Idempotency-Key", err)
	}
	// Without a key every create is new.
	if n := sdkBatch(t, ts.Client, sdkRequest("a", "hi", 10)); n.ID == b.ID {
		t.Fatal("a create without a key returned the keyed batch")
	}
}

// TestIdempotentCreateFailureFreesKey: a create that fails (a bad body)
// does not hold its key: the corrected resend with the same key runs.
func TestIdempotentCreateFailureFreesKey(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	r := do(t, "POST", ts.URL+"/v1/messages/batches", `{"requests":[]}`, "Idempotency-Key", "k")
	wantError(t, r, 400, "invalid_request_error")
	wantBatch(t, do(t, "POST", ts.URL+"/v1/messages/batches", createBody(t, nRequests("r", 1, "hi")...), "Idempotency-Key", "k"))
}

// TestIdempotentRetry: POST …/retry with the same key makes one retry batch.
func TestIdempotentRetry(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	// No max_tokens: the request ends errored, so there is one to retry.
	src := wantBatch(t, do(t, "POST", ts.URL+"/v1/messages/batches", createBody(t, rawRequest{CustomID: "x", Params: map[string]any{"model": "m", "messages": []any{}}})))
	waitEndedRaw(t, ts.URL, src.ID, 30*time.Second)
	first := wantBatch(t, do(t, "POST", ts.URL+"/v1/messages/batches/"+src.ID+"/retry", nil, "Idempotency-Key", "r1"))
	second := wantBatch(t, do(t, "POST", ts.URL+"/v1/messages/batches/"+src.ID+"/retry", nil, "Idempotency-Key", "r1"))
	if first.ID != second.ID {
		t.Fatalf("two retries with one key made %s and %s", first.ID, second.ID)
	}
}

// TestIdempotencyKeyWhileFirstRuns: while the first request with a key is
// still running (its reservation is in the store, as a running create
// leaves it), a second one is told to retry (429, which every SDK
// retries, even for creates) instead of starting a second create.
func TestIdempotencyKeyWhileFirstRuns(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	held, err := ts.Srv.Store.IdempotencyReserve(context.Background(), store.IdempotencyReserveParams{
		Workspace: api.DefaultWorkspace, Key: "slow", Now: time.Now(), TTL: batch.IdempotencyTTL, StaleAfter: time.Hour})
	if err != nil || held != nil {
		t.Fatalf("reserve: %+v %v", held, err)
	}
	r := do(t, "POST", ts.URL+"/v1/messages/batches", createBody(t, nRequests("r", 1, "hi")...), "Idempotency-Key", "slow")
	if r.Status != 429 || !strings.Contains(string(r.Body), "still being processed") || r.Header.Get("retry-after") == "" {
		t.Fatalf("a second request with the running key: %d %s", r.Status, r.Body)
	}
}
