package anthropic

import (
	"net/http"
	"testing"

	"github.com/batchd/batchd/internal/backend/backendtest"
)

// BenchmarkDo is the backend's CPU per call, transport excluded (the part
// of issue 7 item 13 this package owns).
//
//	go test ./internal/backend/anthropic -run '^$' -bench Do -benchmem
func BenchmarkDo(b *testing.B) {
	msg := `{"id":"msg_x","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}`
	be, err := New(Config{BaseURL: "http://upstream.invalid", APIKey: testKey, HTTPClient: &http.Client{Transport: backendtest.CannedTransport{Body: msg}}})
	if err != nil {
		b.Fatal(err)
	}
	backendtest.BenchmarkDo(b, be, "claude-x")
}
