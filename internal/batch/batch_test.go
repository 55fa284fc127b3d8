package batch

import (
	"encoding/json"
	"errors"
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/go-json-experiment/json/jsontext"
)

func TestCheckCustomID(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"a":                     "",
		"doc-1_A":               "",
		strings.Repeat("x", 64): "",
		"":                      "at least 1 character",
		strings.Repeat("x", 65): "at most 64 characters",
		"has space":             "should match pattern",
		"dot.dot":               "should match pattern",
		"ünïcode":               "should match pattern",
	}
	for id, want := range tests {
		got := checkCustomID(id)
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("checkCustomID(%q) = %q, want %q", id, got, want)
		}
	}
}

func TestNewIDShape(t *testing.T) {
	t.Parallel()
	re := regexp.MustCompile(`^msgbatch_01[0-9A-Za-z]{22}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := NewID("msgbatch_")
		if !re.MatchString(id) || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		seen[id] = true
	}
}

func TestLimitedReader(t *testing.T) {
	t.Parallel()
	read := func(body string, limit int64) error {
		_, err := io.ReadAll(&limitedReader{r: strings.NewReader(body), left: limit})
		return err
	}
	if err := read("12345", 5); err != nil {
		t.Fatalf("a body exactly at the limit: %v", err)
	}
	if err := read("123456", 5); !errors.Is(err, errBodyTooLarge) {
		t.Fatalf("one byte over: %v", err)
	}
}

func TestHashKeyIsStableAndKeysDiffer(t *testing.T) {
	t.Parallel()
	k1, h1, p1 := NewAPIKey()
	k2, _, _ := NewAPIKey()
	if k1 == k2 || HashKey(k1) != h1 || !strings.HasPrefix(k1, p1) || strings.Contains(h1, k1) {
		t.Fatalf("keys %q %q hash %q prefix %q", k1, k2, h1, p1)
	}
}

func TestParamsModel(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		`{"model":"claude-x","max_tokens":5}`:                                        "claude-x",
		`{"messages":[{"role":"user","content":"{\"model\":\"no\"}"}],"model":"m2"}`: "m2",
		`{"tools":[{"input_schema":{"properties":{"model":{}}}}],"model":"m3"}`:      "m3",
		`{"model":7}`: "",
		`{}`:          "",
		`{"messages":[{"role":"user","content":"a \"model\": \"x\" inside"}], "model" : "m4"}`: "m4",
		`{"stop_sequences":["model"],"model":"m5"}`:                                            "m5",
		`{"metadata":{"model":"inner"},"model":"m6"}`:                                          "m6",
		`{"model":"esc\u0061ped"}`:                                                             "escaped",
		`{"text":"\\","model":"m7"}`:                                                           "m7",
	}
	for params, want := range tests {
		if got := paramsModel([]byte(params)); got != want {
			t.Errorf("paramsModel(%s) = %q, want %q", params, got, want)
		}
	}
}

func BenchmarkParamsModel(b *testing.B) {
	pad := strings.Repeat("lorem ipsum dolor sit amet ", 93)
	params := []byte(`{"max_tokens":32,"messages":[{"role":"user","content":"` + pad + `"}],"model":"claude-sim"}`)
	b.SetBytes(int64(len(params)))
	for b.Loop() {
		if paramsModel(params) != "claude-sim" {
			b.Fatal("wrong model")
		}
	}
}

// FuzzParamsModel: the fast scan agrees with a real decoder on every valid
// JSON object.
func FuzzParamsModel(f *testing.F) {
	for _, s := range []string{`{"model":"a"}`, `{"x":{"model":"b"},"model":"c"}`, `{"model":"d\"e"}`, `{"a":"\\","model":"f"}`, `[1]`, `{"model":null}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// What create accepts: valid JSON under jsontext's rules (UTF-8
		// included), an object.
		if !jsontext.Value(s).IsValid() || !json.Valid([]byte(s)) || !strings.HasPrefix(strings.TrimSpace(s), "{") {
			return
		}
		if fast, slow := paramsModel([]byte(s)), paramsModelSlow([]byte(s)); fast != slow {
			t.Fatalf("%s: fast %q, decoder %q", s, fast, slow)
		}
	})
}
