package openai

import (
	"context"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
)

// cannedTransport answers every request with the same Message without any
// network, so a benchmark measures the backend's own work per call.
type cannedTransport struct{ body string }

func (c cannedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	return &http.Response{
		StatusCode:    200,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(strings.NewReader(c.body)),
		ContentLength: int64(len(c.body)),
		Request:       req,
	}, nil
}

// BenchmarkDo is the backend's CPU per call, transport excluded (the part
// of issue 7 item 13 this package owns).
//
//	go test ./internal/backend/openai -run '^$' -bench Do -benchmem
func BenchmarkDo(b *testing.B) {
	msg := `{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"llama-x","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`
	be, err := New(Config{BaseURL: "http://upstream.invalid/v1", HTTPClient: &http.Client{Transport: cannedTransport{msg}}})
	if err != nil {
		b.Fatal(err)
	}
	c := backend.Call{Model: "claude-x", Params: []byte(`{"model":"claude-x","max_tokens":32,"messages":[{"role":"user","content":"q 1"}]}`), Attempt: 1,
		OnResponse: func(int, http.Header) {}}
	ctx := context.Background()
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		if _, err := be.Do(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
	// CPU rather than wall time: the machines this runs on are shared.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu_ns/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
