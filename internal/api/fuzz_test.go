package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/server"
)

// Limits of the fuzzed server: small, so that the fuzzer reaches them.
const (
	fuzzMaxRequests  = 4
	fuzzMaxBodyBytes = 8 << 10
)

// FuzzCreate throws arbitrary bodies at POST /v1/messages/batches, sent with
// a known length or streamed (chunked). Whatever the body, the handler
// answers 200, 400, 413 or 429 with a well-formed response, never 500, never
// panics and never hangs; a 200 is a batch that GET then returns.
func FuzzCreate(f *testing.F) {
	p := `{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`
	seeds := []string{
		`{"requests":[{"custom_id":"a","params":` + p + `}]}`,
		`{"requests":[{"custom_id":"a","params":` + p + `},{"custom_id":"b","params":{}}]}`,
		`{"requests":[{"custom_id":"a","params":` + p + `}]}` + " \n",
		`{"requests":[{"custom_id":"` + strings.Repeat("x", 64) + `","params":{}}]}`,
		`{"requests":[{"custom_id":"` + strings.Repeat("x", 65) + `","params":{}}]}`,
		`{"requests":[{"custom_id":"a b","params":{}}]}`,
		`{"requests":[{"custom_id":"","params":{}}]}`,
		`{"requests":[{"params":{}}]}`,
		`{"requests":[{"custom_id":7,"params":{}}]}`,
		`{"requests":[{"custom_id":"a","params":{}},{"custom_id":"a","params":{}}]}`,
		`{"requests":[{"custom_id":"a","params":{}},{"custom_id":"b","params":{}},{"custom_id":"c","params":{}},{"custom_id":"d","params":{}},{"custom_id":"e","params":{}}]}`,
		`{"requests":[]}`,
		`{}`,
		`{"requests":{}}`,
		`{"requests":null}`,
		`{"requests":[{"custom_id":"a"}]}`,
		`{"requests":[{"custom_id":"a","params":"x"}]}`,
		`{"requests":[{"custom_id":"a","params":[]}]}`,
		`{"requests":[{"custom_id":"a","params":null}]}`,
		`{"requests":[{"custom_id":"a","params":{}}],"requests":[]}`,
		`{"requests":[{"custom_id":"a","params":{}}]}x`,
		`{"requests":[{"custom_id":"a","params":{}}]}{}`,
		`{"requests":[`,
		`{"requests":[{"custom_id":"\u0000","params":{}}]}`,
		`{"requests":[{"custom_id":"\ud800","params":{"x":"\udfff"}}]}`,
		"{\"requests\":[{\"custom_id\":\"\xff\",\"params\":{}}]}",
		`{"requests":[{"custom_id":"a","params":{"a":` + strings.Repeat("[", 2000) + strings.Repeat("]", 2000) + `}}]}`,
		`{"requests":[{"custom_id":"a","params":{"n":1e999999}}]}`,
		`{"requests":[{"custom_id":"a","params":{}}]}` + strings.Repeat(" ", fuzzMaxBodyBytes),
		`{"requests":[{"custom_id":"a","params":{"x":"` + strings.Repeat("y", fuzzMaxBodyBytes) + `"}}]}`,
		`[]`,
		`null`,
		`"requests"`,
		``,
		`{"requests":[{"custom_id":"a","params":{}}]`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}

	// One server for the whole target, not one per input. Its dispatcher is
	// not started: the target is the create path, and background SQL work
	// would only slow the fuzzer (SQLite is coverage-instrumented too).
	// Batches therefore never end, so the in-progress limit is set out of
	// reach; 429 stays an allowed answer all the same.
	srv, err := server.Open(context.Background(), server.Config{
		DataDir: f.TempDir(),
		Batch: batch.Config{
			MaxRequests:   fuzzMaxRequests,
			MaxBodyBytes:  fuzzMaxBodyBytes,
			MaxInProgress: 1 << 30,
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		srv.Close(ctx)
	})
	h := srv.Handler()

	f.Fuzz(func(t *testing.T, body []byte, chunked bool) {
		var rd io.Reader = bytes.NewReader(body)
		if chunked {
			rd = io.MultiReader(rd) // hide the length
		}
		req := httptest.NewRequest("POST", "/v1/messages/batches", rd)
		if chunked {
			req.ContentLength = -1
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("x-api-key", "test")
		res := serve(t, h, req)

		switch res.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		default:
			t.Fatalf("status %d for body %q: %s", res.Code, body, res.Body)
		}
		if res.Header().Get("request-id") == "" {
			t.Errorf("no request-id header")
		}
		if ct := res.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if res.Code != http.StatusOK {
			var env struct {
				Type  string `json:"type"`
				Error struct {
					Type    string `json:"type"`
					Message string `json:"message"`
				} `json:"error"`
				RequestID string `json:"request_id"`
			}
			if err := json.Unmarshal(res.Body.Bytes(), &env); err != nil || env.Type != "error" || env.Error.Type == "" || env.Error.Message == "" || env.RequestID == "" {
				t.Fatalf("status %d with a body that is not the error envelope: %s", res.Code, res.Body)
			}
			want := map[int]string{400: "invalid_request_error", 413: "request_too_large", 429: "rate_limit_error"}[res.Code]
			if env.Error.Type != want {
				t.Errorf("status %d with error type %q, want %q", res.Code, env.Error.Type, want)
			}
			return
		}

		var created struct {
			ID               string `json:"id"`
			ProcessingStatus string `json:"processing_status"`
			RequestCounts    struct {
				Processing int `json:"processing"`
			} `json:"request_counts"`
		}
		if err := json.Unmarshal(res.Body.Bytes(), &created); err != nil || created.ID == "" {
			t.Fatalf("200 with body %s: %v", res.Body, err)
		}
		if n := created.RequestCounts.Processing; n < 1 || n > fuzzMaxRequests || created.ProcessingStatus != "in_progress" {
			t.Errorf("created %s", res.Body)
		}
		get := httptest.NewRequest("GET", "/v1/messages/batches/"+created.ID, nil)
		get.Header.Set("x-api-key", "test")
		got := serve(t, h, get)
		if got.Code != http.StatusOK || !strings.Contains(got.Body.String(), `"id":"`+created.ID+`"`) {
			t.Fatalf("GET of created batch %s: %d %s", created.ID, got.Code, got.Body)
		}
	})
}

// serve runs one request through h with a deadline, failing the test if the
// handler does not return in time. A panic in the handler fails the test
// as it is not recovered here.
func serve(t *testing.T, h http.Handler, req *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req = req.WithContext(ctx)
	rec := httptest.NewRecorder()
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		h.ServeHTTP(rec, req)
	}()
	select {
	case p := <-done:
		if p != nil {
			t.Fatalf("handler panicked: %v", p)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("handler did not return within 15s")
	}
	return rec
}
