// Package backendtest holds what the HTTP backends' tests and benchmarks
// share: a transport that answers without a network, and the benchmark of
// a backend's own CPU per call.
package backendtest

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

// CannedTransport answers every request with the same 200 JSON body
// without any network, so a benchmark measures the backend's own work.
type CannedTransport struct{ Body string }

// RoundTrip drains the request and answers Body.
func (c CannedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	return &http.Response{
		StatusCode:    200,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(strings.NewReader(c.Body)),
		ContentLength: int64(len(c.Body)),
		Request:       req,
	}, nil
}

// BenchmarkDo runs one small Messages request through be for every
// iteration and reports the process's CPU per call (cpu_ns/op) beside the
// wall time: the machines this runs on are shared. be should use a
// CannedTransport, so the figure is the backend's own work (issue 7 item 13).
func BenchmarkDo(b *testing.B, be backend.Backend, model string) {
	c := backend.Call{Model: model, Params: []byte(`{"model":"` + model + `","max_tokens":32,"messages":[{"role":"user","content":"q 1"}]}`), Attempt: 1,
		OnResponse: func(int, http.Header) {}}
	ctx := context.Background()
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		if _, err := be.Do(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu_ns/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
