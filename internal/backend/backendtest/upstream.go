package backendtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Upstream is a Messages API upstream for tests of rate control and
// cancels: every call takes Latency (a throttled one too, so that the peak
// is what batchd sent at once), and a call above Capacity in flight (0: no
// cap) is answered 429 with retry-after: 1, as a concurrency-capped API
// does. It records when each call started, the most calls it had in flight
// and the accepted calls of each API key (each test process has its own).
type Upstream struct {
	URL string

	capacity int64
	latency  time.Duration
	inFlight atomic.Int64
	peak     atomic.Int64
	rejected atomic.Int64

	mu     sync.Mutex
	starts []time.Time
	byKey  map[string]int
}

// NewUpstream serves an Upstream until the test ends.
func NewUpstream(tb testing.TB, capacity int, latency time.Duration) *Upstream {
	tb.Helper()
	u := &Upstream{capacity: int64(capacity), latency: latency, byKey: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(u.serve))
	tb.Cleanup(srv.Close)
	u.URL = srv.URL
	return u
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.starts = append(u.starts, time.Now())
	u.mu.Unlock()
	n := u.inFlight.Add(1)
	defer u.inFlight.Add(-1)
	for p := u.peak.Load(); n > p && !u.peak.CompareAndSwap(p, n); p = u.peak.Load() {
	}
	body, _ := io.ReadAll(r.Body)
	select {
	case <-time.After(u.latency):
	case <-r.Context().Done():
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if u.capacity > 0 && n > u.capacity {
		u.rejected.Add(1)
		w.Header().Set("retry-after", "1")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprint(w, `{"type":"error","error":{"type":"rate_limit_error","message":"too many concurrent calls"}}`)
		return
	}
	u.mu.Lock()
	u.byKey[r.Header.Get("x-api-key")]++
	u.mu.Unlock()
	var p struct {
		Model string `json:"model"`
	}
	json.Unmarshal(body, &p)
	fmt.Fprintf(w, `{"id":"msg_upstream","type":"message","role":"assistant","model":%q,"content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}`, p.Model)
}

// Peak is the most calls the upstream had in flight at once.
func (u *Upstream) Peak() int64 { return u.peak.Load() }

// Rejected counts the calls answered 429.
func (u *Upstream) Rejected() int64 { return u.rejected.Load() }

// Calls counts the calls that started, throttled ones included.
func (u *Upstream) Calls() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.starts)
}

// StartsAfter counts the calls that started after t, and says when the
// last call of all started.
func (u *Upstream) StartsAfter(t time.Time) (n int, last time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, s := range u.starts {
		if s.After(t) {
			n++
		}
		if s.After(last) {
			last = s
		}
	}
	return n, last
}

// ByKey returns the accepted calls of each API key.
func (u *Upstream) ByKey() map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make(map[string]int, len(u.byKey))
	for k, n := range u.byKey {
		out[k] = n
	}
	return out
}
