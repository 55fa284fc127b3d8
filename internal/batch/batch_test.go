package batch

import (
	"errors"
	"io"
	"regexp"
	"strings"
	"testing"
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
	}
	for params, want := range tests {
		if got := paramsModel([]byte(params)); got != want {
			t.Errorf("paramsModel(%s) = %q, want %q", params, got, want)
		}
	}
}
