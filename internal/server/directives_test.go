package server_test

// Retries through the simulator's directives: transient failures are
// retried up to MaxAttempts and no further, permanent ones are not retried.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/server"
)

func TestRetryDirectives(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		prompt      string
		maxAttempts int
		wantType    string // succeeded, or the error type of an errored result
		wantMessage string // in the errored result's message
	}{
		{"fail=2 with 8 attempts", "[[sim fail=2]]", 8, "succeeded", ""},
		{"fail=2 with 3 attempts: the third succeeds", "[[sim fail=2]]", 3, "succeeded", ""},
		// The simulator names the failing attempt, so the message proves
		// the third attempt was the last one made.
		{"fail=3 with 3 attempts", "[[sim fail=3]]", 3, "overloaded_error", "attempt 3 of 3 failing"},
		{"fail=5 with 3 attempts: exactly 3 made", "[[sim fail=5]]", 3, "overloaded_error", "attempt 3 of 5 failing"},
		{"fail=1 with 1 attempt", "[[sim fail=1]]", 1, "overloaded_error", "attempt 1 of 1 failing"},
		{"latency and fail combined", "[[sim latency=50ms fail=1]]", 2, "succeeded", ""},
		{"error=overloaded_error with 3 attempts", "[[sim error=overloaded_error]]", 3, "overloaded_error", "simulated overloaded_error"},
		{"error=api_error", "[[sim error=api_error]]", 2, "api_error", ""},
		{"error=rate_limit_error", "[[sim error=rate_limit_error]]", 2, "rate_limit_error", ""},
		{"error=timeout_error", "[[sim error=timeout_error]]", 2, "timeout_error", ""},
		{"error=invalid_request_error", "[[sim error=invalid_request_error]]", 8, "invalid_request_error", ""},
		{"directive in a later text block", "", 1, "overloaded_error", "attempt 1 of 1 failing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, withConfig(func(c *server.Config) { c.Dispatch.MaxAttempts = tt.maxAttempts }))
			p := params("please answer " + tt.prompt)
			if tt.prompt == "" {
				p["messages"] = []any{map[string]any{"role": "user", "content": []any{
					map[string]any{"type": "text", "text": "first"},
					map[string]any{"type": "text", "text": "[[sim fail=1]] second"},
				}}}
			}
			b := createRaw(t, ts.URL, createBody(t, rawRequest{CustomID: "r", Params: p}))
			ended := waitEndedRaw(t, ts.URL, b.ID, 10*time.Second)
			res := resultsRaw(t, ts.URL, b.ID, "")["r"].Result
			if tt.wantType == "succeeded" {
				if res.Type != "succeeded" || ended.RequestCounts.Succeeded != 1 {
					t.Errorf("result %q (%+v), counts %+v, want succeeded", res.Type, res.Error, ended.RequestCounts)
				}
				return
			}
			if res.Type != "errored" || res.Error == nil || ended.RequestCounts.Errored != 1 {
				t.Fatalf("result %q, counts %+v, want errored %s", res.Type, ended.RequestCounts, tt.wantType)
			}
			if res.Error.Error.Type != tt.wantType || !strings.Contains(res.Error.Error.Message, tt.wantMessage) {
				t.Errorf("error %s %q, want %s containing %q", res.Error.Error.Type, res.Error.Error.Message, tt.wantType, tt.wantMessage)
			}
		})
	}
}

// TestPermanentErrorsAreNotRetried: with a retry delay of an hour, a retried
// request could not end within the test; permanent errors must end at once.
// A transient failure in the same server is the control: it does wait.
func TestPermanentErrorsAreNotRetried(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withConfig(func(c *server.Config) {
		c.Dispatch.MaxAttempts = 8
		c.Dispatch.BackoffBase = time.Hour
		c.Dispatch.BackoffMax = time.Hour
	}))
	control := createRaw(t, ts.URL, createBody(t, rawRequest{CustomID: "transient", Params: params("[[sim fail=1]]")}))

	types := []string{"invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error", "request_too_large"}
	var reqs []rawRequest
	for _, typ := range types {
		reqs = append(reqs, rawRequest{CustomID: typ, Params: params(fmt.Sprintf("[[sim error=%s]]", typ))})
	}
	b := createRaw(t, ts.URL, createBody(t, reqs...))
	waitEndedRaw(t, ts.URL, b.ID, 10*time.Second)
	res := resultsRaw(t, ts.URL, b.ID, "")
	for _, typ := range types {
		r := res[typ].Result
		if r.Type != "errored" || r.Error == nil || r.Error.Error.Type != typ {
			t.Errorf("%s: %q %+v, want errored with that type", typ, r.Type, r.Error)
		}
	}

	got := getRaw(t, ts.URL, control.ID)
	if got.ProcessingStatus != "in_progress" || got.RequestCounts.Processing != 1 {
		t.Errorf("control batch with a transient failure: %s %+v, want in_progress waiting for its retry", got.ProcessingStatus, got.RequestCounts)
	}
}
