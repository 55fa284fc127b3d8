package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"

	"github.com/batchd/batchd/internal/backend"
)

// params builds a request body with one user message, so tests read as the
// prompt they send.
func params(t testing.TB, prompt string, extra map[string]any) json.RawMessage {
	t.Helper()
	body := map[string]any{
		"model":      "claude-sim-1",
		"max_tokens": 4096,
		"messages":   []map[string]any{{"role": "user", "content": prompt}},
	}
	for k, v := range extra {
		body[k] = v
	}
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func do(t testing.TB, b *Backend, p json.RawMessage, attempt int) (json.RawMessage, error) {
	t.Helper()
	return b.Do(context.Background(), backend.Call{Model: "claude-sim-1", Params: p, Attempt: attempt})
}

// reply is the decoded result, loose enough to check stop_sequence: null.
type reply struct {
	ID           string  `json:"id"`
	Type         string  `json:"type"`
	Role         string  `json:"role"`
	Model        string  `json:"model"`
	StopReason   string  `json:"stop_reason"`
	StopSequence *string `json:"stop_sequence"`
	Content      []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"content"`
	Usage struct {
		InputTokens              int    `json:"input_tokens"`
		OutputTokens             int    `json:"output_tokens"`
		CacheCreationInputTokens int    `json:"cache_creation_input_tokens"`
		CacheReadInputTokens     int    `json:"cache_read_input_tokens"`
		ServiceTier              string `json:"service_tier"`
	} `json:"usage"`
}

// mustReply returns a checker taking Do's results directly, so calls read
// mustReply(t)(b.Do(...)).
func mustReply(t testing.TB) func(json.RawMessage, error) reply {
	return func(raw json.RawMessage, err error) reply {
		t.Helper()
		return checkReply(t, raw, err)
	}
}

func checkReply(t testing.TB, raw json.RawMessage, err error) reply {
	t.Helper()
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if !json.Valid(raw) {
		t.Fatalf("invalid JSON: %s", raw)
	}
	var r reply
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	if len(r.Content) != 1 || r.Content[0].Type != "text" {
		t.Fatalf("content = %+v, want one text block", r.Content)
	}
	return r
}

func mustBackendError(t testing.TB, err error) *backend.Error {
	t.Helper()
	var be *backend.Error
	if !errors.As(err, &be) {
		t.Fatalf("error = %v (%T), want *backend.Error", err, err)
	}
	return be
}

var idRE = regexp.MustCompile(`^msg_[0-9A-Za-z]{24}$`)

func TestName(t *testing.T) {
	t.Parallel()
	if got := New(Config{}).Name(); got != "sim" {
		t.Fatalf("Name() = %q, want sim", got)
	}
}

func TestDeterministic(t *testing.T) {
	t.Parallel()
	b := New(Config{})
	p := params(t, "Tell me about determinism", nil)
	first, err := do(t, b, p, 1)
	if err != nil {
		t.Fatal(err)
	}
	for attempt := 1; attempt <= 3; attempt++ {
		again, err := do(t, b, p, attempt)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, again) {
			t.Fatalf("attempt %d differs:\n%s\n%s", attempt, first, again)
		}
	}
	// A fresh backend must agree too: no hidden per-instance state.
	other, _ := do(t, New(Config{}), p, 1)
	if !bytes.Equal(first, other) {
		t.Fatalf("new backend differs:\n%s\n%s", first, other)
	}

	ids := map[string]string{}
	for i := range 50 {
		prompt := fmt.Sprintf("Tell me about determinism %d", i)
		r := mustReply(t)(do(t, b, params(t, prompt, nil), 1))
		if !idRE.MatchString(r.ID) {
			t.Fatalf("id %q does not match %s", r.ID, idRE)
		}
		if prev, ok := ids[r.ID]; ok {
			t.Fatalf("prompts %q and %q share id %s", prev, prompt, r.ID)
		}
		ids[r.ID] = prompt
	}
}

func TestMessageShape(t *testing.T) {
	t.Parallel()
	prompt := "Hello there, how are you today?"
	raw, err := do(t, New(Config{}), params(t, prompt, map[string]any{"system": "Be terse."}), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^\{"id":"msg_[0-9A-Za-z]{24}","type":"message","role":"assistant","model":"claude-sim-1","content":\[\{"type":"text","text":"[^"]*\\"Hello there, how are you today\?\\": [a-z .]+"\}\],"stop_reason":"end_turn","stop_sequence":null,"usage":\{"input_tokens":\d+,"output_tokens":\d+,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"service_tier":"batch"\}\}$`).Match(raw) {
		t.Fatalf("unexpected layout: %s", raw)
	}

	var msg anthropic.Message
	if err := json.Unmarshal(raw, &msg); err != nil {
		t.Fatalf("decode into anthropic.Message: %v", err)
	}
	if !idRE.MatchString(msg.ID) {
		t.Errorf("ID = %q", msg.ID)
	}
	if msg.Type != "message" || msg.Role != "assistant" || msg.Model != "claude-sim-1" {
		t.Errorf("type/role/model = %q/%q/%q", msg.Type, msg.Role, msg.Model)
	}
	if len(msg.Content) != 1 || msg.Content[0].Type != "text" {
		t.Fatalf("Content = %+v", msg.Content)
	}
	text := msg.Content[0].Text
	if want := `Simulated reply to "Hello there, how are you today?": `; !strings.HasPrefix(text, want) {
		t.Errorf("text %q lacks prefix %q", text, want)
	}
	if !strings.HasSuffix(text, ".") {
		t.Errorf("text %q does not end a sentence", text)
	}
	if msg.StopReason != anthropic.StopReasonEndTurn || msg.StopSequence != "" || msg.JSON.StopSequence.Raw() != "null" {
		t.Errorf("stop = %q/%q (raw %s)", msg.StopReason, msg.StopSequence, msg.JSON.StopSequence.Raw())
	}
	words := len(strings.Fields(text))
	if words < minWords || words > maxWords || msg.Usage.OutputTokens != int64(words) {
		t.Errorf("words = %d, output_tokens = %d", words, msg.Usage.OutputTokens)
	}
	// "Be terse." (9) + prompt (31) = 40 characters = 10 tokens.
	if msg.Usage.InputTokens != 10 {
		t.Errorf("input_tokens = %d, want 10", msg.Usage.InputTokens)
	}
	if msg.Usage.CacheCreationInputTokens != 0 || msg.Usage.CacheReadInputTokens != 0 || msg.Usage.ServiceTier != anthropic.UsageServiceTierBatch {
		t.Errorf("usage = %+v", msg.Usage)
	}
}

func TestLengthAndUsage(t *testing.T) {
	t.Parallel()
	b := New(Config{})
	seen := map[int]bool{}
	for i := range 300 {
		r := mustReply(t)(do(t, b, params(t, fmt.Sprintf("prompt number %d", i), nil), 1))
		words := len(strings.Fields(r.Content[0].Text))
		if words < minWords || words > maxWords {
			t.Fatalf("reply %d has %d words", i, words)
		}
		if r.Usage.OutputTokens != words || r.StopReason != "end_turn" {
			t.Fatalf("reply %d: %d words, usage %+v, stop %q", i, words, r.Usage, r.StopReason)
		}
		seen[words] = true
	}
	if len(seen) < 30 {
		t.Errorf("only %d distinct lengths in 300 replies", len(seen))
	}

	tests := []struct {
		name string
		body string
		want int
	}{
		{"one char", `{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"x"}]}`, 1},
		{"empty", `{"model":"m","max_tokens":9,"messages":[{"role":"user","content":""}]}`, 1},
		{"runes not bytes", `{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"héllo wörld"}]}`, 3},
		{"all messages and system blocks", `{"model":"m","max_tokens":9,"system":[{"type":"text","text":"abcd"}],"messages":[
			{"role":"user","content":"abcd"},
			{"role":"assistant","content":[{"type":"text","text":"abcd"}]},
			{"role":"user","content":[{"type":"image","source":{}},{"type":"text","text":"abcde"}]}]}`, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := mustReply(t)(do(t, b, json.RawMessage(tc.body), 1))
			if r.Usage.InputTokens != tc.want {
				t.Fatalf("input_tokens = %d, want %d", r.Usage.InputTokens, tc.want)
			}
		})
	}
}

func TestEcho(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want string
	}{
		{"string", `{"model":"m","max_tokens":500,"messages":[{"role":"user","content":"  hi\n\tthere  "}]}`,
			`Simulated reply to "hi there": `},
		{"twelve words", `{"model":"m","max_tokens":500,"messages":[{"role":"user","content":"a b c d e f g h i j k l m n o"}]}`,
			`Simulated reply to "a b c d e f g h i j k l": `},
		{"last user message", `{"model":"m","max_tokens":500,"messages":[{"role":"user","content":"first"},{"role":"assistant","content":"ok"},{"role":"user","content":"second"}]}`,
			`Simulated reply to "second": `},
		{"prefill skipped", `{"model":"m","max_tokens":500,"messages":[{"role":"user","content":"question"},{"role":"assistant","content":"The answer is"}]}`,
			`Simulated reply to "question": `},
		{"text blocks", `{"model":"m","max_tokens":500,"messages":[{"role":"user","content":[{"type":"text","text":"one two"},{"type":"image","source":{}},{"type":"text","text":"three"}]}]}`,
			`Simulated reply to "one two three": `},
		{"no text", `{"model":"m","max_tokens":500,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]}`,
			`Simulated reply to "": `},
		{"directives removed", `{"model":"m","max_tokens":500,"messages":[{"role":"user","content":"[[sim fail=0]]hello[[sim latency=0s]]world [[sim]]"}]}`,
			`Simulated reply to "hello world": `},
		{"not a directive", `{"model":"m","max_tokens":500,"messages":[{"role":"user","content":"[[simple]] text"}]}`,
			`Simulated reply to "[[simple]] text": `},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := mustReply(t)(do(t, New(Config{}), json.RawMessage(tc.body), 1))
			if text := r.Content[0].Text; !strings.HasPrefix(text, tc.want) {
				t.Fatalf("text = %q, want prefix %q", text, tc.want)
			}
		})
	}
}

func TestMaxTokens(t *testing.T) {
	t.Parallel()
	tests := []struct {
		maxTokens  int
		wantText   string // exact, when short enough to know
		wantReason string
	}{
		{1, "Simulated", "max_tokens"},
		{2, "Simulated reply", "max_tokens"},
		{4, `Simulated reply to "alpha`, "max_tokens"},
		{5, `Simulated reply to "alpha beta":`, "max_tokens"},
		{10, "", "max_tokens"},
		{19, "", "max_tokens"},
		{maxWords, "", "end_turn"},
		{100000, "", "end_turn"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.maxTokens), func(t *testing.T) {
			t.Parallel()
			b := New(Config{})
			p := params(t, "alpha beta", map[string]any{"max_tokens": tc.maxTokens})
			r := mustReply(t)(do(t, b, p, 1))
			text := r.Content[0].Text
			if r.StopReason != tc.wantReason || r.StopSequence != nil {
				t.Fatalf("stop = %q/%v, want %q/null", r.StopReason, r.StopSequence, tc.wantReason)
			}
			words := len(strings.Fields(text))
			if r.Usage.OutputTokens != words || words > tc.maxTokens {
				t.Fatalf("text %q: %d words, output_tokens %d, max %d", text, words, r.Usage.OutputTokens, tc.maxTokens)
			}
			if tc.wantReason == "max_tokens" && words != tc.maxTokens {
				t.Fatalf("cut to %d words, want %d", words, tc.maxTokens)
			}
			if tc.wantText != "" && text != tc.wantText {
				t.Fatalf("text = %q, want %q", text, tc.wantText)
			}
			if strings.HasSuffix(text, " ") {
				t.Fatalf("text %q ends with a space", text)
			}
		})
	}
}

func TestStopSequences(t *testing.T) {
	t.Parallel()
	str := func(s string) *string { return &s }
	tests := []struct {
		name       string
		prompt     string
		stops      []string
		maxTokens  int
		wantText   string
		wantReason string
		wantSeq    *string
	}{
		{"match", "please say XYZZY now", []string{"XYZZY"}, 0,
			`Simulated reply to "please say `, "stop_sequence", str("XYZZY")},
		{"no match", "please say XYZZY now", []string{"PLUGH"}, 0,
			"", "end_turn", nil},
		{"earliest of several", "one FOO two BAR", []string{"BAR", "FOO"}, 0,
			`Simulated reply to "one `, "stop_sequence", str("FOO")},
		{"earliest completion wins", "xABCDx", []string{"ABCD", "BC"}, 0,
			`Simulated reply to "xA`, "stop_sequence", str("BC")},
		{"longer wins a tie", "xABCDx", []string{"CD", "BCD"}, 0,
			`Simulated reply to "xA`, "stop_sequence", str("BCD")},
		{"multi word", "the magic words", []string{"magic words"}, 0,
			`Simulated reply to "the `, "stop_sequence", str("magic words")},
		{"quote in sequence", "say hi", []string{`hi"`}, 0,
			`Simulated reply to "say `, "stop_sequence", str(`hi"`)},
		{"empty ignored", "say hi", []string{""}, 0,
			"", "end_turn", nil},
		{"at start", "say hi", []string{"Simulated"}, 0,
			"", "stop_sequence", str("Simulated")},
		{"within max_tokens", "a b XYZZY", []string{"XYZZY"}, 6,
			`Simulated reply to "a b `, "stop_sequence", str("XYZZY")},
		{"beyond max_tokens", "a b XYZZY", []string{"XYZZY"}, 5,
			`Simulated reply to "a b`, "max_tokens", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			extra := map[string]any{"stop_sequences": tc.stops}
			if tc.maxTokens > 0 {
				extra["max_tokens"] = tc.maxTokens
			}
			r := mustReply(t)(do(t, New(Config{}), params(t, tc.prompt, extra), 1))
			text := r.Content[0].Text
			if r.StopReason != tc.wantReason {
				t.Fatalf("stop_reason = %q, want %q (text %q)", r.StopReason, tc.wantReason, text)
			}
			if (r.StopSequence == nil) != (tc.wantSeq == nil) || (r.StopSequence != nil && *r.StopSequence != *tc.wantSeq) {
				t.Fatalf("stop_sequence = %v, want %v", r.StopSequence, tc.wantSeq)
			}
			if tc.wantReason != "end_turn" && text != tc.wantText {
				t.Fatalf("text = %q, want %q", text, tc.wantText)
			}
			if want := max(len(strings.Fields(text)), 1); r.Usage.OutputTokens != want {
				t.Fatalf("output_tokens = %d, want %d", r.Usage.OutputTokens, want)
			}
		})
	}
}

func TestDirectives(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		prompt string
		// wantErr[i] is the error type expected on attempt i+1; "" means success.
		wantErr []string
	}{
		{"none", "hello", []string{"", ""}},
		{"fail=0", "[[sim fail=0]] hello", []string{""}},
		{"fail=1", "[[sim fail=1]] hello", []string{"overloaded_error", ""}},
		{"fail=3", "hello [[sim fail=3]]", []string{"overloaded_error", "overloaded_error", "overloaded_error", ""}},
		{"invalid_request_error", "[[sim error=invalid_request_error]]", []string{"invalid_request_error", "invalid_request_error", "invalid_request_error"}},
		{"overloaded_error", "[[sim error=overloaded_error]]", []string{"overloaded_error", "overloaded_error"}},
		{"rate_limit_error", "[[sim error=rate_limit_error]]", []string{"rate_limit_error", "rate_limit_error"}},
		{"api_error", "[[sim error=api_error]]", []string{"api_error"}},
		{"combined", "[[sim latency=1ms fail=1]] hi", []string{"overloaded_error", ""}},
		{"several brackets", "[[sim fail=2]] hi [[sim latency=1ms]]", []string{"overloaded_error", "overloaded_error", ""}},
		{"error beats fail", "[[sim fail=1]] hi [[sim error=permission_error]]", []string{"permission_error", "permission_error", "permission_error"}},
		{"later key wins", "[[sim fail=5 fail=1]]", []string{"overloaded_error", ""}},
		{"whitespace", "[[sim\n\tfail=1\n]]", []string{"overloaded_error", ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := New(Config{})
			p := params(t, tc.prompt, nil)
			var success json.RawMessage
			for i, want := range tc.wantErr {
				attempt := i + 1
				raw, err := do(t, b, p, attempt)
				if want == "" {
					checkReply(t, raw, err)
					if success != nil && !bytes.Equal(success, raw) {
						t.Fatalf("attempt %d changed the reply", attempt)
					}
					success = raw
					continue
				}
				if raw != nil {
					t.Fatalf("attempt %d: got result alongside error", attempt)
				}
				be := mustBackendError(t, err)
				if be.Type != want || be.Status != backend.StatusForType(want) {
					t.Fatalf("attempt %d: error %s/%d, want %s/%d", attempt, be.Type, be.Status, want, backend.StatusForType(want))
				}
				if !strings.HasPrefix(be.Message, "simulated "+want) {
					t.Fatalf("attempt %d: message %q", attempt, be.Message)
				}
			}
		})
	}

	t.Run("only the last user message", func(t *testing.T) {
		t.Parallel()
		body := `{"model":"m","max_tokens":100,"system":"[[sim error=api_error]]","messages":[
			{"role":"user","content":"[[sim error=api_error]]"},
			{"role":"assistant","content":"[[sim error=api_error]]"},
			{"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":"[[sim fail=1]]"}]},
			{"role":"assistant","content":"[[sim error=api_error]]"}]}`
		b := New(Config{})
		_, err := do(t, b, json.RawMessage(body), 1)
		if be := mustBackendError(t, err); be.Type != backend.ErrOverloaded {
			t.Fatalf("attempt 1: %v", err)
		}
		mustReply(t)(do(t, b, json.RawMessage(body), 2))
	})

	t.Run("transient classification", func(t *testing.T) {
		t.Parallel()
		b := New(Config{})
		_, err := do(t, b, params(t, "[[sim error=invalid_request_error]]", nil), 1)
		if mustBackendError(t, err).Transient() {
			t.Error("invalid_request_error is transient")
		}
		_, err = do(t, b, params(t, "[[sim error=overloaded_error]]", nil), 1)
		if !mustBackendError(t, err).Transient() {
			t.Error("overloaded_error is permanent")
		}
	})
}

func TestBadDirectives(t *testing.T) {
	t.Parallel()
	tests := []struct {
		prompt string
		want   string
	}{
		{"[[sim foo=1]]", `sim directive: unknown key "foo"`},
		{"[[sim latency=fast]]", `sim directive: bad latency "fast"`},
		{"[[sim latency=-1s]]", `sim directive: bad latency "-1s"`},
		{"[[sim latency=]]", `sim directive: bad latency ""`},
		{"[[sim fail=x]]", `sim directive: bad fail "x"`},
		{"[[sim fail=-1]]", `sim directive: bad fail "-1"`},
		{"[[sim error=oops_error]]", `sim directive: unknown error type "oops_error"`},
		{"[[sim error=]]", `sim directive: unknown error type ""`},
		{"[[sim fail]]", `sim directive: "fail" is not key=value`},
		{"[[sim fail=1", `sim directive: missing closing "]]"`},
		{"ok [[sim fail=1]] then [[sim", `sim directive: missing closing "]]"`},
		{"[[sim fail=1]] [[sim bogus=2]]", `sim directive: unknown key "bogus"`},
	}
	for _, tc := range tests {
		t.Run(tc.prompt, func(t *testing.T) {
			t.Parallel()
			// Config latency must not delay a request that is invalid anyway.
			raw, err := do(t, New(Config{Latency: time.Hour}), params(t, tc.prompt, nil), 1)
			if raw != nil {
				t.Fatalf("got result %s", raw)
			}
			be := mustBackendError(t, err)
			if be.Type != backend.ErrInvalidRequest || be.Status != 400 || !strings.HasPrefix(be.Message, tc.want) {
				t.Fatalf("error = %s/%d %q, want invalid_request_error/400 %q", be.Type, be.Status, be.Message, tc.want)
			}
		})
	}
}

func TestInvalidParams(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want string // prefix of the message, naming the field
	}{
		{"not json", `{`, "params: "},
		{"null", `null`, "model: "},
		{"array", `[]`, "params: "},
		{"empty object", `{}`, "model: "},
		{"no max_tokens", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, "max_tokens: "},
		{"zero max_tokens", `{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}`, "max_tokens: "},
		{"string max_tokens", `{"model":"m","max_tokens":"9","messages":[{"role":"user","content":"hi"}]}`, "max_tokens: "},
		{"float max_tokens", `{"model":"m","max_tokens":1.5,"messages":[{"role":"user","content":"hi"}]}`, "max_tokens: "},
		{"no messages", `{"model":"m","max_tokens":9}`, "messages: "},
		{"messages object", `{"model":"m","max_tokens":9,"messages":{}}`, "messages: "},
		{"message not object", `{"model":"m","max_tokens":9,"messages":[1]}`, "messages: "},
		{"no content", `{"model":"m","max_tokens":9,"messages":[{"role":"user"}]}`, "messages.0.content: "},
		{"null content", `{"model":"m","max_tokens":9,"messages":[{"role":"user","content":null}]}`, "messages.0.content: "},
		{"number content", `{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"a"},{"role":"user","content":7}]}`, "messages.1.content: "},
		{"bad block", `{"model":"m","max_tokens":9,"messages":[{"role":"user","content":[1]}]}`, "messages.0.content: "},
		{"bad block text", `{"model":"m","max_tokens":9,"messages":[{"role":"user","content":[{"type":"text","text":5}]}]}`, "messages.0.content: "},
		{"no user", `{"model":"m","max_tokens":9,"messages":[{"role":"assistant","content":"hi"}]}`, "messages: "},
		{"bad system", `{"model":"m","max_tokens":9,"system":5,"messages":[{"role":"user","content":"hi"}]}`, "system: "},
		{"bad stop_sequences", `{"model":"m","max_tokens":9,"stop_sequences":"x","messages":[{"role":"user","content":"hi"}]}`, "stop_sequences: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			raw, err := New(Config{}).Do(context.Background(), backend.Call{Params: json.RawMessage(tc.body), Attempt: 1})
			if raw != nil {
				t.Fatalf("got result %s", raw)
			}
			be := mustBackendError(t, err)
			if be.Type != backend.ErrInvalidRequest || be.Status != 400 || !strings.HasPrefix(be.Message, tc.want) {
				t.Fatalf("error = %s/%d %q, want invalid_request_error/400 %q...", be.Type, be.Status, be.Message, tc.want)
			}
		})
	}

	t.Run("model falls back to call.Model", func(t *testing.T) {
		t.Parallel()
		body := `{"max_tokens":9,"messages":[{"role":"user","content":"hi"}]}`
		r := mustReply(t)(New(Config{}).Do(context.Background(), backend.Call{Model: "from-call", Params: json.RawMessage(body), Attempt: 1}))
		if r.Model != "from-call" {
			t.Fatalf("model = %q", r.Model)
		}
	})
}

func TestEscaping(t *testing.T) {
	t.Parallel()
	prompt := "quote\" back\\slash ctl\x01\x1f </script> & ünïcødé 日本語 \u2028sep tab\there"
	body := map[string]any{
		"model":      `we"ird\model`,
		"max_tokens": 500,
		"messages":   []map[string]any{{"role": "user", "content": prompt}},
	}
	p, _ := json.Marshal(body)
	r := mustReply(t)(do(t, New(Config{}), p, 1))
	if r.Model != `we"ird\model` {
		t.Errorf("model = %q", r.Model)
	}
	want := "Simulated reply to \"" + strings.Join(strings.Fields(prompt), " ") + "\": "
	if !strings.HasPrefix(r.Content[0].Text, want) {
		t.Errorf("text = %q, want prefix %q", r.Content[0].Text, want)
	}

	for _, s := range []string{"", "plain", "\"\\\n\r\t\x00\x7f", "\xff\xfebad", "a\u2028b\u2029c", "日本"} {
		enc := appendJSONString(nil, s)
		var got string
		if err := json.Unmarshal(enc, &got); err != nil {
			t.Fatalf("%q encoded as %s: %v", s, enc, err)
		}
		// encoding/json is the reference, including one U+FFFD per bad byte.
		std, _ := json.Marshal(s)
		var want string
		_ = json.Unmarshal(std, &want)
		if got != want {
			t.Errorf("%q round-tripped to %q, encoding/json gives %q", s, got, want)
		}
	}
}

func TestLatency(t *testing.T) {
	t.Parallel()
	const d = 50 * time.Millisecond
	tests := []struct {
		name     string
		config   time.Duration
		prompt   string
		attempt  int
		min, max time.Duration
		wantErr  string
	}{
		{"directive", 0, "[[sim latency=50ms]] hi", 1, d, 5 * time.Second, ""},
		{"config", d, "hi", 1, d, 5 * time.Second, ""},
		{"directive overrides config", time.Hour, "[[sim latency=0s]] hi", 1, 0, 5 * time.Second, ""},
		{"directive overrides config upward", time.Millisecond, "[[sim latency=50ms]] hi", 1, d, 5 * time.Second, ""},
		{"on failing attempt", 0, "[[sim latency=50ms fail=1]]", 1, d, 5 * time.Second, backend.ErrOverloaded},
		{"on error", 0, "[[sim error=api_error]] [[sim latency=50ms]]", 1, d, 5 * time.Second, backend.ErrAPI},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			raw, err := do(t, New(Config{Latency: tc.config}), params(t, tc.prompt, nil), tc.attempt)
			elapsed := time.Since(start)
			if tc.wantErr == "" {
				checkReply(t, raw, err)
			} else if be := mustBackendError(t, err); be.Type != tc.wantErr {
				t.Fatalf("error type %q, want %q", be.Type, tc.wantErr)
			}
			if elapsed < tc.min || elapsed > tc.max {
				t.Fatalf("took %v, want between %v and %v", elapsed, tc.min, tc.max)
			}
		})
	}
}

func TestContextEnds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		config  time.Duration
		prompt  string
		ctx     func() (context.Context, context.CancelFunc)
		wantErr error
	}{
		{"cancel during directive latency", 0, "[[sim latency=1m]] hi", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(20*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"deadline during config latency", time.Minute, "hi", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 20*time.Millisecond)
		}, context.DeadlineExceeded},
		{"already cancelled", 0, "[[sim latency=1m]] hi", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			raw, err := New(Config{Latency: tc.config}).Do(ctx, backend.Call{Params: params(t, tc.prompt, nil), Attempt: 1})
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Fatalf("took %v to notice the context", elapsed)
			}
			if raw != nil || !errors.Is(err, tc.wantErr) {
				t.Fatalf("Do = %s, %v; want %v", raw, err, tc.wantErr)
			}
		})
	}
}

// FuzzDo checks that no input panics and that every success is a well-formed
// reply within its token budget.
func FuzzDo(f *testing.F) {
	f.Add([]byte(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi [[sim fail=0]]"}],"stop_sequences":["i"]}`))
	f.Add([]byte(`{"model":"m","max_tokens":50,"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":[{"type":"text","text":"[[sim"}]}]}`))
	f.Add([]byte(`{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"\u0000\"\\ \u00a0x"}],"stop_sequences":["\"",""]}`))
	f.Add([]byte(`{"messages":[{"role":"user","content":{}}]}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		var req struct {
			MaxTokens int64 `json:"max_tokens"`
		}
		_ = json.Unmarshal(p, &req)
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // never wait on fuzzed latency directives
		raw, err := New(Config{}).Do(ctx, backend.Call{Model: "m", Params: p, Attempt: 2})
		if err != nil {
			if raw != nil {
				t.Fatalf("result alongside error %v", err)
			}
			return
		}
		r := checkReply(t, raw, nil)
		if int64(r.Usage.OutputTokens) > req.MaxTokens || r.Usage.OutputTokens < 1 || r.Usage.InputTokens < 1 {
			t.Fatalf("usage %+v with max_tokens %d", r.Usage, req.MaxTokens)
		}
	})
}

func BenchmarkDo(b *testing.B) {
	sim := New(Config{})
	p := params(b, "Summarise the following support ticket in two sentences: the customer reports that exports time out after thirty seconds.", map[string]any{
		"max_tokens":     1024,
		"system":         "You are a concise assistant.",
		"stop_sequences": []string{"\n\nHuman:"},
	})
	call := backend.Call{Model: "claude-sim-1", Params: p, Attempt: 1}
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if _, err := sim.Do(ctx, call); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDoParallel(b *testing.B) {
	sim := New(Config{})
	p := params(b, "Summarise the following support ticket in two sentences.", nil)
	call := backend.Call{Model: "claude-sim-1", Params: p, Attempt: 1}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, err := sim.Do(ctx, call); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
