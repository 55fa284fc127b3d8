package server_test

// The lifecycle of a batch through the official Go SDK v2 against a real
// batchd: create, retrieve, list (both directions), cancel, delete, results
// of all four kinds, the beta client, and the wire details the SDKs depend
// on (results_url, JSONL bytes, request-id, error envelopes).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/batchd/batchd/internal/server"
)

// wireTimeRE is Anthropic's timestamp format: RFC 3339, microseconds, Z.
var wireTimeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`)

// batchKeys are the keys every MessageBatch carries, null or not.
var batchKeys = []string{"id", "type", "processing_status", "request_counts", "ended_at", "created_at",
	"expires_at", "archived_at", "cancel_initiated_at", "results_url"}

// checkBatchJSON checks that raw has every key, the timestamps in wire
// format and exactly the nullable keys in nulls set to null.
func checkBatchJSON(t *testing.T, raw string, nulls ...string) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatalf("batch JSON: %v: %s", err, raw)
	}
	for _, k := range batchKeys {
		v, ok := m[k]
		if !ok {
			t.Errorf("batch JSON lacks key %q: %s", k, raw)
			continue
		}
		isNull := string(v) == "null"
		if wantNull := slices.Contains(nulls, k); isNull != wantNull {
			t.Errorf("batch key %q = %s, want null: %v", k, v, wantNull)
		}
		if strings.HasSuffix(k, "_at") && !isNull {
			var s string
			if err := json.Unmarshal(v, &s); err != nil || !wireTimeRE.MatchString(s) {
				t.Errorf("batch key %q = %s, want an RFC 3339 UTC time with microseconds", k, v)
			}
		}
	}
	var counts map[string]json.RawMessage
	if err := json.Unmarshal(m["request_counts"], &counts); err != nil {
		t.Fatalf("request_counts: %v", err)
	}
	for _, k := range []string{"processing", "succeeded", "errored", "canceled", "expired"} {
		if _, ok := counts[k]; !ok {
			t.Errorf("request_counts lacks %q", k)
		}
	}
}

func TestSDKCreateGetEnd(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	ctx := context.Background()

	before := time.Now().Add(-time.Second)
	b := sdkBatch(t, ts.Client, sdkRequest("a", "one", 64), sdkRequest("b", "two", 64), sdkRequest("c", "three", 64))
	after := time.Now().Add(time.Second)

	if !strings.HasPrefix(b.ID, "msgbatch_01") || len(b.ID) != len("msgbatch_")+24 {
		t.Errorf("id %q, want msgbatch_01 and 22 more characters", b.ID)
	}
	if b.Type != "message_batch" {
		t.Errorf("type %q", b.Type)
	}
	if b.ProcessingStatus != anthropic.MessageBatchProcessingStatusInProgress {
		t.Errorf("status %q, want in_progress", b.ProcessingStatus)
	}
	want := anthropic.MessageBatchRequestCounts{Processing: 3}
	if got := b.RequestCounts; got.Processing != want.Processing || got.Succeeded+got.Errored+got.Canceled+got.Expired != 0 {
		t.Errorf("counts at create %+v, want all 3 processing", got)
	}
	if b.CreatedAt.Before(before) || b.CreatedAt.After(after) {
		t.Errorf("created_at %v, want about now", b.CreatedAt)
	}
	if !b.ExpiresAt.Equal(b.CreatedAt.Add(24 * time.Hour)) {
		t.Errorf("expires_at %v, want created_at %v + 24h exactly", b.ExpiresAt, b.CreatedAt)
	}
	checkBatchJSON(t, b.RawJSON(), "ended_at", "archived_at", "cancel_initiated_at", "results_url")

	got, err := ts.Client.Messages.Batches.Get(ctx, b.ID, anthropic.MessageBatchGetParams{})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.ID != b.ID || !got.CreatedAt.Equal(b.CreatedAt) || !got.ExpiresAt.Equal(b.ExpiresAt) {
		t.Errorf("get returned %s created %v expires %v, want %s %v %v", got.ID, got.CreatedAt, got.ExpiresAt, b.ID, b.CreatedAt, b.ExpiresAt)
	}

	ended := waitEnded(t, ts.Client, b.ID, 10*time.Second)
	checkBatchJSON(t, ended.RawJSON(), "archived_at", "cancel_initiated_at")
	if c := ended.RequestCounts; c.Succeeded != 3 || countsSum(c) != 3 {
		t.Errorf("ended counts %+v, want 3 succeeded", c)
	}
	if ended.EndedAt.Before(ended.CreatedAt) {
		t.Errorf("ended_at %v before created_at %v", ended.EndedAt, ended.CreatedAt)
	}
	if want := ts.URL + "/v1/messages/batches/" + b.ID + "/results"; ended.ResultsURL != want {
		t.Errorf("results_url %q, want %q", ended.ResultsURL, want)
	}
}

func TestSDKListPaging(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	ctx := context.Background()

	const n = 45
	created := make([]string, n) // oldest first
	for i := range created {
		created[i] = sdkBatch(t, ts.Client, sdkRequest("r", fmt.Sprint("batch ", i), 16)).ID
	}
	newest := slices.Clone(created) // newest first: the list order
	slices.Reverse(newest)

	rec := &recorder{}
	c := newClient(ts.URL, "test", option.WithMiddleware(rec.middleware))

	t.Run("forward", func(t *testing.T) {
		var seen []string
		pager := c.Messages.Batches.ListAutoPaging(ctx, anthropic.MessageBatchListParams{Limit: anthropic.Int(10)})
		for pager.Next() {
			seen = append(seen, pager.Current().ID)
		}
		if err := pager.Err(); err != nil {
			t.Fatalf("list: %v", err)
		}
		if !slices.Equal(seen, newest) {
			t.Errorf("auto-paging forward saw %d batches %v, want all %d newest first %v", len(seen), seen, n, newest)
		}
		reqs := rec.take()
		if len(reqs) != 5 {
			t.Errorf("auto-paging made %d requests, want 5 pages of 10", len(reqs))
		}
		for i, r := range reqs {
			q := r.URL.Query()
			want := ""
			if i > 0 {
				want = newest[10*i-1] // last_id of the previous page
			}
			if q.Get("after_id") != want || q.Has("before_id") || q.Get("limit") != "10" {
				t.Errorf("page %d query %q, want after_id=%q limit=10", i, r.URL.RawQuery, want)
			}
		}
	})

	t.Run("backward", func(t *testing.T) {
		// From before the oldest, the SDK pages towards newer batches with
		// before_id = first_id; each page is still newest first.
		var want []string
		for end := 1; end < n; end += 10 {
			page := slices.Clone(created[end:min(end+10, n)])
			slices.Reverse(page)
			want = append(want, page...)
		}
		var seen []string
		pager := c.Messages.Batches.ListAutoPaging(ctx, anthropic.MessageBatchListParams{
			BeforeID: anthropic.String(created[0]), Limit: anthropic.Int(10),
		})
		for pager.Next() {
			seen = append(seen, pager.Current().ID)
		}
		if err := pager.Err(); err != nil {
			t.Fatalf("list: %v", err)
		}
		if !slices.Equal(seen, want) {
			t.Errorf("auto-paging backward saw %v, want %v", seen, want)
		}
		reqs := rec.take()
		if len(reqs) != 5 {
			t.Errorf("auto-paging backward made %d requests, want 5", len(reqs))
		}
		for i, r := range reqs {
			q := r.URL.Query()
			want := created[0]
			if i > 0 {
				want = created[10*i] // first_id of the previous page
			}
			if q.Get("before_id") != want || q.Has("after_id") {
				t.Errorf("page %d query %q, want before_id=%q", i, r.URL.RawQuery, want)
			}
		}
	})

	t.Run("pages", func(t *testing.T) {
		L := newest
		ptr := func(s string) *string { return &s }
		tests := []struct {
			name    string
			query   string
			want    []string
			hasMore bool
		}{
			{"default limit is 20", "", L[:20], true},
			{"first page", "?limit=10", L[:10], true},
			{"after", "?limit=10&after_id=" + L[9], L[10:20], true},
			{"after, exactly the rest", "?limit=10&after_id=" + L[34], L[35:45], false},
			{"after, fewer than limit", "?limit=10&after_id=" + L[39], L[40:45], false},
			{"after the oldest", "?limit=10&after_id=" + L[44], nil, false},
			{"before the oldest", "?limit=10&before_id=" + L[44], L[34:44], true},
			{"before, exactly the rest", "?limit=10&before_id=" + L[10], L[0:10], false},
			{"before, fewer than limit", "?limit=10&before_id=" + L[5], L[0:5], false},
			{"before the newest", "?limit=10&before_id=" + L[0], nil, false},
			{"limit 1", "?limit=1", L[:1], true},
			{"limit 1000", "?limit=1000", L, false},
			{"beta flag ignored", "?beta=true&limit=3", L[:3], true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				r := do(t, "GET", ts.URL+"/v1/messages/batches"+tt.query, nil)
				if r.Status != http.StatusOK {
					t.Fatalf("status %d: %s", r.Status, r.Body)
				}
				var page struct {
					Data    []wireBatch `json:"data"`
					HasMore *bool       `json:"has_more"`
					FirstID *string     `json:"first_id"`
					LastID  *string     `json:"last_id"`
				}
				var keys map[string]json.RawMessage
				if err := json.Unmarshal(r.Body, &page); err != nil {
					t.Fatal(err)
				}
				json.Unmarshal(r.Body, &keys)
				for _, k := range []string{"data", "has_more", "first_id", "last_id"} {
					if _, ok := keys[k]; !ok {
						t.Errorf("page lacks key %q: %s", k, r.Body)
					}
				}
				if string(keys["data"]) == "null" {
					t.Errorf("data is null, want []")
				}
				var ids []string
				for _, b := range page.Data {
					ids = append(ids, b.ID)
				}
				if !slices.Equal(ids, tt.want) {
					t.Errorf("ids %v, want %v", ids, tt.want)
				}
				if page.HasMore == nil || *page.HasMore != tt.hasMore {
					t.Errorf("has_more %v, want %v", page.HasMore, tt.hasMore)
				}
				var wantFirst, wantLast *string
				if len(tt.want) > 0 {
					wantFirst, wantLast = ptr(tt.want[0]), ptr(tt.want[len(tt.want)-1])
				}
				if deref(page.FirstID) != deref(wantFirst) {
					t.Errorf("first_id %v, want %v", deref(page.FirstID), deref(wantFirst))
				}
				if deref(page.LastID) != deref(wantLast) {
					t.Errorf("last_id %v, want %v", deref(page.LastID), deref(wantLast))
				}
			})
		}
	})
}

func deref(s *string) any {
	if s == nil {
		return nil
	}
	return *s
}

// apiError unwraps an SDK error into the API error, failing if it is not one.
func apiError(t *testing.T, err error) *anthropic.Error {
	t.Helper()
	var ae *anthropic.Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T), want an *anthropic.Error", err, err)
	}
	return ae
}

func TestSDKCancel(t *testing.T) {
	t.Parallel()
	// One request at a time: a fast request first, then slow ones. Once the
	// fast one has succeeded (live counts) the first slow one is running, so
	// a cancel finds the batch with work in flight.
	ts := newTestServer(t, withConfig(func(c *server.Config) { c.Dispatch.Concurrency = 1 }))
	ctx := context.Background()
	reqs := []anthropic.MessageBatchNewParamsRequest{sdkRequest("fast", "hi", 16)}
	for i := range 6 {
		reqs = append(reqs, sdkRequest(fmt.Sprint("slow-", i), "[[sim latency=1s]] take your time", 16))
	}
	b := sdkBatch(t, ts.Client, reqs...)
	waitFor(t, 10*time.Second, "the fast request to succeed", func() bool {
		got, err := ts.Client.Messages.Batches.Get(ctx, b.ID, anthropic.MessageBatchGetParams{})
		if err != nil {
			t.Fatal(err)
		}
		return got.RequestCounts.Succeeded >= 1
	})

	c, err := ts.Client.Messages.Batches.Cancel(ctx, b.ID, anthropic.MessageBatchCancelParams{})
	if err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if c.ProcessingStatus != anthropic.MessageBatchProcessingStatusCanceling {
		t.Errorf("status after cancel %q, want canceling (a slow request is running)", c.ProcessingStatus)
	}
	if c.CancelInitiatedAt.IsZero() || c.CancelInitiatedAt.Before(c.CreatedAt) {
		t.Errorf("cancel_initiated_at %v, want set after created_at %v", c.CancelInitiatedAt, c.CreatedAt)
	}
	checkBatchJSON(t, c.RawJSON(), "ended_at", "archived_at", "results_url")
	if countsSum(c.RequestCounts) != 7 {
		t.Errorf("counts %+v do not sum to 7", c.RequestCounts)
	}

	// Canceling again is harmless.
	again, err := ts.Client.Messages.Batches.Cancel(ctx, b.ID, anthropic.MessageBatchCancelParams{})
	if err != nil {
		t.Fatalf("second cancel: %v", err)
	}
	if again.ProcessingStatus == anthropic.MessageBatchProcessingStatusInProgress || !again.CancelInitiatedAt.Equal(c.CancelInitiatedAt) {
		t.Errorf("second cancel: status %q cancel_initiated_at %v, want canceling/ended and %v", again.ProcessingStatus, again.CancelInitiatedAt, c.CancelInitiatedAt)
	}

	ended := waitEnded(t, ts.Client, b.ID, 15*time.Second)
	counts := ended.RequestCounts
	if counts.Canceled < 3 || counts.Succeeded < 2 || countsSum(counts) != 7 || counts.Processing != 0 {
		t.Errorf("ended counts %+v, want ≥2 succeeded (fast and the running slow one), ≥3 canceled, sum 7", counts)
	}
	if ended.ResultsURL == "" || ended.EndedAt.Before(ended.CancelInitiatedAt) {
		t.Errorf("ended: results_url %q ended_at %v cancel_initiated_at %v", ended.ResultsURL, ended.EndedAt, ended.CancelInitiatedAt)
	}

	results := sdkResults(t, ts.Client, b.ID)
	if len(results) != 7 {
		t.Fatalf("%d results, want 7", len(results))
	}
	byType := map[string]int64{}
	for id, r := range results {
		byType[r.Result.Type]++
		if id == "fast" && r.Result.Type != "succeeded" {
			t.Errorf("fast: %s, want succeeded", r.Result.Type)
		}
		if r.Result.Type == "canceled" && r.Result.AsCanceled().Type != "canceled" {
			t.Errorf("%s: canceled result does not decode", id)
		}
	}
	if byType["canceled"] != counts.Canceled || byType["succeeded"] != counts.Succeeded {
		t.Errorf("results by type %v disagree with counts %+v", byType, counts)
	}

	// An ended batch cannot be canceled.
	_, err = ts.Client.Messages.Batches.Cancel(ctx, b.ID, anthropic.MessageBatchCancelParams{})
	if ae := apiError(t, err); ae.StatusCode != 400 || ae.Type() != "invalid_request_error" {
		t.Errorf("cancel of an ended batch: %d %s, want 400 invalid_request_error", ae.StatusCode, ae.Type())
	}
}

func TestSDKDelete(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	ctx := context.Background()
	keep := sdkBatch(t, ts.Client, sdkRequest("k", "keep me", 16))
	b := sdkBatch(t, ts.Client, sdkRequest("a", "delete me", 16), sdkRequest("b", "[[sim error=api_error]]", 16))
	waitEnded(t, ts.Client, b.ID, 10*time.Second)

	del, err := ts.Client.Messages.Batches.Delete(ctx, b.ID, anthropic.MessageBatchDeleteParams{})
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	if del.ID != b.ID || del.Type != "message_batch_deleted" {
		t.Errorf("delete returned %+v", del)
	}

	checks := map[string]func() error{
		"get": func() error {
			_, err := ts.Client.Messages.Batches.Get(ctx, b.ID, anthropic.MessageBatchGetParams{})
			return err
		},
		"cancel": func() error {
			_, err := ts.Client.Messages.Batches.Cancel(ctx, b.ID, anthropic.MessageBatchCancelParams{})
			return err
		},
		"delete": func() error {
			_, err := ts.Client.Messages.Batches.Delete(ctx, b.ID, anthropic.MessageBatchDeleteParams{})
			return err
		},
		"results": func() error {
			s := ts.Client.Messages.Batches.ResultsStreaming(ctx, b.ID, anthropic.MessageBatchResultsParams{})
			defer s.Close()
			for s.Next() {
			}
			return s.Err()
		},
	}
	for name, call := range checks {
		err := call()
		if err == nil {
			t.Errorf("%s after delete succeeded, want 404", name)
			continue
		}
		if ae := apiError(t, err); ae.StatusCode != 404 || ae.Type() != "not_found_error" {
			t.Errorf("%s after delete: %d %s, want 404 not_found_error", name, ae.StatusCode, ae.Type())
		}
	}
	for _, p := range []string{"", "/results", "/cancel", "/retry"} {
		method := "GET"
		if p == "/cancel" || p == "/retry" {
			method = "POST"
		}
		wantError(t, do(t, method, ts.URL+"/v1/messages/batches/"+b.ID+p, nil), 404, "not_found_error")
	}

	var ids []string
	pager := ts.Client.Messages.Batches.ListAutoPaging(ctx, anthropic.MessageBatchListParams{})
	for pager.Next() {
		ids = append(ids, pager.Current().ID)
	}
	if err := pager.Err(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []string{keep.ID}) {
		t.Errorf("list after delete %v, want only %s", ids, keep.ID)
	}
	// The deleted id is no cursor either.
	wantError(t, do(t, "GET", ts.URL+"/v1/messages/batches?after_id="+b.ID, nil), 400, "invalid_request_error", "after_id")
}

func TestSDKResultsSucceededAndErrored(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	b := sdkBatch(t, ts.Client,
		sdkRequest("ok", "Hello there, simulator", 1024),
		sdkRequest("short", "Please write a long answer", 3),
		sdkRequest("sim-invalid", "[[sim error=invalid_request_error]]", 64),
		sdkRequest("zero-max-tokens", "hi", 0),
	)
	ended := waitEnded(t, ts.Client, b.ID, 10*time.Second)
	if c := ended.RequestCounts; c.Succeeded != 2 || c.Errored != 2 || countsSum(c) != 4 {
		t.Errorf("counts %+v, want 2 succeeded 2 errored", c)
	}
	res := sdkResults(t, ts.Client, b.ID)
	if len(res) != 4 {
		t.Fatalf("%d results, want 4", len(res))
	}

	ok := res["ok"].Result
	if ok.Type != "succeeded" {
		t.Fatalf("ok: %s: %s", ok.Type, ok.RawJSON())
	}
	m := ok.AsSucceeded().Message
	if !strings.HasPrefix(m.ID, "msg_") || m.Type != "message" || m.Role != "assistant" || string(m.Model) != testModel {
		t.Errorf("message id %q type %q role %q model %q, want msg_…, message, assistant, %s", m.ID, m.Type, m.Role, m.Model, testModel)
	}
	if m.StopReason != anthropic.StopReasonEndTurn {
		t.Errorf("stop_reason %q, want end_turn", m.StopReason)
	}
	if len(m.Content) == 0 || m.Content[0].Type != "text" || !strings.Contains(m.Content[0].Text, "Hello there, simulator") {
		t.Errorf("content %+v, want a text block echoing the prompt", m.Content)
	}
	if m.Usage.InputTokens <= 0 || m.Usage.OutputTokens <= 0 {
		t.Errorf("usage %+v, want positive input and output tokens", m.Usage)
	}
	if m.Usage.ServiceTier != "batch" {
		t.Errorf("usage.service_tier %q, want batch", m.Usage.ServiceTier)
	}

	short := res["short"].Result.AsSucceeded().Message
	if short.StopReason != anthropic.StopReasonMaxTokens || short.Usage.OutputTokens != 3 {
		t.Errorf("max_tokens 3: stop_reason %q output_tokens %d, want max_tokens and 3", short.StopReason, short.Usage.OutputTokens)
	}

	for id, field := range map[string]string{"sim-invalid": "simulated invalid_request_error", "zero-max-tokens": "max_tokens"} {
		r := res[id].Result
		if r.Type != "errored" {
			t.Errorf("%s: %s, want errored", id, r.Type)
			continue
		}
		e := r.AsErrored().Error
		if e.Type != "error" || e.Error.Type != "invalid_request_error" || !strings.Contains(e.Error.Message, field) {
			t.Errorf("%s: error %s, want the envelope with invalid_request_error naming %q", id, e.RawJSON(), field)
		}
		if !e.JSON.RequestID.Valid() && !strings.Contains(e.RawJSON(), `"request_id":null`) {
			t.Errorf("%s: errored result lacks request_id: %s", id, e.RawJSON())
		}
	}
}

func TestInvalidParamsAreErroredResults(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	msgs := []any{map[string]any{"role": "user", "content": "hi"}}
	tests := []struct {
		id     string
		params map[string]any
		field  string
	}{
		{"no-max-tokens", map[string]any{"model": testModel, "messages": msgs}, "max_tokens"},
		{"zero-max-tokens", map[string]any{"model": testModel, "max_tokens": 0, "messages": msgs}, "max_tokens"},
		{"string-max-tokens", map[string]any{"model": testModel, "max_tokens": "ten", "messages": msgs}, "max_tokens"},
		{"no-model", map[string]any{"max_tokens": 10, "messages": msgs}, "model"},
		{"empty-model", map[string]any{"model": "", "max_tokens": 10, "messages": msgs}, "model"},
		{"no-messages", map[string]any{"model": testModel, "max_tokens": 10}, "messages"},
		{"empty-messages", map[string]any{"model": testModel, "max_tokens": 10, "messages": []any{}}, "messages"},
		{"bad-role", map[string]any{"model": testModel, "max_tokens": 10, "messages": []any{map[string]any{"role": "robot", "content": "hi"}}}, "messages.0.role"},
		{"no-content", map[string]any{"model": testModel, "max_tokens": 10, "messages": []any{map[string]any{"role": "user"}}}, "messages.0.content"},
		{"stream", map[string]any{"model": testModel, "max_tokens": 10, "messages": msgs, "stream": true}, "stream"},
		{"bad-directive", map[string]any{"model": testModel, "max_tokens": 10, "messages": []any{map[string]any{"role": "user", "content": "[[sim error=no_such_error]]"}}}, "sim directive"},
	}
	var reqs []rawRequest
	for _, tt := range tests {
		reqs = append(reqs, rawRequest{CustomID: tt.id, Params: tt.params})
	}
	b := createRaw(t, ts.URL, createBody(t, reqs...))
	if b.RequestCounts.Processing != int64(len(tests)) {
		t.Errorf("create accepted %d requests, want all %d (params are checked later)", b.RequestCounts.Processing, len(tests))
	}
	ended := waitEnded(t, ts.Client, b.ID, 10*time.Second)
	if ended.RequestCounts.Errored != int64(len(tests)) {
		t.Errorf("counts %+v, want %d errored", ended.RequestCounts, len(tests))
	}
	res := sdkResults(t, ts.Client, b.ID)
	for _, tt := range tests {
		r, ok := res[tt.id]
		if !ok {
			t.Errorf("%s: no result", tt.id)
			continue
		}
		e := r.Result.AsErrored().Error
		if r.Result.Type != "errored" || e.Error.Type != "invalid_request_error" || !strings.Contains(e.Error.Message, tt.field) {
			t.Errorf("%s: %s, want errored invalid_request_error naming %q", tt.id, r.Result.RawJSON(), tt.field)
		}
	}
}

func TestSDKResultsExpired(t *testing.T) {
	t.Parallel()
	// The clock is injected: the batch expires when the test moves it, so
	// however slow the machine, at most the one request in flight by then
	// was sent, and every other one expires.
	clock := &testClock{now: time.Now()}
	ts := newTestServer(t, withConfig(func(c *server.Config) {
		c.Now = clock.Now
		c.Batch.ExpireAfter = 300 * time.Millisecond
		c.Dispatch.Concurrency = 1
		c.Dispatch.Lease = time.Hour // outlasts the clock's jump
	}))
	var reqs []anthropic.MessageBatchNewParamsRequest
	for i := range 6 {
		reqs = append(reqs, sdkRequest(fmt.Sprint("r", i), "[[sim latency=200ms]] slow", 16))
	}
	b := sdkBatch(t, ts.Client, reqs...)
	if got := b.ExpiresAt.Sub(b.CreatedAt); got != 300*time.Millisecond {
		t.Errorf("expires_at - created_at = %v, want the configured 300ms", got)
	}
	clock.Add(time.Second)
	ended := waitEnded(t, ts.Client, b.ID, 15*time.Second)
	c := ended.RequestCounts
	if c.Expired < 5 || c.Succeeded > 1 || countsSum(c) != 6 || c.Canceled != 0 {
		t.Errorf("counts %+v, want at most the one request in flight succeeded and the others expired", c)
	}
	res := sdkResults(t, ts.Client, b.ID)
	expired := 0
	for id, r := range res {
		if r.Result.Type == "expired" {
			expired++
			if r.Result.AsExpired().Type != "expired" {
				t.Errorf("%s: expired result does not decode: %s", id, r.Result.RawJSON())
			}
		}
	}
	if len(res) != 6 || int64(expired) != c.Expired {
		t.Errorf("%d results with %d expired, want 6 with %d expired", len(res), expired, c.Expired)
	}
}

// TestExpiryDoesNotSendClaimedRequests: a request that was claimed ahead of
// time but not yet sent when its batch expired must not be sent afterwards;
// it is expired ("Batch reached its 24 hour expiration before this request
// could be sent to the model") at once, without waiting for a free worker.
// The clock is injected, so the expiry happens exactly when the test says.
func TestExpiryDoesNotSendClaimedRequests(t *testing.T) {
	t.Parallel()
	up := newGatedUpstream(t)
	clock := &testClock{now: time.Now()}
	ts := newTestServer(t, withGatedUpstream(up, 1), withConfig(func(c *server.Config) {
		c.Now = clock.Now
		c.Batch.ExpireAfter = time.Hour
		// The lease outlasts the clock's jump, so the request in flight
		// stays leased.
		c.Dispatch.Lease = 24 * time.Hour
	}))
	ctx := context.Background()
	var reqs []anthropic.MessageBatchNewParamsRequest
	for i := range 4 {
		reqs = append(reqs, sdkRequest(fmt.Sprint("r", i), fmt.Sprint("r", i), 16))
	}
	b := sdkBatch(t, ts.Client, reqs...)
	// One request at a time, all four claimed in one go: r0 is in flight,
	// r1..r3 wait for the worker.
	if got := up.waitStarted(t, 1); got[0] != "r0" {
		t.Fatalf("first call %q, want r0", got[0])
	}
	clock.Add(time.Hour + time.Second)
	waitFor(t, 20*time.Second, "the unsent requests to expire while r0 is in flight", func() bool {
		got, err := ts.Client.Messages.Batches.Get(ctx, b.ID, anthropic.MessageBatchGetParams{})
		if err != nil {
			t.Fatal(err)
		}
		return got.RequestCounts.Expired == 3 && got.RequestCounts.Processing == 1
	})
	up.release()
	ended := waitEnded(t, ts.Client, b.ID, 20*time.Second)
	if c := ended.RequestCounts; c.Succeeded != 1 || c.Expired != 3 {
		t.Errorf("counts %+v, want 1 succeeded and 3 expired", c)
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("the upstream got %d calls, want 1: a request was sent after its batch expired", n)
	}
	for id, r := range sdkResults(t, ts.Client, b.ID) {
		if want := map[bool]string{true: "succeeded", false: "expired"}[id == "r0"]; r.Result.Type != want {
			t.Errorf("%s: %s, want %s", id, r.Result.Type, want)
		}
	}
}

// TestCancelDoesNotSendClaimedRequests: cancel lets requests already in
// flight finish, but requests claimed ahead and not yet sent are canceled
// ("User canceled the batch before this request could be sent to the
// model") at once: not sent after the cancel, and not left waiting for a
// free worker (with two workers busy with long requests, that took 14 s).
func TestCancelDoesNotSendClaimedRequests(t *testing.T) {
	t.Parallel()
	up := newGatedUpstream(t)
	ts := newTestServer(t, withGatedUpstream(up, 2))
	ctx := context.Background()
	var reqs []anthropic.MessageBatchNewParamsRequest
	for i := range 8 {
		reqs = append(reqs, sdkRequest(fmt.Sprint("r", i), fmt.Sprint("r", i), 16))
	}
	b := sdkBatch(t, ts.Client, reqs...)
	// All eight are claimed in one go; two are in flight, six wait.
	sent := map[string]bool{}
	for _, p := range up.waitStarted(t, 2) {
		sent[p] = true
	}
	if _, err := ts.Client.Messages.Batches.Cancel(ctx, b.ID, anthropic.MessageBatchCancelParams{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the unsent requests to be canceled while two are in flight", func() bool {
		got, err := ts.Client.Messages.Batches.Get(ctx, b.ID, anthropic.MessageBatchGetParams{})
		if err != nil {
			t.Fatal(err)
		}
		return got.RequestCounts.Canceled == 6 && got.RequestCounts.Processing == 2
	})
	up.release()
	waitEnded(t, ts.Client, b.ID, 20*time.Second)
	if n := up.calls.Load(); n != 2 {
		t.Errorf("the upstream got %d calls, want 2: a request was sent after the cancel", n)
	}
	for id, r := range sdkResults(t, ts.Client, b.ID) {
		if want := map[bool]string{true: "succeeded", false: "canceled"}[sent[id]]; r.Result.Type != want {
			t.Errorf("%s: %s, want %s", id, r.Result.Type, want)
		}
	}
}

func TestBetaClient(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	ctx := context.Background()
	rec := &recorder{}
	// The v1 Go SDK's beta methods add ?beta=true and send every
	// anthropic-beta value as its own header line; TS and Python join them
	// with commas. The v2 SDK sends betas only when asked. Send all forms.
	c := newClient(ts.URL, "test", option.WithMiddleware(rec.middleware),
		option.WithQuery("beta", "true"),
		option.WithHeaderAdd("anthropic-beta", "message-batches-2024-09-24"),
		option.WithHeaderAdd("anthropic-beta", "files-api-2025-04-14"))
	betas := []anthropic.AnthropicBeta{"message-batches-2024-09-24", "some-other-beta"} // the beta old clients still send
	bc := c.Beta.Messages.Batches

	req := func(id, prompt string) anthropic.BetaMessageBatchNewParamsRequest {
		return anthropic.BetaMessageBatchNewParamsRequest{CustomID: id, Params: anthropic.BetaMessageBatchNewParamsRequestParams{
			Model: testModel, MaxTokens: 64,
			Messages: []anthropic.BetaMessageParam{anthropic.NewBetaUserMessage(anthropic.NewBetaTextBlock(prompt))},
		}}
	}
	b, err := bc.New(ctx, anthropic.BetaMessageBatchNewParams{Betas: betas, Requests: []anthropic.BetaMessageBatchNewParamsRequest{
		req("ok", "hello beta"), req("bad", "[[sim error=permission_error]]"),
	}})
	if err != nil {
		t.Fatalf("beta create: %v", err)
	}
	if b.ProcessingStatus != "in_progress" || b.RequestCounts.Processing != 2 {
		t.Errorf("beta create: %s %+v", b.ProcessingStatus, b.RequestCounts)
	}
	var got *anthropic.BetaMessageBatch
	waitFor(t, 10*time.Second, "beta batch to end", func() bool {
		got, err = bc.Get(ctx, b.ID, anthropic.BetaMessageBatchGetParams{Betas: betas})
		if err != nil {
			t.Fatalf("beta get: %v", err)
		}
		return got.ProcessingStatus == "ended"
	})
	if got.RequestCounts.Succeeded != 1 || got.RequestCounts.Errored != 1 {
		t.Errorf("beta counts %+v", got.RequestCounts)
	}

	pager := bc.ListAutoPaging(ctx, anthropic.BetaMessageBatchListParams{Limit: anthropic.Int(1)})
	var ids []string
	for pager.Next() {
		ids = append(ids, pager.Current().ID)
	}
	if err := pager.Err(); err != nil || !slices.Equal(ids, []string{b.ID}) {
		t.Errorf("beta list: %v %v", ids, err)
	}

	s := bc.ResultsStreaming(ctx, b.ID, anthropic.BetaMessageBatchResultsParams{})
	results := map[string]anthropic.BetaMessageBatchIndividualResponse{}
	for s.Next() {
		results[s.Current().CustomID] = s.Current()
	}
	if err := s.Err(); err != nil {
		t.Fatalf("beta results: %v", err)
	}
	s.Close()
	if results["ok"].Result.Type != "succeeded" || results["ok"].Result.AsSucceeded().Message.Role != "assistant" {
		t.Errorf("beta ok result %s", results["ok"].Result.RawJSON())
	}
	if e := results["bad"].Result.AsErrored().Error; e.Error.Type != "permission_error" {
		t.Errorf("beta bad result %s, want errored permission_error", results["bad"].Result.RawJSON())
	}

	if _, err := bc.Cancel(ctx, b.ID, anthropic.BetaMessageBatchCancelParams{}); err == nil || apiError(t, err).StatusCode != 400 {
		t.Errorf("beta cancel of an ended batch: %v, want 400", err)
	}
	del, err := bc.Delete(ctx, b.ID, anthropic.BetaMessageBatchDeleteParams{})
	if err != nil || del.ID != b.ID || del.Type != "message_batch_deleted" {
		t.Errorf("beta delete: %+v %v", del, err)
	}

	reqs := rec.take()
	if len(reqs) < 6 {
		t.Fatalf("recorded %d requests, want at least 6", len(reqs))
	}
	for _, r := range reqs {
		if r.URL.Query().Get("beta") != "true" {
			t.Errorf("%s %s: no beta=true", r.Method, r.URL)
		}
		if h := strings.Join(r.Header.Values("anthropic-beta"), ","); !strings.Contains(h, "message-batches-2024-09-24") {
			t.Errorf("%s %s: anthropic-beta %q", r.Method, r.URL, h)
		}
	}
}

func TestResultsWireFormat(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	reqs := nRequests("ok", 5, "hello\r\nwith a CRLF and \"quotes\" and \u2028 separators")
	reqs = append(reqs, rawRequest{CustomID: "err", Params: params("[[sim error=invalid_request_error]]")})
	reqs = append(reqs, rawRequest{CustomID: "err2", Params: map[string]any{"model": testModel}})
	b := createRaw(t, ts.URL, createBody(t, reqs...))
	waitEnded(t, ts.Client, b.ID, 10*time.Second)

	// The SDKs send different Accept headers; none may be refused.
	for _, accept := range []string{"", "application/x-jsonl", "application/binary", "application/json", "text/html", "*/*"} {
		t.Run("accept "+accept, func(t *testing.T) {
			t.Parallel()
			r := do(t, "GET", ts.URL+"/v1/messages/batches/"+b.ID+"/results", nil, "Accept", accept)
			if r.Status != 200 {
				t.Fatalf("status %d: %s", r.Status, r.Body)
			}
			lines := parseJSONL(t, r)
			if len(lines) != 7 {
				t.Errorf("%d result lines, want 7", len(lines))
			}
			for id, l := range lines {
				if (l.Result.Type == "succeeded") != strings.HasPrefix(id, "ok") {
					t.Errorf("%s: %s", id, l.Result.Type)
				}
				if l.Result.Type == "errored" && (l.Result.Error == nil || l.Result.Error.Type != "error" || l.Result.Error.Error.Type != "invalid_request_error") {
					t.Errorf("%s: errored result is not the nested error envelope", id)
				}
			}
		})
	}
}

func TestResultsURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		publicURL string
		headers   []string
		want      func(base string) string
	}{
		{"derived from the request", "", nil, func(base string) string { return base }},
		{"public URL", "https://batchd.example", nil, func(string) string { return "https://batchd.example" }},
		{"public URL with slash and path", "https://example.com/batchd/", nil, func(string) string { return "https://example.com/batchd" }},
		{"forwarded by a proxy", "", []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "batchd.internal:8443"},
			func(string) string { return "https://batchd.internal:8443" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, withConfig(func(c *server.Config) { c.PublicURL = tt.publicURL }))
			b := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "hi")...), tt.headers...)
			if b.ResultsURL != nil {
				t.Errorf("results_url %q before the batch ended, want null", *b.ResultsURL)
			}
			ended := waitEndedRaw(t, ts.URL, b.ID, 10*time.Second, tt.headers...)
			want := tt.want(ts.URL) + "/v1/messages/batches/" + b.ID + "/results"
			if ended.ResultsURL == nil || *ended.ResultsURL != want {
				t.Errorf("results_url %v, want %q", deref(ended.ResultsURL), want)
			}
			// List shows the same URL.
			r := do(t, "GET", ts.URL+"/v1/messages/batches", nil, tt.headers...)
			var page struct{ Data []wireBatch }
			json.Unmarshal(r.Body, &page)
			if len(page.Data) != 1 || page.Data[0].ResultsURL == nil || *page.Data[0].ResultsURL != want {
				t.Errorf("list: results_url %+v, want %q", page.Data, want)
			}
			if tt.publicURL == "" && tt.headers == nil {
				// The URL is absolute and works as given (how TS and Python fetch results).
				parseJSONL(t, do(t, "GET", *ended.ResultsURL, nil))
			}
		})
	}
}

func TestRequestIDOnEveryResponse(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 2, "hi")...))
	waitEnded(t, ts.Client, b.ID, 10*time.Second)
	seen := map[string]bool{}
	tests := []struct {
		method, path string
		body         any
		status       int
	}{
		{"POST", "/v1/messages/batches", createBody(t, nRequests("r", 1, "x")...), 200},
		{"GET", "/v1/messages/batches", nil, 200},
		{"GET", "/v1/messages/batches/" + b.ID, nil, 200},
		{"GET", "/v1/messages/batches/" + b.ID + "/results", nil, 200},
		{"GET", "/v1/messages/batches/msgbatch_nope", nil, 404},
		{"POST", "/v1/messages/batches", "{", 400},
		{"POST", "/v1/messages/batches/" + b.ID + "/cancel", nil, 400},
		{"GET", "/v1/nothing/here", nil, 404},
		{"GET", "/healthz", nil, 200},
	}
	for _, tt := range tests {
		r := do(t, tt.method, ts.URL+tt.path, tt.body) // do checks the header is there
		if r.Status != tt.status {
			t.Errorf("%s %s: %d, want %d: %s", tt.method, tt.path, r.Status, tt.status, r.Body)
		}
		id := r.Header.Get("request-id")
		if !strings.HasPrefix(id, "req_") || seen[id] {
			t.Errorf("%s %s: request-id %q, want a fresh req_ id", tt.method, tt.path, id)
		}
		seen[id] = true
		if r.Status >= 400 {
			wantError(t, r, tt.status, map[int]string{400: "invalid_request_error", 404: "not_found_error"}[tt.status])
		}
	}
	// The SDK surfaces the request id of errors.
	_, err := ts.Client.Messages.Batches.Get(context.Background(), "msgbatch_nope", anthropic.MessageBatchGetParams{})
	if ae := apiError(t, err); !strings.HasPrefix(ae.RequestID, "req_") || ae.StatusCode != 404 || ae.Type() != "not_found_error" {
		t.Errorf("SDK error: request id %q status %d type %q", ae.RequestID, ae.StatusCode, ae.Type())
	}
}
