package backend

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

var validSeeds = []string{
	`{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"llama-x","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`,
	` { "a" : [ 1 , -2.5e3 , true , false , null , "s\u00e9\n" , { } , [ ] ] } `,
	"{\"k\":\"caf\xe9\"}", `{"a":1,"a":2}`, `[]`, `null`, `""`, ``, ` `,
}

// FuzzValidAgrees: ValidJSON answers what json.Valid answers.
func FuzzValidAgrees(f *testing.F) {
	for _, s := range append(validSeeds,
		`0`, `-0`, `01`, `-`, `1.`, `1.5e`, `1e+5`, `1E-05`, `.5`, `+1`, `tru`, `true `, ` null`, `nul`, `falsey`,
		`"\u12"`, `"\u12G4"`, `"\x"`, `"a\/b"`, "\"tab\there\"", "\"\x7f\xff\"", `"unterminated`, `"\"`,
		`{"a":}`, `{"a" 1}`, `{,}`, `{"a":1,}`, `[1,]`, `[,1]`, `[1 2]`, `{"a":1}}`, `[[[]]]`, `{"a":[{"b":{}}]}`,
	) {
		f.Add([]byte(s))
	}
	f.Add([]byte(strings.Repeat("[", 10000) + strings.Repeat("]", 10000)))
	f.Add([]byte(strings.Repeat("[", 10001) + strings.Repeat("]", 10001)))
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := ValidJSON(data), json.Valid(data); got != want {
			t.Fatalf("ValidJSON(%q) = %v, json.Valid %v", data, got, want)
		}
	})
}

// FuzzEachMemberAgrees: EachMember accepts exactly the objects
// encoding/json decodes into a map, and gives each member as it does.
func FuzzEachMemberAgrees(f *testing.F) {
	for _, s := range validSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte(strings.Repeat("[", 9999) + strings.Repeat("]", 9999)))
	f.Add([]byte(`{"a":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}`))
	f.Add([]byte(`{"a":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var want map[string]json.RawMessage
		wantOK := json.Unmarshal(data, &want) == nil && want != nil
		got := map[string]json.RawMessage{}
		ok := EachMember(data, func(name, value []byte) bool {
			var key string
			if json.Unmarshal(append(append([]byte{'"'}, name...), '"'), &key) != nil {
				t.Fatalf("EachMember(%q) gave the name %q, not a JSON string's inside", data, name)
			}
			got[key] = value
			return true
		})
		if ok != wantOK {
			t.Fatalf("EachMember(%q) = %v, encoding/json decodes it: %v", data, ok, wantOK)
		}
		if ok && !reflect.DeepEqual(got, want) {
			t.Fatalf("EachMember(%q) gave %q, encoding/json %q", data, got, want)
		}
	})
}
