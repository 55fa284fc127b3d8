// Package metrics is batchd's Prometheus instrumentation. Counters and
// histograms are pushed by the parts that see the events (the dispatcher,
// the webhook deliverer, the store wrapper); gauges of state (batches by
// status, queue depth, limits and calls in flight) are read at scrape time
// from a Source, so nothing keeps a second copy of what the store knows.
//
// Labels are of low cardinality: backends, result types, status classes,
// token kinds, store verbs, and models capped at MaxModels distinct values
// (the rest are "other"); never a batch id or a custom_id.
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/batchd/batchd/internal/cost"
)

// MaxModels is how many distinct model labels a process exports; a model
// seen after them is counted as "other", so a client sending arbitrary
// model names cannot grow the metrics without bound.
const MaxModels = 64

// BackendState is one backend's limits and load at scrape time.
type BackendState struct {
	Name             string
	ConcurrencyLimit int
	InFlight         int
	// QueueDepth is the requests waiting for this backend (pending, due or
	// not), OldestPending the age of the oldest due one (0 with none).
	QueueDepth    int64
	OldestPending time.Duration
}

// State is what a scrape reads from the rest of the process.
type State struct {
	// BatchesByStatus counts batches by processing status.
	BatchesByStatus map[string]int64
	Backends        []BackendState
	// Subscribers is the event streams open on this process.
	Subscribers int
}

// Source gives the state a scrape reports. It is called once per scrape
// with the scrape's context; an error is reported as a scrape error.
type Source func(ctx context.Context) (State, error)

// Metrics holds batchd's collectors in a registry of its own.
type Metrics struct {
	reg *prometheus.Registry
	log *slog.Logger

	settled      *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	upstream     *prometheus.CounterVec
	retries      *prometheus.CounterVec
	throttles    *prometheus.CounterVec
	rateWait     *prometheus.HistogramVec
	tokens       *prometheus.CounterVec
	costUSD      *prometheus.CounterVec
	deliveries   *prometheus.CounterVec
	deliveryTime prometheus.Histogram
	storeOps     *prometheus.HistogramVec

	modelsMu sync.Mutex
	models   map[string]bool
}

// New registers every collector, the Go runtime's and the process's
// included. source may be nil (no state gauges).
func New(source Source, logger *slog.Logger) *Metrics {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{reg: prometheus.NewRegistry(), log: logger, models: map[string]bool{}}
	latency := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}
	m.settled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_requests_settled_total", Help: "Requests settled, by backend and result type (succeeded, errored, canceled, expired).",
	}, []string{"backend", "result"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "batchd_request_duration_seconds", Help: "Time of one upstream call (an attempt), by backend and model.", Buckets: latency,
	}, []string{"backend", "model"})
	m.upstream = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_upstream_responses_total", Help: "Upstream responses by backend and status class (2xx, 4xx, 429, 5xx, 529, network).",
	}, []string{"backend", "class"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_request_retries_total", Help: "Attempts that failed and were scheduled again, by backend.",
	}, []string{"backend"})
	m.throttles = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_upstream_throttles_total", Help: "Upstream throttles (429, 529) by backend.",
	}, []string{"backend"})
	m.rateWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "batchd_rate_limit_wait_seconds", Help: "Time a call waited for the backend's rate controller.", Buckets: latency,
	}, []string{"backend"})
	m.tokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_tokens_total", Help: "Tokens of succeeded requests, by model and kind (input, output, cache_write_5m, cache_write_1h, cache_read).",
	}, []string{"model", "kind"})
	m.costUSD = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_cost_usd_total", Help: "Cost of succeeded requests at batch prices, in USD, by model (priced models only).",
	}, []string{"model"})
	m.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_webhook_deliveries_total", Help: "Webhook delivery attempts by outcome (delivered, failed, gave_up).",
	}, []string{"outcome"})
	m.deliveryTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "batchd_webhook_delivery_seconds", Help: "Time of one webhook delivery attempt.", Buckets: latency,
	})
	m.storeOps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "batchd_store_operation_seconds", Help: "Time of store operations, by verb.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5},
	}, []string{"op"})
	m.reg.MustRegister(m.settled, m.duration, m.upstream, m.retries, m.throttles, m.rateWait,
		m.tokens, m.costUSD, m.deliveries, m.deliveryTime, m.storeOps,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if source != nil {
		m.reg.MustRegister(&stateCollector{source: source, log: m.log})
	}
	return m
}

// Handler serves the registry in Prometheus's text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: slogAdapter{m.log}, Timeout: 10 * time.Second})
}

// Registry is the registry the collectors are in, for tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// model is the label for a model: itself among the first MaxModels seen.
func (m *Metrics) model(name string) string {
	m.modelsMu.Lock()
	defer m.modelsMu.Unlock()
	if m.models[name] {
		return name
	}
	if len(m.models) >= MaxModels || name == "" {
		return "other"
	}
	m.models[name] = true
	return name
}

// StatusClass is the label of an HTTP status: 429 and 529 apart from
// their class, "network" for no response.
func StatusClass(status int) string {
	switch {
	case status == 429:
		return "429"
	case status == 529:
		return "529"
	case status >= 200 && status < 300:
		return "2xx"
	case status >= 300 && status < 400:
		return "3xx"
	case status >= 400 && status < 500:
		return "4xx"
	case status >= 500 && status < 600:
		return "5xx"
	}
	return "network"
}

// Delivery records one webhook delivery attempt and its outcome.
func (m *Metrics) Delivery(outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.deliveries.WithLabelValues(outcome).Inc()
	m.deliveryTime.Observe(d.Seconds())
}

// StoreOp records one store verb's time.
func (m *Metrics) StoreOp(op string, d time.Duration) {
	if m == nil {
		return
	}
	m.storeOps.WithLabelValues(op).Observe(d.Seconds())
}

// stateCollector reads a Source at each scrape.
type stateCollector struct {
	source Source
	log    *slog.Logger
}

var (
	descBatches   = prometheus.NewDesc("batchd_batches", "Batches by processing status.", []string{"status"}, nil)
	descLimit     = prometheus.NewDesc("batchd_backend_concurrency_limit", "A backend's current limit on calls in flight (this process's share in a cluster).", []string{"backend"}, nil)
	descInFlight  = prometheus.NewDesc("batchd_backend_in_flight", "A backend's calls in flight on this process.", []string{"backend"}, nil)
	descQueue     = prometheus.NewDesc("batchd_queue_depth", "Requests waiting for a backend, cluster-wide.", []string{"backend"}, nil)
	descOldest    = prometheus.NewDesc("batchd_oldest_pending_seconds", "Age of the oldest request due for a backend, cluster-wide.", []string{"backend"}, nil)
	descSubscribe = prometheus.NewDesc("batchd_event_subscribers", "Event streams open on this process.", nil, nil)
	descScrapeErr = prometheus.NewDesc("batchd_state_scrape_error", "1 when the state gauges could not be read at this scrape.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBatches, descLimit, descInFlight, descQueue, descOldest, descSubscribe, descScrapeErr} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.source(ctx)
	if err != nil {
		c.log.Warn("metrics state", "err", err)
		ch <- prometheus.MustNewConstMetric(descScrapeErr, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(descScrapeErr, prometheus.GaugeValue, 0)
	for status, n := range st.BatchesByStatus {
		ch <- prometheus.MustNewConstMetric(descBatches, prometheus.GaugeValue, float64(n), status)
	}
	for _, b := range st.Backends {
		ch <- prometheus.MustNewConstMetric(descLimit, prometheus.GaugeValue, float64(b.ConcurrencyLimit), b.Name)
		ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(b.InFlight), b.Name)
		ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(b.QueueDepth), b.Name)
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, b.OldestPending.Seconds(), b.Name)
	}
	ch <- prometheus.MustNewConstMetric(descSubscribe, prometheus.GaugeValue, float64(st.Subscribers))
}

// slogAdapter lets promhttp log through slog.
type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Println(v ...any) { a.log.Warn("metrics", "err", v) }

// Backend is one backend's collectors bound to its label, so the
// dispatcher's hot path looks nothing up by label per call. Its methods
// are safe for concurrent use; a nil *Backend records nothing.
type Backend struct {
	m        *Metrics
	name     string
	settled  map[string]prometheus.Counter // by result type
	upstream map[string]prometheus.Counter // by status class
	retries  prometheus.Counter
	throttle prometheus.Counter
	rateWait prometheus.Observer

	mu       sync.Mutex
	duration map[string]prometheus.Observer // by model label
	tokens   map[string]*modelTokens        // by model
}

// modelTokens are one model's token counters by kind, and its cost.
type modelTokens struct {
	kinds [5]prometheus.Counter // input, output, cache_write_5m, cache_write_1h, cache_read
	cost  prometheus.Counter
}

var tokenKinds = [5]string{"input", "output", "cache_write_5m", "cache_write_1h", "cache_read"}

// Backend returns the collectors of backend name; nil when m is nil.
func (m *Metrics) Backend(name string) *Backend {
	if m == nil {
		return nil
	}
	b := &Backend{m: m, name: name, settled: map[string]prometheus.Counter{}, upstream: map[string]prometheus.Counter{},
		retries: m.retries.WithLabelValues(name), throttle: m.throttles.WithLabelValues(name), rateWait: m.rateWait.WithLabelValues(name),
		duration: map[string]prometheus.Observer{}, tokens: map[string]*modelTokens{}}
	for _, typ := range []string{"succeeded", "errored", "canceled", "expired"} {
		b.settled[typ] = m.settled.WithLabelValues(name, typ)
	}
	for _, class := range []string{"2xx", "3xx", "4xx", "429", "5xx", "529", "network"} {
		b.upstream[class] = m.upstream.WithLabelValues(name, class)
	}
	return b
}

// Settled counts one request settled with result type typ.
func (b *Backend) Settled(typ string) {
	if b == nil {
		return
	}
	if c, ok := b.settled[typ]; ok {
		c.Inc()
		return
	}
	b.m.settled.WithLabelValues(b.name, typ).Inc()
}

// Retried counts an attempt scheduled again.
func (b *Backend) Retried() {
	if b != nil {
		b.retries.Inc()
	}
}

// Upstream counts one upstream response by its status, and a throttle.
func (b *Backend) Upstream(status int) {
	if b == nil {
		return
	}
	class := StatusClass(status)
	b.upstream[class].Inc()
	if class == "429" || class == "529" {
		b.throttle.Inc()
	}
}

// RateWait records a call's wait for the backend's limits.
func (b *Backend) RateWait(d time.Duration) {
	if b != nil {
		b.rateWait.Observe(d.Seconds())
	}
}

// CallDuration records one call's time, rate-limit waits apart.
func (b *Backend) CallDuration(model string, d time.Duration) {
	if b == nil {
		return
	}
	b.mu.Lock()
	o, ok := b.duration[model]
	if !ok {
		o = b.m.duration.WithLabelValues(b.name, b.m.model(model))
		if len(b.duration) < 4*MaxModels { // the labels are capped; the cache too
			b.duration[model] = o
		}
	}
	b.mu.Unlock()
	o.Observe(d.Seconds())
}

// Usage counts a succeeded request's tokens, and its cost at batch price
// when table prices the model.
func (b *Backend) Usage(model string, t cost.Tokens, table *cost.Table) {
	if b == nil {
		return
	}
	b.mu.Lock()
	mt, ok := b.tokens[model]
	if !ok {
		label := b.m.model(model)
		mt = &modelTokens{}
		for i, k := range tokenKinds {
			mt.kinds[i] = b.m.tokens.WithLabelValues(label, k)
		}
		if table != nil {
			if _, priced := table.Lookup(model); priced {
				mt.cost = b.m.costUSD.WithLabelValues(label)
			}
		}
		if len(b.tokens) < 4*MaxModels {
			b.tokens[model] = mt
		}
	}
	b.mu.Unlock()
	for i, n := range [5]int64{t.Input, t.Output, t.CacheWrite5m, t.CacheWrite1h, t.CacheRead} {
		if n != 0 {
			mt.kinds[i].Add(float64(n))
		}
	}
	if mt.cost != nil {
		p, _ := table.Lookup(model)
		mt.cost.Add(p.Batch(t))
	}
}
