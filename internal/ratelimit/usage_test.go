package ratelimit

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
)

// usageByLibrary is what usage read before its fast path: encoding/json.
func usageByLibrary(msg []byte) (in, out int, ok bool) {
	var m struct {
		Usage *struct {
			InputTokens              int `json:"input_tokens"`
			OutputTokens             int `json:"output_tokens"`
			CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
			CacheReadInputTokens     int `json:"cache_read_input_tokens"`
		} `json:"usage"`
	}
	if json.Unmarshal(msg, &m) != nil || m.Usage == nil {
		return 0, 0, false
	}
	u := m.Usage
	return u.InputTokens + u.CacheCreationInputTokens + u.CacheReadInputTokens, u.OutputTokens, true
}

var usageSeeds = []string{
	`{"id":"msg_x","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}`,
	`{"usage":{"input_tokens":10,"output_tokens":5,"cache_creation_input_tokens":3,"cache_read_input_tokens":2,"service_tier":"batch"}}`,
	` { "usage" : { "input_tokens" : 7 , "output_tokens" : 2 } } `,
	`{"usage":{"input_tokens":1},"usage":{"output_tokens":2}}`,
	`{"usage":{"input_tokens":1,"input_tokens":4}}`,
	`{"Usage":{"input_tokens":1,"output_tokens":2}}`,
	`{"uſage":{"input_tokens":1,"output_tokens":2}}`,
	`{"usage":{"INPUT_TOKENS":1,"output_toKens":2}}`,
	`{"usage":{"input_tokens":1,"output_to\u212Aens":2}}`,
	`{"us\u0061ge":{"input_tokens":1}}`,
	`{"usage":{"input_tok\u0065ns":1}}`,
	`{"usage":null}`,
	`{"usage":{"input_tokens":null,"output_tokens":3}}`,
	`{"usage":{"input_tokens":1.0}}`,
	`{"usage":{"input_tokens":1e2}}`,
	`{"usage":{"input_tokens":-3,"output_tokens":-0}}`,
	`{"usage":{"input_tokens":"5"}}`,
	`{"usage":{"input_tokens":99999999999999999999}}`,
	`{"usage":[1,2]}`,
	`{"usage":5}`,
	"{\"content\":\"caf\xe9\",\"usage\":{\"input_tokens\":1}}",
	"{\"usage\":{\"output_to\u212Aens\":2}}",
	"{\"u\u017Fage\":{\"input_tokens\":3}}",
	`{"usage":{"input_tokens":1}} x`,
	`{"usage":{"input_tokens":1}}{}`,
	`{"usage":{"input_tokens":1}`,
	`{"usage":{"input_tokens":1,"extra":{"a":[1,{"b":null}]},"output_tokens":9}}`,
	`{}`,
	`[]`,
	`null`,
	``,
	`{"type":"message"}`,
}

// TestUsageAgrees: the fast read of a Message's usage answers what
// encoding/json does, on the shapes where the two could part.
func TestUsageAgrees(t *testing.T) {
	t.Parallel()
	for _, msg := range usageSeeds {
		in, out, ok := usage(json.RawMessage(msg))
		win, wout, wok := usageByLibrary([]byte(msg))
		if in != win || out != wout || ok != wok {
			t.Errorf("usage(%s) = %d, %d, %v; encoding/json reads %d, %d, %v", msg, in, out, ok, win, wout, wok)
		}
	}
}

func FuzzUsageAgrees(f *testing.F) {
	for _, s := range usageSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		in, out, ok := usage(msg)
		win, wout, wok := usageByLibrary(msg)
		if in != win || out != wout || ok != wok {
			t.Fatalf("usage(%q) = %d, %d, %v; encoding/json reads %d, %d, %v", msg, in, out, ok, win, wout, wok)
		}
	})
}

// TestEstimate: max_tokens comes from the call when the dispatcher read
// it, and from the params otherwise.
func TestEstimate(t *testing.T) {
	t.Parallel()
	params := json.RawMessage(`{"model":"m","max_tokens":300,"messages":[]}`)
	tests := []struct {
		name string
		call backend.Call
		out  int
	}{
		{"from the call", backend.Call{Params: params, MaxTokens: 1000}, 1000},
		{"from the params", backend.Call{Params: params}, 300},
		{"absent", backend.Call{Params: json.RawMessage(`{}`)}, 1},
		{"beyond int32", backend.Call{Params: params, MaxTokens: 1 << 40}, 1<<31 - 1},
	}
	for _, tt := range tests {
		in, out := estimate(tt.call)
		if in != max(1, len(tt.call.Params)/4) || out != tt.out {
			t.Errorf("%s: estimate = %d, %d; want %d, %d", tt.name, in, out, len(tt.call.Params)/4, tt.out)
		}
	}
}

// BenchmarkReadReply: what the limiter spends on one reply: its usage and
// its headers (none of them anthropic-ratelimit-*).
func BenchmarkReadReply(b *testing.B) {
	msg := json.RawMessage(usageSeeds[0])
	h := http.Header{"Content-Type": {"application/json"}, "Date": {"Mon, 01 Jan 2026 00:00:00 GMT"}, "Content-Length": {"180"}}
	l := New(&fake{}, Limits{})
	for b.Loop() {
		if _, _, ok := usage(msg); !ok {
			b.Fatal("no usage")
		}
		l.observe(h)
	}
}

// replying answers every call with msg.
type replying struct{ msg string }

func (r replying) Name() string { return "replying" }

func (r replying) Do(context.Context, backend.Call) (json.RawMessage, error) {
	return json.RawMessage(r.msg), nil
}

// TestUsageRefundsTokens: a call reserves its max_tokens (and its params'
// size) from the per-minute buckets, and the reply's usage gives back what
// it did not use, so the next call goes at once on a clock that stands
// still; a reply without usage keeps the whole reservation.
func TestUsageRefundsTokens(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		limits Limits
		reply  string
		admit  bool
	}{
		{"output refunded", Limits{OutputTokensPerMinute: 6000}, `{"usage":{"input_tokens":1,"output_tokens":1}}`, true},
		{"input refunded", Limits{InputTokensPerMinute: 6000}, `{"usage":{"input_tokens":1,"output_tokens":1}}`, true},
		{"cache reads count as input", Limits{InputTokensPerMinute: 6000}, `{"usage":{"input_tokens":1,"cache_read_input_tokens":90,"output_tokens":1}}`, false},
		{"no usage, no refund", Limits{OutputTokensPerMinute: 6000}, `{"type":"message"}`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			now := time.Unix(1_800_000_000, 0)
			l := New(replying{tt.reply}, tt.limits)
			l.now = func() time.Time { return now }
			l.rpm, l.itpm, l.otpm = newBucket(0, now), newBucket(tt.limits.InputTokensPerMinute, now), newBucket(tt.limits.OutputTokensPerMinute, now)
			// A bucket of 6000 a minute holds 98 tokens: the call takes
			// them all, as input (392 bytes of params) or as output.
			call := backend.Call{MaxTokens: 98, Params: json.RawMessage(`{"p":"` + strings.Repeat("x", 392-8) + `"}`)}
			if _, err := l.Do(context.Background(), call); err != nil {
				t.Fatal(err)
			}
			l.mu.Lock()
			_, ok := l.admitLocked(now, 90, 90)
			l.mu.Unlock()
			if ok != tt.admit {
				t.Errorf("a second call admitted at once: %v, want %v", ok, tt.admit)
			}
		})
	}
}
