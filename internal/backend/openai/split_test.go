package openai

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/batchd/batchd/internal/backend"
)

// FuzzSplitAgrees: parseObject, splitArray and unquote read valid JSON
// without encoding/json; on every valid input they must give what
// encoding/json gives (duplicate keys, escapes, invalid UTF-8, white space).
// The seeds run with go test; go test -fuzz FuzzSplitAgrees looks further.
func FuzzSplitAgrees(f *testing.F) {
	for _, s := range []string{
		`{}`, `[]`, `""`, `{"a":1}`, ` { "a" : [1, {"b":"}"}] , "c":null } `,
		`{"a":1,"a":2}`, `{"a\u0062":"x","ab":"y"}`, `{"k":"caf\u00e9 \"q\" \\ \/"}`,
		"{\"k\":\"\xff\xfe bad utf8\",\"\xc3\":1}", `{"k":"café ✓"}`,
		`[1, -2.5e3, true, false, null, "s", {"x":[]}, [[]]]`,
		`{"n":{"deep":{"deeper":[{"a":"]"},"}"]}},"m":"end"}`,
		`"\u00e9\n\t"`, `"plain"`, `{"a":"b\\"}`, `{"":""}`,
		`{"model":"llama","max_tokens":32,"messages":[{"role":"user","content":"q 1"}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) == nil && m != nil {
			got, err := parseObject("", raw)
			if err != nil {
				t.Fatalf("parseObject(%q): %v", raw, err)
			}
			fields := map[string]json.RawMessage{}
			for _, f := range got.fields {
				fields[string(f.key)] = f.raw // the last of duplicates, as get reads them
			}
			if !reflect.DeepEqual(fields, m) {
				t.Errorf("parseObject(%q) = %q, encoding/json %q", raw, fields, m)
			}
		}
		var a []json.RawMessage
		if json.Unmarshal(raw, &a) == nil && a != nil {
			trimmed := raw[skipSpace(raw, 0):]
			if got := splitArray(trimmed); !reflect.DeepEqual(got, a) {
				t.Errorf("splitArray(%q) = %q, encoding/json %q", raw, got, a)
			}
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			trimmed := raw[skipSpace(raw, 0):]
			trimmed = trimmed[:valueEnd(trimmed, 0)]
			if got := unquote(trimmed); got != s {
				t.Errorf("unquote(%q) = %q, encoding/json %q", raw, got, s)
			}
		}
	})
}

// TestMessageJSONAgrees: appendJSON writes a message without reflection;
// its bytes must be encode's.
func TestMessageJSONAgrees(t *testing.T) {
	t.Parallel()
	stop := "END\u2028"
	for _, m := range []message{
		{ID: "msg_1", Type: "message", Role: "assistant", Model: "m", Content: []any{}, StopReason: "end_turn", Usage: usage{ServiceTier: "batch"}},
		{ID: "msg_2", Type: "message", Role: "assistant", Model: "llama/3 <b>&</b>", StopReason: "stop_sequence", StopSequence: &stop,
			Content: []any{textBlock{Type: "text", Text: "line\nnext \"q\" \\ \t\b\f\x01 café \u2029 \xff bad <script>"}},
			Usage:   usage{InputTokens: 12, OutputTokens: 1 << 40, ServiceTier: "batch"}},
		{ID: "msg_3", Type: "message", Role: "assistant", Model: "m", StopReason: "tool_use",
			Content: []any{textBlock{Type: "text", Text: ""}, toolUseBlock{Type: "tool_use", ID: "toolu_1", Name: "get <x>", Input: json.RawMessage(`{ "a" : [1, 2 ], "b":"<&>" }`)},
				toolUseBlock{Type: "tool_use", ID: "toolu_2", Name: "n", Input: json.RawMessage(`{}`)}}},
	} {
		want, err := encode(m)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.appendJSON(nil); string(got) != string(want) {
			t.Errorf("appendJSON\n got %s\nwant %s", got, want)
		}
	}
}

// completionSeeds are answers where scanCompletion and the library could
// part: case, punctuation and escapes in names, duplicates, nulls, types,
// invalid UTF-8, tool calls, trailing data.
var completionSeeds = []string{
	`{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"llama-x","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`,
	` { "id" : "c" , "choices" : [ { "message" : { "content" : [ {"type":"text","text":"a"} ] , "tool_calls" : [ ] } , "stop_reason" : "END" } ] } `,
	`{"id":"c","choices":[{"message":{"content":null,"refusal":"no","tool_calls":null},"finish_reason":"content_filter","stop_reason":null}],"error":null}`,
	`{"id":"c","choices":[{"message":{"content":"x","tool_calls":[{"id":"t","function":{"name":"f","arguments":"{}"}}]}}]}`,
	`{"ID":"c","choices":[]}`, `{"Id":"c"}`, `{"i_d":"c"}`, `{"id":"a","id":"b"}`, `{"\u0069d":"c"}`,
	`{"choices":[{"Message":{"content":"x"}}]}`, `{"choices":[{"message":{"Content":"x"}}]}`,
	`{"choices":[{"finish-reason":"length","message":{}}]}`, `{"usage":{"promptTokens":3}}`,
	`{"usage":{"prompt_tokens":1.5}}`, `{"usage":{"prompt_tokens":"5"}}`, `{"usage":{"prompt_tokens":99999999999999999999}}`,
	`{"usage":{"prompt_tokens":-1,"completion_tokens":0}}`, `{"usage":null}`, `{"id":null}`, `{"choices":null}`,
	`{"choices":[null]}`, `{"choices":[{"message":null}]}`, `{"choices":[{"message":{"content":"x"}},5]}`,
	`{"model":"m\u00e9 \"q\""}`, "{\"model\":\"caf\xe9\"}", "{\"mod\xc3\xa9l\":\"x\"}", "{\"\u212Aey\":1}",
	`{"id":"c"} {}`, `{"id":"c"`, `[]`, `null`, `"s"`, ``, `{}`,
	`{"error":{"message":"boom","type":"server_error"}}`, `{"error":"plain"}`,
	`{"choices":[{"message":{"content":"a"},"finish_reason":"stop"},{"message":{"content":"b"},"finish_reason":"length"}]}`,
}

// FuzzCompletionAgrees: whatever scanCompletion vouches for, it decodes as
// the library does.
func FuzzCompletionAgrees(f *testing.F) {
	for _, s := range completionSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, sure := scanCompletion(body)
		if !sure {
			return
		}
		want, err := decodeCompletionSlow(body)
		if err != nil {
			t.Fatalf("scanCompletion(%q) vouched for a body the library refuses: %v", body, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("scanCompletion(%q)\n got %#v\nwant %#v", body, got, want)
		}
	})
}

// TestCompletionFastPathTaken: the common answers do take the fast path
// (a scan that always gave up would agree with the library too).
func TestCompletionFastPathTaken(t *testing.T) {
	t.Parallel()
	for _, s := range completionSeeds[:3] {
		if _, sure := scanCompletion([]byte(s)); !sure {
			t.Errorf("scanCompletion(%s) gave up", s)
		}
	}
}

// TestRequestJSONAgrees: appendJSON writes the common chat request without
// reflection; its bytes must be encode's, and it must take the common
// requests.
func TestRequestJSONAgrees(t *testing.T) {
	t.Parallel()
	tests := []struct {
		params string
		fast   bool // appendJSON must write it
	}{
		{`{"model":"m","max_tokens":32,"messages":[{"role":"user","content":"q 1"}]}`, true},
		{`{"model":"llama/3 <b>&</b>","max_tokens":1,"system":"be \"brief\"\n","messages":[{"role":"user","content":"café ✓ \u2028 <x>"},{"role":"assistant","content":"ok"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}`, true},
		{`{"model":"m","max_tokens":5,"temperature":0.7,"top_p":1,"stop_sequences":["END","\n\n","<&>"],"metadata":{"user_id":"u-1"},"messages":[{"role":"user","content":"x"}]}`, true},
		{`{"model":"m","max_tokens":5,"temperature":0,"top_p":0.000001,"messages":[{"role":"user","content":"x"}]}`, true},
		{`{"model":"m","max_tokens":5,"temperature":1e-7,"messages":[{"role":"user","content":"x"}]}`, false},
		{`{"model":"m","max_tokens":5,"top_p":1e21,"messages":[{"role":"user","content":"x"}]}`, false},
		{`{"model":"m","max_tokens":5,"temperature":123456789.125,"messages":[{"role":"user","content":"x"}]}`, true},
		{`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"},{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{"a":1}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"42"},{"type":"tool_result","tool_use_id":"t2","is_error":true}]}]}`, false},
		{`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"r"}]},{"type":"text","text":"next"}]}]}`, true},
		{`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]}]}`, false},
		{`{"model":"m","max_tokens":5,"tools":[{"name":"f","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"x"}]}`, false},
	}
	for _, tt := range tests {
		req, _, err := translate(backend.Call{Params: json.RawMessage(tt.params)})
		if err != nil {
			t.Fatalf("translate(%s): %v", tt.params, err)
		}
		want, err := encode(req)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := req.appendJSON(nil)
		switch {
		case ok != tt.fast:
			t.Errorf("appendJSON(%s): ok = %v, want %v", tt.params, ok, tt.fast)
		case ok && string(got) != string(want):
			t.Errorf("appendJSON(%s)\n got %s\nwant %s", tt.params, got, want)
		}
	}
}
