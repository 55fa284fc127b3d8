package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/batchd/batchd/internal/cost"
)

// scrape reads the handler's text output through Prometheus's own parser,
// so a malformed exposition fails here as it would in a scraper.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(rec.Body.String()))
	if err != nil {
		t.Fatalf("parse exposition: %v\n%s", err, rec.Body)
	}
	return fams
}

// value is the value of the sample of family name with exactly labels.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no family %s", name)
	}
	for _, mt := range f.Metric {
		got := map[string]string{}
		for _, l := range mt.Label {
			got[l.GetName()] = l.GetValue()
		}
		match := len(got) == len(labels)/2
		for i := 0; match && i < len(labels); i += 2 {
			match = got[labels[i]] == labels[i+1]
		}
		if !match {
			continue
		}
		switch {
		case mt.Counter != nil:
			return mt.Counter.GetValue()
		case mt.Gauge != nil:
			return mt.Gauge.GetValue()
		case mt.Histogram != nil:
			return float64(mt.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no sample %s%v in %v", name, labels, f.Metric)
	return 0
}

func TestMetricsMove(t *testing.T) {
	t.Parallel()
	m := New(func(context.Context) (State, error) {
		return State{BatchesByStatus: map[string]int64{"in_progress": 2, "ended": 5},
			Backends:    []BackendState{{Name: "sim", ConcurrencyLimit: 64, InFlight: 3, QueueDepth: 1000, OldestPending: 1500 * time.Millisecond}},
			Subscribers: 4}, nil
	}, nil)
	sim, up := m.Backend("sim"), m.Backend("up")
	sim.Settled("succeeded")
	sim.Settled("succeeded")
	sim.Settled("errored")
	call(up, "claude-sonnet-4-5", 200, 20*time.Millisecond)
	call(up, "claude-sonnet-4-5", 429, time.Millisecond)
	call(up, "claude-sonnet-4-5", 0, time.Millisecond)
	up.Retried()
	up.RateWait(time.Second)
	up.Usage("claude-sonnet-4-5", cost.Tokens{Input: 1_000_000, Output: 100_000}, cost.Default())
	up.Usage("llama-local", cost.Tokens{Input: 7}, cost.Default())
	m.Delivery("delivered", 30*time.Millisecond)
	m.StoreOp("RequestsClaim", time.Millisecond)

	f := scrape(t, m)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"batchd_requests_settled_total", []string{"backend", "sim", "result", "succeeded"}, 2},
		{"batchd_requests_settled_total", []string{"backend", "sim", "result", "errored"}, 1},
		{"batchd_request_duration_seconds", []string{"backend", "up", "model", "claude-sonnet-4-5"}, 3},
		{"batchd_upstream_responses_total", []string{"backend", "up", "class", "2xx"}, 1},
		{"batchd_upstream_responses_total", []string{"backend", "up", "class", "429"}, 1},
		{"batchd_upstream_responses_total", []string{"backend", "up", "class", "network"}, 1},
		{"batchd_upstream_throttles_total", []string{"backend", "up"}, 1},
		{"batchd_request_retries_total", []string{"backend", "up"}, 1},
		{"batchd_rate_limit_wait_seconds", []string{"backend", "up"}, 1},
		{"batchd_tokens_total", []string{"model", "claude-sonnet-4-5", "kind", "input"}, 1_000_000},
		{"batchd_tokens_total", []string{"model", "claude-sonnet-4-5", "kind", "output"}, 100_000},
		{"batchd_tokens_total", []string{"model", "llama-local", "kind", "input"}, 7},
		{"batchd_cost_usd_total", []string{"model", "claude-sonnet-4-5"}, (3 + 1.5) / 2}, // batch price
		{"batchd_webhook_deliveries_total", []string{"outcome", "delivered"}, 1},
		{"batchd_webhook_delivery_seconds", nil, 1},
		{"batchd_store_operation_seconds", []string{"op", "RequestsClaim"}, 1},
		{"batchd_batches", []string{"status", "ended"}, 5},
		{"batchd_backend_concurrency_limit", []string{"backend", "sim"}, 64},
		{"batchd_backend_in_flight", []string{"backend", "sim"}, 3},
		{"batchd_queue_depth", []string{"backend", "sim"}, 1000},
		{"batchd_oldest_pending_seconds", []string{"backend", "sim"}, 1.5},
		{"batchd_event_subscribers", nil, 4},
		{"batchd_state_scrape_error", nil, 0},
	} {
		if got := value(t, f, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if _, ok := f["batchd_cost_usd_total"]; ok && len(f["batchd_cost_usd_total"].Metric) != 1 {
		t.Errorf("an unpriced model has a cost: %v", f["batchd_cost_usd_total"].Metric)
	}
	if f["go_goroutines"] == nil || f["process_cpu_seconds_total"] == nil {
		t.Error("runtime and process collectors missing")
	}
}

func TestModelLabelsAreCapped(t *testing.T) {
	t.Parallel()
	m := New(nil, nil)
	b := m.Backend("b")
	for i := range MaxModels + 10 {
		call(b, fmt.Sprint("model-", i), 200, time.Millisecond)
	}
	f := scrape(t, m)
	if n := len(f["batchd_request_duration_seconds"].Metric); n != MaxModels+1 {
		t.Errorf("%d model series, want %d and other", n, MaxModels)
	}
	if got := value(t, f, "batchd_request_duration_seconds", "backend", "b", "model", "other"); got != 10 {
		t.Errorf("other = %v, want 10", got)
	}
}

func TestStateErrorIsReported(t *testing.T) {
	t.Parallel()
	m := New(func(context.Context) (State, error) { return State{}, errors.New("store down") }, nil)
	if got := value(t, scrape(t, m), "batchd_state_scrape_error", nil...); got != 1 {
		t.Errorf("scrape error gauge %v", got)
	}
}

// TestGrafanaDashboardNamesRealMetrics: every batchd_ metric the shipped
// Grafana dashboard queries is one the registry exports, so the dashboard
// cannot drift from the code.
func TestGrafanaDashboardNamesRealMetrics(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	m := New(func(context.Context) (State, error) {
		return State{BatchesByStatus: map[string]int64{"ended": 1}, Backends: []BackendState{{Name: "b"}}}, nil
	}, nil)
	b := m.Backend("b")
	b.Settled("succeeded")
	call(b, "m", 200, time.Millisecond)
	call(b, "m", 429, time.Millisecond)
	b.Retried()
	b.RateWait(time.Millisecond)
	b.Usage("claude-sonnet-4-5", cost.Tokens{Input: 1}, cost.Default())
	m.Delivery("delivered", time.Millisecond)
	m.StoreOp("x", time.Millisecond)
	fams := scrape(t, m)
	name := regexp.MustCompile(`\bbatchd_[a-z0-9_]+`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, metric := range name.FindAllString(tg.Expr, -1) {
				n++
				base := strings.TrimSuffix(metric, "_bucket")
				if fams[base] == nil {
					t.Errorf("panel %q queries %s, which batchd does not export", p.Title, metric)
				}
			}
		}
	}
	if n < 15 {
		t.Errorf("only %d metric references in the dashboard", n)
	}
}

// call records one upstream call as the dispatcher does: its response
// and its duration.
func call(b *Backend, model string, status int, d time.Duration) {
	b.Upstream(status)
	b.CallDuration(model, d)
}
