package dispatch

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
	"github.com/batchd/batchd/internal/store"
)

func TestBackoff(t *testing.T) {
	t.Parallel()
	d := New(nil, backend.NewRouter(), Config{BackoffBase: time.Second, BackoffMax: 10 * time.Second})
	tests := []struct {
		attempt    int
		retryAfter time.Duration
		lo, hi     time.Duration
	}{
		{1, 0, 800 * time.Millisecond, 1200 * time.Millisecond},
		{2, 0, 1600 * time.Millisecond, 2400 * time.Millisecond},
		{4, 0, 6400 * time.Millisecond, 9600 * time.Millisecond},
		{10, 0, 8 * time.Second, 12 * time.Second},                                   // capped, then jittered
		{1, 30 * time.Second, 30 * time.Second, 30 * time.Second},                    // retry-after wins when longer
		{1, 100 * time.Millisecond, 800 * time.Millisecond, 1200 * time.Millisecond}, // never shorter than backoff
		{1, 48 * time.Hour, time.Hour, time.Hour},                                    // absurd retry-after is bounded
	}
	for _, tt := range tests {
		for range 50 {
			got := d.backoff(tt.attempt, tt.retryAfter)
			if got < tt.lo || got > tt.hi {
				t.Fatalf("backoff(%d, %s) = %s, want in [%s, %s]", tt.attempt, tt.retryAfter, got, tt.lo, tt.hi)
			}
		}
	}
}

func TestCheckParams(t *testing.T) {
	t.Parallel()
	tests := []struct {
		params string
		want   string // substring of the error; empty means valid
	}{
		{`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, ""},
		{`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}`, ""},
		{`{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, "model: Field required"},
		{`{"model":"","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, "model: String should have at least 1 character"},
		{`{"model":7,"max_tokens":5,"messages":[]}`, "model: Input should be a valid string"},
		{`{"model":"m","messages":[{"role":"user","content":"hi"}]}`, "max_tokens: Field required"},
		{`{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}`, "max_tokens: Each batched request must have max_tokens of at least 1"},
		{`{"model":"m","max_tokens":1.5,"messages":[{"role":"user","content":"hi"}]}`, "max_tokens: Input should be a valid integer"},
		{`{"model":"m","max_tokens":"5","messages":[{"role":"user","content":"hi"}]}`, "max_tokens"},
		{`{"model":"m","max_tokens":5}`, "messages: Field required"},
		{`{"model":"m","max_tokens":5,"messages":[]}`, "messages: List should have at least 1 item"},
		{`{"model":"m","max_tokens":5,"messages":["x"]}`, "messages.0: Input should be a valid dictionary"},
		{`{"model":"m","max_tokens":5,"messages":[{"role":"system","content":"hi"}]}`, "messages.0.role"},
		{`{"model":"m","max_tokens":5,"messages":[{"role":"user"}]}`, "messages.0.content: Field required"},
		{`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":5}]}`, "messages.0.content"},
		{`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"stream":true}`, "stream: streaming is not supported"},
	}
	for _, tt := range tests {
		model, maxTokens, err := checkParams(json.RawMessage(tt.params))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tt.params, err)
		case tt.want == "" && model != "m":
			t.Errorf("%s: model %q", tt.params, model)
		case tt.want == "" && maxTokens != 5:
			t.Errorf("%s: max_tokens %d", tt.params, maxTokens)
		case tt.want != "" && (err == nil || !strings.Contains(err.Message, tt.want)):
			t.Errorf("%s: want error containing %q, got %v", tt.params, tt.want, err)
		case tt.want != "" && (err.Type != backend.ErrInvalidRequest || err.Transient()):
			t.Errorf("%s: want a permanent invalid_request_error, got %+v", tt.params, err)
		}
	}
}

func TestOutcome(t *testing.T) {
	t.Parallel()
	d := New(nil, backend.NewRouter(), Config{MaxAttempts: 3, BackoffBase: time.Millisecond})
	c := store.ClaimedRequest{ID: 7, BatchSeq: 2, Attempt: 1}

	o := d.outcome(c, json.RawMessage("{\n\"id\": \"msg_1\"\n}"), nil)
	if o.ResultType != store.ResultSucceeded || string(o.Result) != `{"type":"succeeded","message":{"id":"msg_1"}}` {
		t.Fatalf("succeeded outcome must be compact: %s", o.Result)
	}
	// A backend's reply is valid JSON by backend.Backend.Do's contract (each
	// backend's tests check its own); only one that is compacted here is
	// checked again.
	o = d.outcome(c, json.RawMessage("{\"id\":\n"), nil)
	if o.ResultType != store.ResultErrored || !strings.Contains(string(o.Result), "api_error") {
		t.Fatalf("invalid JSON from a backend must become an errored result: %+v", o)
	}
	o = d.outcome(c, nil, &backend.Error{Type: backend.ErrOverloaded, Message: "busy"})
	if !o.Retry || o.ResultType != store.ResultErrored {
		t.Fatalf("transient error must retry: %+v", o)
	}
	want := `{"type":"errored","error":{"type":"error","error":{"type":"overloaded_error","message":"busy"},"request_id":null}}`
	if string(o.Result) != want {
		t.Fatalf("errored result\n got %s\nwant %s", o.Result, want)
	}
	c.Attempt = 3
	if o = d.outcome(c, nil, &backend.Error{Type: backend.ErrOverloaded}); o.Retry {
		t.Fatal("the last attempt must settle")
	}
	c.Attempt = 1
	if o = d.outcome(c, nil, &backend.Error{Type: backend.ErrInvalidRequest}); o.Retry {
		t.Fatal("a permanent error must settle at once")
	}
}

func BenchmarkCheckParams(b *testing.B) {
	raw := json.RawMessage(`{"model":"claude-sim","max_tokens":32,"system":[{"type":"text","text":"be brief"}],"messages":[{"role":"user","content":"Summarize document 12345"},{"role":"assistant","content":[{"type":"text","text":"ok"}]}]}`)
	for b.Loop() {
		if _, _, err := checkParams(raw); err != nil {
			b.Fatal(err)
		}
	}
}
