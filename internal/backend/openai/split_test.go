package openai

import (
	"encoding/json"
	"reflect"
	"testing"
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
			if !reflect.DeepEqual(map[string]json.RawMessage(got.fields), m) {
				t.Errorf("parseObject(%q) = %q, encoding/json %q", raw, got.fields, m)
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
