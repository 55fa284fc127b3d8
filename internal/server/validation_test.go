package server_test

// Synchronous validation over raw HTTP: every envelope error of create is a
// 400 invalid_request_error naming the field, size and count limits, the
// in-progress limit, list parameters, unknown endpoints and state conflicts.

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/server"
)

func TestCreateEnvelopeValidation(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withoutDispatcher())
	p := `{"model":"` + testModel + `","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`
	one := func(req string) string { return `{"requests":[` + req + `]}` }
	req := func(id string) string { return `{"custom_id":` + id + `,"params":` + p + `}` }

	tests := []struct {
		name     string
		body     string
		contains []string
	}{
		{"custom_id too long", one(req(`"` + strings.Repeat("x", 65) + `"`)), []string{"requests.0.custom_id", "at most 64 characters"}},
		{"custom_id with a space", one(req(`"has space"`)), []string{"requests.0.custom_id", "pattern"}},
		{"custom_id with a dot", one(req(`"a.b"`)), []string{"requests.0.custom_id", "pattern"}},
		{"custom_id non-ASCII", one(req(`"ünï"`)), []string{"requests.0.custom_id", "pattern"}},
		{"custom_id with a newline", one(req(`"a\nb"`)), []string{"requests.0.custom_id", "pattern"}},
		{"custom_id with a quote", one(req(`"a\"b"`)), []string{"requests.0.custom_id", "pattern"}},
		{"custom_id empty", one(req(`""`)), []string{"requests.0.custom_id", "at least 1 character"}},
		{"custom_id missing", one(`{"params":` + p + `}`), []string{"requests.0.custom_id", "Field required"}},
		{"custom_id a number", one(req(`5`)), []string{"requests.0.custom_id", "valid string"}},
		{"custom_id null", one(req(`null`)), []string{"requests.0.custom_id", "valid string"}},
		{"custom_id an object", one(req(`{"a":1}`)), []string{"requests.0.custom_id", "valid string"}},
		{"error in the third request", `{"requests":[` + req(`"a"`) + `,` + req(`"b"`) + `,` + req(`"c d"`) + `]}`, []string{"requests.2.custom_id"}},
		{"duplicate custom_id", `{"requests":[` + req(`"a"`) + `,` + req(`"b"`) + `,` + req(`"a"`) + `]}`, []string{"requests.2.custom_id", "unique"}},
		{"requests empty", `{"requests":[]}`, []string{"requests", "at least 1"}},
		{"requests missing", `{}`, []string{"requests", "Field required"}},
		{"requests missing, other keys", `{"request":[` + req(`"a"`) + `]}`, []string{"requests", "Field required"}},
		{"requests an object", `{"requests":{}}`, []string{"requests", "valid list"}},
		{"requests a string", `{"requests":"a"}`, []string{"requests", "valid list"}},
		{"requests null", `{"requests":null}`, []string{"requests", "valid list"}},
		{"request not an object", `{"requests":[1]}`, []string{"requests.0", "valid dictionary"}},
		{"request null", `{"requests":[null]}`, []string{"requests.0", "valid dictionary"}},
		{"params missing", one(`{"custom_id":"a"}`), []string{"requests.0.params", "Field required"}},
		{"params a string", one(`{"custom_id":"a","params":"x"}`), []string{"requests.0.params", "valid dictionary"}},
		{"params an array", one(`{"custom_id":"a","params":[]}`), []string{"requests.0.params", "valid dictionary"}},
		{"params null", one(`{"custom_id":"a","params":null}`), []string{"requests.0.params", "valid dictionary"}},
		{"params a number", one(`{"custom_id":"a","params":1}`), []string{"requests.0.params", "valid dictionary"}},
		{"body an array", `[]`, []string{"body", "valid dictionary"}},
		{"body a string", `"requests"`, []string{"body", "valid dictionary"}},
		{"body empty", ``, []string{"body"}},
		{"invalid JSON", `{"requests": [`, []string{"body"}},
		{"not JSON", `requests please`, []string{"body"}},
		{"unterminated string", `{"requests":[{"custom_id":"a`, []string{"body"}},
		{"bad token inside params", one(`{"custom_id":"a","params":{"model":tru}}`), []string{"body"}},
		{"trailing garbage", one(req(`"a"`)) + `x`, []string{"body"}},
		{"trailing number", one(req(`"a"`)) + ` 1`, []string{"body", "after the JSON object"}},
		{"trailing object", one(req(`"a"`)) + `{}`, []string{"body", "after the JSON object"}},
		{"duplicate requests key", `{"requests":[` + req(`"a"`) + `],"requests":[` + req(`"b"`) + `]}`, []string{"requests"}},
	}
	t.Run("rejected", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				r := do(t, "POST", ts.URL+"/v1/messages/batches", []byte(tt.body))
				wantError(t, r, http.StatusBadRequest, "invalid_request_error", tt.contains...)
			})
		}
	})

	accepted := []struct{ name, body string }{
		{"custom_id of 64 characters", one(req(`"` + strings.Repeat("a", 64) + `"`))},
		{"custom_id with every allowed character", one(req(`"azAZ09_-"`))},
		{"unknown keys ignored", `{"extra":{"x":[1,2]},"requests":[{"custom_id":"a","params":` + p + `,"more":null}]}`},
		{"trailing white space", one(req(`"a"`)) + " \n\t\r\n"},
		{"params empty object (checked later)", one(`{"custom_id":"a","params":{}}`)},
	}
	t.Run("accepted", func(t *testing.T) {
		for _, tt := range accepted {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				b := createRaw(t, ts.URL, []byte(tt.body))
				if b.ProcessingStatus != "in_progress" || b.RequestCounts.Processing != 1 {
					t.Errorf("created %+v", b)
				}
			})
		}
	})

	// A rejected create leaves nothing behind.
	r := do(t, "GET", ts.URL+"/v1/messages/batches?limit=1000", nil)
	var page struct{ Data []wireBatch }
	if err := json.Unmarshal(r.Body, &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != len(accepted) {
		t.Errorf("list shows %d batches, want only the %d accepted ones", len(page.Data), len(accepted))
	}
}

func TestCreateBodyTooLarge(t *testing.T) {
	t.Parallel()
	const limit = 4096
	ts := newTestServer(t, withoutDispatcher(), withConfig(func(c *server.Config) { c.Batch.MaxBodyBytes = limit }))
	valid := createBody(t, nRequests("r", 3, "hi")...)
	pad := func(n int) []byte { // valid JSON of exactly n bytes
		return append(bytes.Clone(valid), bytes.Repeat([]byte(" "), n-len(valid))...)
	}
	many := createBody(t, nRequests("r", 600, "hello")...) // ~60 KB
	// One long string that the server skips as it streams still counts.
	longString := []byte(`{"requests":[{"custom_id":"a","junk":"` + strings.Repeat("a", 100_000) + `"}]}`)

	tests := []struct {
		name string
		body []byte
		ok   bool
	}{
		{"exactly at the limit", pad(limit), true},
		{"one byte over", pad(limit + 1), false},
		{"many requests", many, false},
		{"one long string", longString, false},
	}
	for _, tt := range tests {
		for _, chunked := range []bool{false, true} {
			name := tt.name + "/content-length"
			if chunked {
				name = tt.name + "/chunked"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				var body any = tt.body
				if chunked {
					body = io.MultiReader(bytes.NewReader(tt.body)) // length unknown
				}
				r := do(t, "POST", ts.URL+"/v1/messages/batches", body)
				if tt.ok {
					wantBatch(t, r)
					return
				}
				wantError(t, r, http.StatusRequestEntityTooLarge, "request_too_large")
			})
		}
	}
}

func TestCreateMaxRequests(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withoutDispatcher(), withConfig(func(c *server.Config) { c.Batch.MaxRequests = 3 }))
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 3, "hi")...))
	if b.RequestCounts.Processing != 3 {
		t.Errorf("counts %+v", b.RequestCounts)
	}
	r := do(t, "POST", ts.URL+"/v1/messages/batches", createBody(t, nRequests("r", 4, "hi")...))
	wantError(t, r, http.StatusBadRequest, "invalid_request_error", "requests", "at most 3")
}

func TestCreateTooManyInProgress(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withoutDispatcher(), withConfig(func(c *server.Config) { c.Batch.MaxInProgress = 2 }))
	keyA, _ := addKey(t, ts.Srv.Store, "a")
	keyB, _ := addKey(t, ts.Srv.Store, "b")
	body := createBody(t, nRequests("r", 1, "hi")...)
	first := createRaw(t, ts.URL, body, "x-api-key", "", "x-api-key", keyA)
	createRaw(t, ts.URL, body, "x-api-key", "", "x-api-key", keyA)

	r := do(t, "POST", ts.URL+"/v1/messages/batches", body, "x-api-key", "", "x-api-key", keyA)
	wantError(t, r, http.StatusTooManyRequests, "rate_limit_error")
	if secs, err := strconv.Atoi(r.Header.Get("retry-after")); err != nil || secs < 1 {
		t.Errorf("retry-after %q, want a positive number of seconds", r.Header.Get("retry-after"))
	}

	// The limit is per workspace.
	createRaw(t, ts.URL, body, "x-api-key", "", "x-api-key", keyB)

	// Once a batch ends there is room again.
	c := wantBatch(t, do(t, "POST", ts.URL+"/v1/messages/batches/"+first.ID+"/cancel", nil, "x-api-key", "", "x-api-key", keyA))
	if c.ProcessingStatus != "ended" {
		t.Fatalf("cancel without a dispatcher: %s, want ended at once", c.ProcessingStatus)
	}
	createRaw(t, ts.URL, body, "x-api-key", "", "x-api-key", keyA)
}

func TestListParamValidation(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withoutDispatcher())
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "hi")...))
	tests := []struct {
		query    string
		contains []string
	}{
		{"limit=0", []string{"limit", "got 0"}},
		{"limit=1001", []string{"limit", "got 1001"}},
		{"limit=-1", []string{"limit", "got -1"}},
		{"limit=abc", []string{"limit"}},
		{"limit=1.5", []string{"limit"}},
		{"limit=99999999999999999999", []string{"limit"}},
		{"after_id=" + b.ID + "&before_id=" + b.ID, []string{"before_id", "after_id"}},
		{"after_id=msgbatch_nope", []string{"after_id"}},
		{"before_id=msgbatch_nope", []string{"before_id"}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			t.Parallel()
			wantError(t, do(t, "GET", ts.URL+"/v1/messages/batches?"+tt.query, nil), http.StatusBadRequest, "invalid_request_error", tt.contains...)
		})
	}
}

func TestUnknownEndpoint(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withoutDispatcher())
	for _, tt := range []struct{ method, path string }{
		{"POST", "/"}, // GET / is the dashboard
		{"GET", "/v1/nothing"},
		{"POST", "/v1/messages"},
		{"GET", "/v1/messages/batches/x/y/z"},
		{"POST", "/v2/messages/batches"},
		{"PATCH", "/v1/messages/batches/msgbatch_x"},
	} {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			t.Parallel()
			wantError(t, do(t, tt.method, ts.URL+tt.path, nil), http.StatusNotFound, "not_found_error")
		})
	}
}

func TestStateConflicts(t *testing.T) {
	t.Parallel()
	// Without a dispatcher the batch stays in_progress.
	ts := newTestServer(t, withoutDispatcher())
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 3, "hi")...))
	base := ts.URL + "/v1/messages/batches/" + b.ID

	wantError(t, do(t, "DELETE", base, nil), http.StatusBadRequest, "invalid_request_error", "in progress")
	wantError(t, do(t, "GET", base+"/results", nil), http.StatusBadRequest, "invalid_request_error", "partial=true")
	wantError(t, do(t, "POST", base+"/retry", nil), http.StatusBadRequest, "invalid_request_error")
	partial := do(t, "GET", base+"/results?partial=true", nil)
	if partial.Status != 200 || len(parseJSONL(t, partial)) != 0 {
		t.Errorf("partial results of an untouched batch: %d %q, want 200 and no lines", partial.Status, partial.Body)
	}

	// Cancel settles every pending request at once; with none running the
	// batch ends in the same call.
	c := wantBatch(t, do(t, "POST", base+"/cancel", nil))
	if c.ProcessingStatus != "ended" || c.RequestCounts.Canceled != 3 || c.CancelInitiatedAt == nil || c.EndedAt == nil || c.ResultsURL == nil {
		t.Errorf("cancel: %+v, want ended with 3 canceled", c)
	}
	wantError(t, do(t, "POST", base+"/cancel", nil), http.StatusBadRequest, "invalid_request_error", "ended")
	lines := resultsRaw(t, ts.URL, b.ID, "")
	for _, id := range []string{"r-0", "r-1", "r-2"} {
		if lines[id].Result.Type != "canceled" {
			t.Errorf("%s: %q, want canceled", id, lines[id].Result.Type)
		}
	}
	del := do(t, "DELETE", base, nil)
	if del.Status != 200 || !bytes.Equal(del.Body, []byte(`{"id":"`+b.ID+`","type":"message_batch_deleted"}`)) {
		t.Errorf("delete: %d %s", del.Status, del.Body)
	}
}

func TestPartialResults(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withConfig(func(c *server.Config) { c.Dispatch.Concurrency = 1 }))
	reqs := []rawRequest{
		{CustomID: "fast-0", Params: params("one")},
		{CustomID: "fast-1", Params: params("two")},
		{CustomID: "slow", Params: params("[[sim latency=1s]] three")},
	}
	reqs = append(reqs, nRequests("after", 3, "four")...)
	b := createRaw(t, ts.URL, createBody(t, reqs...))
	var before wireBatch
	waitFor(t, 10*time.Second, "the fast requests to succeed", func() bool {
		before = getRaw(t, ts.URL, b.ID)
		return before.RequestCounts.Succeeded >= 2
	})
	lines := resultsRaw(t, ts.URL, b.ID, "?partial=true")
	after := getRaw(t, ts.URL, b.ID)
	if after.ProcessingStatus != "in_progress" {
		t.Fatalf("batch already %s; the slow request should still be running", after.ProcessingStatus)
	}
	settled := func(w wireBatch) int { return int(w.RequestCounts.Succeeded + w.RequestCounts.Errored) }
	if n := len(lines); n < settled(before) || n > settled(after) {
		t.Errorf("partial results have %d lines, want between %d and %d (the settled ones)", n, settled(before), settled(after))
	}
	for _, id := range []string{"fast-0", "fast-1"} {
		if lines[id].Result.Type != "succeeded" {
			t.Errorf("partial: %s is %q, want succeeded", id, lines[id].Result.Type)
		}
	}
	for id := range lines {
		if id == "slow" || strings.HasPrefix(id, "after") {
			t.Errorf("partial results include %s, which cannot have settled yet", id)
		}
	}
	wantError(t, do(t, "GET", ts.URL+"/v1/messages/batches/"+b.ID+"/results", nil), http.StatusBadRequest, "invalid_request_error")
	wantError(t, do(t, "GET", ts.URL+"/v1/messages/batches/"+b.ID+"/results?partial=false", nil), http.StatusBadRequest, "invalid_request_error")

	waitEndedRaw(t, ts.URL, b.ID, 15*time.Second)
	full := resultsRaw(t, ts.URL, b.ID, "")
	if len(full) != 6 {
		t.Errorf("%d results after the end, want 6", len(full))
	}
	if len(resultsRaw(t, ts.URL, b.ID, "?partial=true")) != 6 {
		t.Errorf("partial=true on an ended batch should give every result")
	}
}
