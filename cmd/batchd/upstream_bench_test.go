package main

import (
	"cmp"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Benchmarks of rate control against a fake Anthropic upstream run in the
// test process; batchd itself is the real binary with a config file:
//
//	go test ./cmd/batchd -run '^$' -bench 'Upstream' -benchtime 1x

// fakeUpstream answers POST /v1/messages after latency, throttling with 429
// what is over its concurrency or its requests-per-minute bucket.
type fakeUpstream struct {
	latency    time.Duration
	capacity   int64   // concurrent requests admitted; 0 = no limit
	perSecond  float64 // token bucket rate; 0 = no limit
	inFlight   atomic.Int64
	calls      atomic.Int64
	throttled  atomic.Int64
	mu         sync.Mutex
	level      float64
	at         time.Time
	oks        []time.Time // when each success was answered
	bucketSize float64
	retryAfter string // the retry-after header of a 429; "" for none
}

func (f *fakeUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.calls.Add(1)
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	throttle := f.capacity > 0 && n > f.capacity
	if f.perSecond > 0 && !throttle {
		f.mu.Lock()
		now := time.Now()
		if f.at.IsZero() {
			f.at, f.level = now, f.bucketSize
		}
		f.level = min(f.bucketSize, f.level+now.Sub(f.at).Seconds()*f.perSecond)
		f.at = now
		if f.level >= 1 {
			f.level--
		} else {
			throttle = true
		}
		f.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/json")
	if throttle {
		f.throttled.Add(1)
		if f.retryAfter != "" {
			w.Header().Set("Retry-After", f.retryAfter)
		}
		w.WriteHeader(429)
		w.Write([]byte(`{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}`))
		return
	}
	time.Sleep(f.latency)
	f.mu.Lock()
	f.oks = append(f.oks, time.Now())
	f.mu.Unlock()
	w.Write([]byte(`{"id":"msg_x","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}`))
}

func upstreamServe(b testing.TB, up *fakeUpstream, backendTOML string, flags ...string) *proc {
	b.Helper()
	srv := httptest.NewServer(up)
	b.Cleanup(srv.Close)
	dir := b.TempDir()
	cfg := filepath.Join(dir, "batchd.toml")
	body := fmt.Sprintf("[[backends]]\nname = \"up\"\nkind = \"anthropic\"\nbase_url = %q\napi_key_env = \"BENCH_UPSTREAM_KEY\"\n%s\n[[routes]]\nmodel = \"*\"\nbackend = \"up\"\n", srv.URL, backendTOML)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		b.Fatal(err)
	}
	os.Setenv("BENCH_UPSTREAM_KEY", "sk-bench")
	return startServe(b, filepath.Join(dir, "data"), append([]string{"--config", cfg, "--retry-backoff", "50ms"}, flags...)...)
}

// BenchmarkUpstreamWrongConcurrency: the upstream admits C requests at once
// with latency L and answers 429 above; batchd starts 4× too low and 4×
// too high. Target: 10,000 requests in at most 1.10 × N·L/C.
func BenchmarkUpstreamWrongConcurrency(b *testing.B) {
	const n, c = 10_000, 100
	lat, _ := time.ParseDuration(benchEnv("BATCHD_BENCH_LATENCY", "50ms"))
	// start = c with fixed_concurrency is the baseline: a perfect guess.
	for _, start := range []int{c / 4, 4 * c, c} {
		b.Run("start="+strconv.Itoa(start), func(b *testing.B) {
			for range b.N {
				up := &fakeUpstream{latency: lat, capacity: c}
				p := upstreamServe(b, up, fmt.Sprintf("concurrency = %d\nmax_concurrency = %d\nfixed_concurrency = %v", start, 8*c, start == c))
				t0 := time.Now()
				bt := createBatch(b, p.URL, bodyReader(n, func(i int) string { return "q " + strconv.Itoa(i) }))
				end := waitEnded(b, p.URL, bt.ID, 10*time.Minute)
				ideal := time.Duration(n) * lat / c
				b.ReportMetric(time.Since(t0).Seconds()/ideal.Seconds(), "ratio")
				b.ReportMetric(end.EndedAt.Sub(end.CreatedAt).Seconds()/ideal.Seconds(), "ratio_after_create")
				b.ReportMetric(float64(up.throttled.Load())/float64(up.calls.Load()), "share_429")
				if end.RequestCounts.Succeeded != n {
					b.Fatalf("counts %+v", end.RequestCounts)
				}
			}
		})
	}
}

// BenchmarkUpstreamRequestsPerMinute: the upstream allows R requests a
// minute (a token bucket holding one second's worth) and batchd is told R.
// Targets: at least 95% of R sustained, at most 1% of calls answered 429.
func BenchmarkUpstreamRequestsPerMinute(b *testing.B) {
	const rpm = 12_000 // 200 a second
	const n = 3_000
	for range b.N {
		up := &fakeUpstream{latency: 20 * time.Millisecond, perSecond: rpm / 60.0, bucketSize: rpm / 60.0}
		p := upstreamServe(b, up, fmt.Sprintf("concurrency = 64\nrequests_per_minute = %d", rpm))
		bt := createBatch(b, p.URL, bodyReader(n, func(i int) string { return "q " + strconv.Itoa(i) }))
		end := waitEnded(b, p.URL, bt.ID, 10*time.Minute)
		if end.RequestCounts.Succeeded != n {
			b.Fatalf("counts %+v", end.RequestCounts)
		}
		// The sustained rate: the middle 80% of the run, leaving out the
		// start (the upstream's bucket starts full) and the tail.
		up.mu.Lock()
		lo, hi := len(up.oks)/10, len(up.oks)*9/10
		got := float64(hi-lo) / up.oks[hi].Sub(up.oks[lo]).Minutes()
		up.mu.Unlock()
		b.ReportMetric(got, "req/min")
		b.ReportMetric(got/rpm, "x_R")
		b.ReportMetric(float64(up.throttled.Load())/float64(up.calls.Load()), "share_429")
	}
}

// BenchmarkUpstreamThrottled: the upstream admits C = 32 calls at once with
// latency L = 100 ms and answers 429 above that, with or without a
// `retry-after: 1`. batchd guesses 4× too high (max_concurrency = 128) and
// 4× too low (concurrency = 8, max_concurrency = 128). Target for N = 5,000
// requests (BATCHD_BENCH_N): ratio, the wall time from create to end over
// N·L/C, at most 1.15, and share_429, the upstream calls answered 429,
// under 0.02. A 429's retry-after used to pause the whole backend (10×).
//
//	go test ./cmd/batchd -run '^$' -bench 'UpstreamThrottled' -benchtime 1x -p 1
func BenchmarkUpstreamThrottled(b *testing.B) {
	const c = 32
	lat := 100 * time.Millisecond
	n, _ := strconv.Atoi(benchEnv("BATCHD_BENCH_N", "5000"))
	for _, guess := range []struct{ name, toml string }{
		{"guess=128", "max_concurrency = 128"},
		{"guess=8", "concurrency = 8\nmax_concurrency = 128"},
	} {
		for _, ra := range []string{"1", ""} {
			b.Run(guess.name+"/retry_after="+cmp.Or(ra, "none"), func(b *testing.B) {
				for range b.N {
					up := &fakeUpstream{latency: lat, capacity: c, retryAfter: ra}
					p := upstreamServe(b, up, guess.toml)
					t0 := time.Now()
					bt := createBatch(b, p.URL, bodyReader(n, func(i int) string { return "q " + strconv.Itoa(i) }))
					end := waitEnded(b, p.URL, bt.ID, 10*time.Minute)
					ideal := time.Duration(n) * lat / c
					b.ReportMetric(time.Since(t0).Seconds()/ideal.Seconds(), "ratio")
					b.ReportMetric(float64(up.throttled.Load())/float64(up.calls.Load()), "share_429")
					if end.RequestCounts.Succeeded != int64(n) {
						b.Fatalf("counts %+v", end.RequestCounts)
					}
				}
			})
		}
	}
}

// TestUpstreamThrottleIsLoggedAtDebug: with --log-level debug, each
// upstream throttle is logged with its backend, status, retry-after and
// the new limit, so an operator can see why a backend slows down.
func TestUpstreamThrottleIsLoggedAtDebug(t *testing.T) {
	t.Parallel()
	up := &fakeUpstream{latency: 20 * time.Millisecond, capacity: 1, retryAfter: "1"}
	p := upstreamServe(t, up, "concurrency = 4", "--log-level", "debug")
	bt := createBatch(t, p.URL, bodyReader(8, func(i int) string { return "q " + strconv.Itoa(i) }))
	waitEnded(t, p.URL, bt.ID, 2*time.Minute)
	logs := p.Logs()
	for _, want := range []string{"upstream throttled", "backend=up", "status=429", "retry_after=1s", "limit="} {
		if !strings.Contains(logs, want) {
			t.Fatalf("debug logs lack %q:\n%s", want, logs)
		}
	}
}
