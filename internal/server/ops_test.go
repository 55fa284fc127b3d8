package server_test

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeMetrics reads GET /metrics through Prometheus's own text parser.
func scrapeMetrics(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	r := do(t, "GET", url+"/metrics", nil)
	if r.Status != 200 {
		t.Fatalf("GET /metrics: %d %s", r.Status, r.Body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(r.Body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// gauge is the value of family name's sample whose labels include those
// given (name, value pairs); -1 when there is none.
func gauge(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		}
	}
	return -1
}

func TestMetricsShowQueueAndBatches(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withoutDispatcher())
	b := createRaw(t, ts.URL, createBody(t, nRequests("m", 7, "hi")...))
	f := scrapeMetrics(t, ts.URL)
	if got := gauge(f, "batchd_queue_depth", "backend", "sim"); got != 7 {
		t.Errorf("queue depth %v, want 7", got)
	}
	if got := gauge(f, "batchd_batches", "status", "in_progress"); got != 1 {
		t.Errorf("batches in progress %v, want 1", got)
	}
	if got := gauge(f, "batchd_oldest_pending_seconds", "backend", "sim"); got < 0 || got > 3600 {
		t.Errorf("oldest pending %v s", got)
	}
	if got := gauge(f, "batchd_backend_concurrency_limit", "backend", "sim"); got <= 0 {
		t.Errorf("concurrency limit %v", got)
	}
	if got := gauge(f, "batchd_state_scrape_error"); got != 0 {
		t.Errorf("scrape error %v", got)
	}
	// Metrics need no key, and name no batch.
	if r := do(t, "GET", ts.URL+"/metrics", nil); strings.Contains(string(r.Body), b.ID) {
		t.Error("/metrics names a batch id")
	}
}

func TestMetricsMoveWhenABatchEnds(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	reqs := append(nRequests("m", 5, "hi"), rawRequest{CustomID: "flaky", Params: params("[[sim fail=1]] once")},
		rawRequest{CustomID: "bad", Params: params("[[sim error=invalid_request_error]] never")})
	b := createRaw(t, ts.URL, createBody(t, reqs...))
	waitEndedRaw(t, ts.URL, b.ID, 30*time.Second)
	f := scrapeMetrics(t, ts.URL)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"batchd_batches", []string{"status", "ended"}, 1},
		{"batchd_queue_depth", []string{"backend", "sim"}, 0},
		{"batchd_requests_settled_total", []string{"backend", "sim", "result", "succeeded"}, 6},
		{"batchd_requests_settled_total", []string{"backend", "sim", "result", "errored"}, 1},
		{"batchd_request_retries_total", []string{"backend", "sim"}, 1},
		{"batchd_upstream_responses_total", []string{"backend", "sim", "class", "2xx"}, 6},
		{"batchd_upstream_responses_total", []string{"backend", "sim", "class", "4xx"}, 1},
	} {
		if got := gauge(f, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if h := f["batchd_request_duration_seconds"]; h == nil || h.Metric[0].Histogram.GetSampleCount() != 8 {
		t.Errorf("request durations: %v", h)
	}
	ops := map[string]bool{}
	if h := f["batchd_store_operation_seconds"]; h != nil {
		for _, m := range h.Metric {
			ops[m.Label[0].GetValue()] = m.Histogram.GetSampleCount() > 0
		}
	}
	if !ops["BatchInsert"] || !ops["BatchPublish"] || !ops["RequestsInsert"] {
		t.Errorf("store operations timed: %v", ops)
	}
	// The tokens the metrics counted are the usage the store kept.
	var u wireUsage
	if r := do(t, "GET", ts.URL+"/v1/messages/batches/"+b.ID+"/usage", nil); json.Unmarshal(r.Body, &u) != nil || u.Tokens.Input == 0 {
		t.Fatalf("usage %s", r.Body)
	}
	if got := gauge(f, "batchd_tokens_total", "model", testModel, "kind", "input"); got != float64(u.Tokens.Input) {
		t.Errorf("input tokens %v, usage %d", got, u.Tokens.Input)
	}
	if got := gauge(f, "batchd_tokens_total", "model", testModel, "kind", "output"); got != float64(u.Tokens.Output) {
		t.Errorf("output tokens %v, usage %d", got, u.Tokens.Output)
	}
	if got := gauge(f, "batchd_cost_usd_total", "model", testModel); math.Abs(got-u.BatchUSD) > 1e-12 {
		t.Errorf("cost %v, usage %v", got, u.BatchUSD)
	}
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	var rd struct {
		Ready      bool   `json:"ready"`
		Driver     string `json:"driver"`
		Store      string `json:"store"`
		Migrations string `json:"migrations"`
		Leader     bool   `json:"leader"`
	}
	waitFor(t, 30*time.Second, "the one process to lead", func() bool {
		r := do(t, "GET", ts.URL+"/readyz", nil)
		if err := json.Unmarshal(r.Body, &rd); err != nil {
			t.Fatalf("readyz body %q: %v", r.Body, err)
		}
		if r.Status != 200 || !rd.Ready || rd.Driver != "sqlite" || rd.Store != "ok" || rd.Migrations != "current" {
			t.Fatalf("readyz %d %s", r.Status, r.Body)
		}
		return rd.Leader
	})
	// A store that no longer answers makes the process unready.
	ts.Srv.Store.Close()
	r := do(t, "GET", ts.URL+"/readyz", nil)
	if err := json.Unmarshal(r.Body, &rd); err != nil || r.Status != 503 || rd.Ready || rd.Store != "unavailable" {
		t.Fatalf("readyz on a closed store: %d %s", r.Status, r.Body)
	}
	if r := do(t, "GET", ts.URL+"/healthz", nil); r.Status != 200 {
		t.Errorf("healthz %d", r.Status)
	}
}
