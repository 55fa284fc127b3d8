package server_test

// Authentication and workspace isolation: keys are checked when any exist,
// both header forms work, revoked keys stop working, and a workspace never
// sees another's batches (a foreign id is a 404, never a 403).

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
)

func TestAuth(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withoutDispatcher())
	// Keys exist before the first request: the API caches whether any key
	// is active for a second.
	keyA, _ := addKey(t, ts.Srv.Store, "a")
	keyRevoked, revokedID := addKey(t, ts.Srv.Store, "a")
	list := ts.URL + "/v1/messages/batches"

	tests := []struct {
		name    string
		headers []string
		status  int
		message string
	}{
		{"no key", []string{"x-api-key", ""}, 401, "x-api-key header is required"},
		{"empty bearer", []string{"x-api-key", "", "Authorization", "Bearer "}, 401, "required"},
		{"wrong key", []string{"x-api-key", "", "x-api-key", "sk-batchd-wrong"}, 401, "invalid x-api-key"},
		{"wrong bearer", []string{"x-api-key", "", "Authorization", "Bearer sk-batchd-wrong"}, 401, "invalid x-api-key"},
		{"basic auth", []string{"x-api-key", "", "Authorization", "Basic " + keyA}, 401, ""},
		{"key with a suffix", []string{"x-api-key", "", "x-api-key", keyA + "x"}, 401, "invalid x-api-key"},
		{"x-api-key", []string{"x-api-key", "", "x-api-key", keyA}, 200, ""},
		{"bearer", []string{"x-api-key", "", "Authorization", "Bearer " + keyA}, 200, ""},
		{"lower-case bearer", []string{"x-api-key", "", "Authorization", "bearer " + keyA}, 200, ""},
	}
	run := func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				r := do(t, "GET", list, nil, tt.headers...)
				if tt.status == 200 {
					if r.Status != 200 {
						t.Errorf("status %d: %s", r.Status, r.Body)
					}
					return
				}
				wantError(t, r, tt.status, "authentication_error", tt.message)
			})
		}
	}
	t.Run("before revoking", run)

	// Every endpoint is guarded, not only list.
	for _, ep := range []struct{ method, path string }{
		{"POST", "/v1/messages/batches"},
		{"GET", "/v1/messages/batches/msgbatch_x"},
		{"POST", "/v1/messages/batches/msgbatch_x/cancel"},
		{"DELETE", "/v1/messages/batches/msgbatch_x"},
		{"GET", "/v1/messages/batches/msgbatch_x/results"},
		{"POST", "/v1/messages/batches/msgbatch_x/retry"},
	} {
		wantError(t, do(t, ep.method, ts.URL+ep.path, createBody(t, nRequests("r", 1, "hi")...), "x-api-key", ""), 401, "authentication_error")
	}

	// The SDK sends its key as a bearer token.
	good, bad := newClient(ts.URL, keyRevoked), newClient(ts.URL, "sk-batchd-wrong")
	if _, err := good.Messages.Batches.List(context.Background(), anthropic.MessageBatchListParams{}); err != nil {
		t.Fatalf("SDK with a valid key: %v", err)
	}
	_, err := bad.Messages.Batches.List(context.Background(), anthropic.MessageBatchListParams{})
	if ae := apiError(t, err); ae.StatusCode != 401 || ae.Type() != "authentication_error" {
		t.Errorf("SDK with a wrong key: %d %s", ae.StatusCode, ae.Type())
	}

	if _, err := ts.Srv.Store.KeyRevoke(context.Background(), revokedID, time.Now()); err != nil {
		t.Fatal(err)
	}
	wantError(t, do(t, "GET", list, nil, "x-api-key", "", "x-api-key", keyRevoked), 401, "authentication_error", "invalid x-api-key")
	wantError(t, do(t, "GET", list, nil, "x-api-key", "", "Authorization", "Bearer "+keyRevoked), 401, "authentication_error")
	t.Run("after revoking another key", run)
}

func TestOpenModeAcceptsAnyKey(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withoutDispatcher())
	for _, h := range [][]string{
		{"x-api-key", ""},
		{"x-api-key", "", "x-api-key", "anything"},
		{"x-api-key", "", "Authorization", "Bearer whatever"},
	} {
		b := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "hi")...), h...)
		getRaw(t, ts.URL, b.ID, "x-api-key", "", "x-api-key", "another")
	}
	c := newClient(ts.URL, "sk-ant-anything")
	if _, err := c.Messages.Batches.List(context.Background(), anthropic.MessageBatchListParams{}); err != nil {
		t.Errorf("SDK in open mode: %v", err)
	}
}

func TestWorkspaceIsolation(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	keyA, _ := addKey(t, ts.Srv.Store, "a")
	keyB, _ := addKey(t, ts.Srv.Store, "b")
	a := newClient(ts.URL, keyA)
	bClient := newClient(ts.URL, keyB)
	ctx := context.Background()

	// An ended batch with an errored request: every operation B might try
	// (delete, results, retry) would succeed for A.
	batchA := sdkBatch(t, a, sdkRequest("ok", "hi", 16), sdkRequest("bad", "[[sim error=invalid_request_error]]", 16))
	waitEnded(t, a, batchA.ID, 10*time.Second)
	batchB := sdkBatch(t, bClient, sdkRequest("ok", "hi", 16))

	asB := []string{"x-api-key", "", "x-api-key", keyB}
	base := ts.URL + "/v1/messages/batches/" + batchA.ID
	for _, op := range []struct{ method, url string }{
		{"GET", base},
		{"POST", base + "/cancel"},
		{"DELETE", base},
		{"GET", base + "/results"},
		{"GET", base + "/results?partial=true"},
		{"POST", base + "/retry"},
	} {
		r := do(t, op.method, op.url, nil, asB...)
		msg := wantError(t, r, http.StatusNotFound, "not_found_error")
		if msg == "" {
			t.Errorf("%s %s: empty message", op.method, op.url)
		}
	}
	_, err := bClient.Messages.Batches.Get(ctx, batchA.ID, anthropic.MessageBatchGetParams{})
	if ae := apiError(t, err); ae.StatusCode != 404 {
		t.Errorf("SDK get of a foreign batch: %d, want 404", ae.StatusCode)
	}

	// B's list has only B's batch; A's id is no cursor for B.
	r := do(t, "GET", ts.URL+"/v1/messages/batches", nil, asB...)
	var page struct{ Data []wireBatch }
	if err := json.Unmarshal(r.Body, &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 1 || page.Data[0].ID != batchB.ID {
		t.Errorf("B's list %+v, want only %s", page.Data, batchB.ID)
	}
	if r := do(t, "GET", ts.URL+"/v1/messages/batches?after_id="+batchA.ID, nil, asB...); r.Status == 200 {
		t.Errorf("B can page from A's batch: %s", r.Body)
	}

	// Nothing B tried changed A's batch.
	got, err := a.Messages.Batches.Get(ctx, batchA.ID, anthropic.MessageBatchGetParams{})
	if err != nil || got.ProcessingStatus != "ended" {
		t.Fatalf("A's batch after B's attempts: %v %v", got, err)
	}
	if res := sdkResults(t, a, batchA.ID); len(res) != 2 {
		t.Errorf("A's results: %d, want 2", len(res))
	}
	var ids []string
	pager := a.Messages.Batches.ListAutoPaging(ctx, anthropic.MessageBatchListParams{})
	for pager.Next() {
		ids = append(ids, pager.Current().ID)
	}
	if !slices.Equal(ids, []string{batchA.ID}) {
		t.Errorf("A's list %v, want only %s (and no retry batch made by B)", ids, batchA.ID)
	}
}
