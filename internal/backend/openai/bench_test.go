package openai

import (
	"net/http"
	"testing"

	"github.com/batchd/batchd/internal/backend/backendtest"
)

// BenchmarkDo is the backend's CPU per call, transport excluded (the part
// of issue 7 item 13 this package owns).
//
//	go test ./internal/backend/openai -run '^$' -bench Do -benchmem
func BenchmarkDo(b *testing.B) {
	msg := `{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"llama-x","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`
	be, err := New(Config{BaseURL: "http://upstream.invalid/v1", HTTPClient: &http.Client{Transport: backendtest.CannedTransport{Body: msg}}})
	if err != nil {
		b.Fatal(err)
	}
	backendtest.BenchmarkDo(b, be, "llama-x")
}
