package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"
)

// resultsPageJSON is the answer of the results endpoint's page extension.
type resultsPageJSON struct {
	Data      []resultLine `json:"data"`
	HasMore   bool         `json:"has_more"`
	NextAfter *string      `json:"next_after"`
}

func getResultsPage(t *testing.T, url, id, query string) resultsPageJSON {
	t.Helper()
	r := do(t, "GET", url+"/v1/messages/batches/"+id+"/results?"+query, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("results page %s: status %d: %s", query, r.Status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("results page Content-Type %q", ct)
	}
	var p resultsPageJSON
	if err := json.Unmarshal(r.Body, &p); err != nil {
		t.Fatalf("results page: %v: %s", err, r.Body)
	}
	return p
}

// TestResultsPage pages a batch's results with the extension parameters
// (limit, after, result_type, custom_id), and checks that without them
// the endpoint still streams the whole JSONL.
func TestResultsPage(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	var reqs []rawRequest
	for i := range 7 {
		prompt := "hello"
		if i%3 == 0 {
			prompt = "[[sim error=invalid_request_error]] no"
		}
		reqs = append(reqs, rawRequest{CustomID: fmt.Sprintf("doc-%d", i), Params: params(prompt)})
	}
	b := createRaw(t, ts.URL, createBody(t, reqs...))
	waitFor(t, 60*time.Second, "batch ended", func() bool { return getRaw(t, ts.URL, b.ID).ProcessingStatus == "ended" })

	if all := resultsRaw(t, ts.URL, b.ID, ""); len(all) != 7 {
		t.Fatalf("plain results: %d lines", len(all))
	}
	page := func(query string) []string {
		t.Helper()
		var ids []string
		after := ""
		for range 20 {
			p := getResultsPage(t, ts.URL, b.ID, query+after)
			for _, l := range p.Data {
				ids = append(ids, l.CustomID+":"+l.Result.Type)
			}
			if !p.HasMore {
				if p.NextAfter != nil {
					t.Errorf("%s: next_after %q at the end", query, *p.NextAfter)
				}
				return ids
			}
			if p.NextAfter == nil || len(p.Data) == 0 {
				t.Fatalf("%s: has_more without a cursor: %+v", query, p)
			}
			after = "&after=" + *p.NextAfter
		}
		t.Fatalf("%s: more than 20 pages", query)
		return nil
	}
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"limit=3", []string{"doc-0:errored", "doc-1:succeeded", "doc-2:succeeded", "doc-3:errored", "doc-4:succeeded", "doc-5:succeeded", "doc-6:errored"}},
		{"limit=1000", []string{"doc-0:errored", "doc-1:succeeded", "doc-2:succeeded", "doc-3:errored", "doc-4:succeeded", "doc-5:succeeded", "doc-6:errored"}},
		{"limit=1&result_type=errored", []string{"doc-0:errored", "doc-3:errored", "doc-6:errored"}},
		{"result_type=succeeded&custom_id=doc-", []string{"doc-1:succeeded", "doc-2:succeeded", "doc-4:succeeded", "doc-5:succeeded"}},
		{"custom_id=doc-5", []string{"doc-5:succeeded"}},
		{"custom_id=nope", nil},
		{"result_type=expired", nil},
	} {
		if got := page(tc.query); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.query, got, tc.want)
		}
	}
	// An errored result carries its message, as in the stream.
	p := getResultsPage(t, ts.URL, b.ID, "custom_id=doc-3")
	if len(p.Data) != 1 || p.Data[0].Result.Error == nil || p.Data[0].Result.Error.Error.Type != "invalid_request_error" {
		t.Fatalf("errored line: %+v", p)
	}

	for _, bad := range []struct{ query, contains string }{
		{"limit=0", "limit"},
		{"limit=1001", "limit"},
		{"limit=x", "limit"},
		{"after=x", "after"},
		{"result_type=bogus", "result_type"},
		{"custom_id=a%20b", "custom_id"},
	} {
		wantError(t, do(t, "GET", ts.URL+"/v1/messages/batches/"+b.ID+"/results?"+bad.query, nil), 400, "invalid_request_error", bad.contains)
	}
	wantError(t, do(t, "GET", ts.URL+"/v1/messages/batches/msgbatch_nope/results?limit=1", nil), 404, "not_found_error")
}

// TestResultsPageRunningBatch: a page of a running batch needs
// partial=true, as the stream does.
func TestResultsPageRunningBatch(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withoutDispatcher())
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 3, "hi")...))
	wantError(t, do(t, "GET", ts.URL+"/v1/messages/batches/"+b.ID+"/results?limit=10", nil), 400, "invalid_request_error", "partial=true")
	if p := getResultsPage(t, ts.URL, b.ID, "limit=10&partial=true"); len(p.Data) != 0 || p.HasMore {
		t.Fatalf("nothing settled yet: %+v", p)
	}
}
