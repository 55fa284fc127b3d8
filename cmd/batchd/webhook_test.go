package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// hookReceiver records webhooks; fail decides, per call, to answer 500.
type hookReceiver struct {
	mu    sync.Mutex
	got   []received
	fail  func(n int64) bool
	calls atomic.Int64
	hang  atomic.Bool
}

type received struct {
	at     time.Time
	header http.Header
	body   []byte
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := h.calls.Add(1)
	body, _ := io.ReadAll(r.Body)
	if h.hang.Load() {
		<-r.Context().Done()
		return
	}
	if h.fail != nil && h.fail(n) {
		w.WriteHeader(500)
		return
	}
	h.mu.Lock()
	h.got = append(h.got, received{time.Now(), r.Header.Clone(), body})
	h.mu.Unlock()
	w.WriteHeader(204)
}

func (h *hookReceiver) received() []received {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]received(nil), h.got...)
}

func postJSON(t testing.TB, url, body string) []byte {
	t.Helper()
	res, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("POST %s: %d %s", url, res.StatusCode, out)
	}
	return out
}

func endpoint(t testing.TB, base, url, types string) (id, secret string) {
	t.Helper()
	var ep struct{ ID, Secret string }
	json.Unmarshal(postJSON(t, base+"/v1/webhooks/endpoints", `{"url":"`+url+`","event_types":[`+types+`]}`), &ep)
	return ep.ID, ep.Secret
}

// TestWebhookSurvivesSIGKILL: the server is killed (1) while a retry is
// scheduled and (2) while an attempt is in flight; after each restart the
// webhook still arrives, exactly with the event's webhook-id, verified.
func TestWebhookSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"retry-scheduled", "in-flight"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			rc := &hookReceiver{}
			if mode == "retry-scheduled" {
				rc.fail = func(n int64) bool { return n == 1 }
			} else {
				rc.hang.Store(true)
			}
			recv := httptest.NewServer(rc)
			t.Cleanup(recv.Close)
			dir := t.TempDir()
			flags := []string{"--webhook-allow-cidr", "127.0.0.0/8"}
			p := startServe(t, dir, flags...)
			_, secret := endpoint(t, p.URL, recv.URL, `"message_batch.ended"`)
			b := createBatch(t, p.URL, bodyReader(1, func(int) string { return "hi" }))
			waitEnded(t, p.URL, b.ID, 10*time.Second)
			deadline := time.Now().Add(10 * time.Second)
			for rc.calls.Load() < 1 {
				if time.Now().After(deadline) {
					t.Fatal("no first attempt")
				}
				time.Sleep(5 * time.Millisecond)
			}
			p.kill(syscall.SIGKILL)
			rc.hang.Store(false)

			p2 := startServe(t, dir, flags...)
			_ = p2
			deadline = time.Now().Add(20 * time.Second) // a scheduled retry is due 5 s (±20%) later
			for len(rc.received()) == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the webhook never arrived after the restart (%d calls)", rc.calls.Load())
				}
				time.Sleep(10 * time.Millisecond)
			}
			got := rc.received()
			wh, _ := standardwebhooks.NewWebhook(secret)
			if err := wh.Verify(got[0].body, got[0].header); err != nil {
				t.Fatal(err)
			}
			var env struct {
				ID   string              `json:"id"`
				Data struct{ ID string } `json:"data"`
			}
			json.Unmarshal(got[0].body, &env)
			if env.Data.ID != b.ID || got[0].header.Get("webhook-id") != env.ID {
				t.Fatalf("delivered %s with webhook-id %s", got[0].body, got[0].header.Get("webhook-id"))
			}
		})
	}
}

// BenchmarkWebhooks100Batches: 100 batches end at about the same moment;
// three endpoints, one of them down (connection refused). Reports the p99
// time from a batch's ended_at to its webhook arriving at a healthy
// receiver (target under 1 s) and deliveries per second.
func BenchmarkWebhooks100Batches(b *testing.B) {
	const batches = 100
	for range b.N {
		r1, r2 := &hookReceiver{}, &hookReceiver{}
		s1, s2 := httptest.NewServer(r1), httptest.NewServer(r2)
		down := httptest.NewServer(http.NotFoundHandler())
		downURL := down.URL
		down.Close() // refused from now on
		p := startServe(b, b.TempDir(), "--webhook-allow-cidr", "127.0.0.0/8")
		for _, u := range []string{s1.URL, s2.URL, downURL} {
			endpoint(b, p.URL, u, `"message_batch.ended"`)
		}
		for i := range batches {
			createBatch(b, p.URL, bodyReader(1, func(int) string { return "[[sim latency=1s]] " + string(rune('a'+i%26)) }))
		}
		deadline := time.Now().Add(60 * time.Second)
		for len(r1.received()) < batches || len(r2.received()) < batches {
			if time.Now().After(deadline) {
				b.Fatalf("received %d and %d of %d", len(r1.received()), len(r2.received()), batches)
			}
			time.Sleep(10 * time.Millisecond)
		}
		var lat []time.Duration
		first, last := time.Now(), time.Time{}
		for _, r := range append(r1.received(), r2.received()...) {
			var env struct {
				Data struct {
					EndedAt time.Time `json:"ended_at"`
				} `json:"data"`
			}
			json.Unmarshal(r.body, &env)
			lat = append(lat, r.at.Sub(env.Data.EndedAt))
			if r.at.Before(first) {
				first = r.at
			}
			if r.at.After(last) {
				last = r.at
			}
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		p99 := lat[len(lat)*99/100-1]
		b.ReportMetric(p99.Seconds(), "p99_s")
		b.ReportMetric(p99.Seconds()/1.0, "p99_x_limit")
		b.ReportMetric(float64(len(lat))/max(last.Sub(first).Seconds(), 0.001), "deliveries/s")
		s1.Close()
		s2.Close()
	}
}
