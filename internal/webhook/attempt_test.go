package webhook

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// loopbackClient is a guarded client that may reach the httptest servers.
func loopbackClient(t *testing.T, timeout time.Duration) *http.Client {
	t.Helper()
	return mustGuard(t, GuardConfig{AllowCIDRs: []string{"127.0.0.0/8", "::1/128"}}).Client(timeout)
}

func TestAttemptClassification(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("a"), 100<<10)
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		status    int
		class     string
		ok, gone  bool
		retry     time.Duration
		bodyLen   int
		truncated bool
	}{
		{"200", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "thanks") }, 200, "", true, false, 0, 6, false},
		{"204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }, 204, "", true, false, 0, 0, false},
		{"202 with retry-after is still OK", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(202)
		}, 202, "", true, false, 30 * time.Second, 0, false},
		{"301", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/elsewhere", http.StatusMovedPermanently)
		}, 301, ClassHTTP3xx, false, false, 0, -1, false},
		{"304", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(304) }, 304, ClassHTTP3xx, false, false, 0, 0, false},
		{"400", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "bad", 400) }, 400, ClassHTTP4xx, false, false, 0, 4, false},
		{"410", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(410) }, 410, ClassHTTP4xx, false, true, 0, 0, false},
		{"429 retry-after seconds", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(429)
		}, 429, ClassHTTP4xx, false, false, 120 * time.Second, 0, false},
		{"503 retry-after date", func(w http.ResponseWriter, r *http.Request) {
			now := time.Now().UTC().Truncate(time.Second)
			w.Header().Set("Date", now.Format(http.TimeFormat))
			w.Header().Set("Retry-After", now.Add(120*time.Second).Format(http.TimeFormat))
			w.WriteHeader(503)
		}, 503, ClassHTTP5xx, false, false, 120 * time.Second, 0, false},
		{"500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) }, 500, ClassHTTP5xx, false, false, 0, 5, false},
		{"200 with huge body", func(w http.ResponseWriter, r *http.Request) { w.Write(big) }, 200, "", true, false, 0, MaxResponseBody, true},
		{"500 with huge body", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(500)
			w.Write(big)
		}, 500, ClassHTTP5xx, false, false, 0, MaxResponseBody, true},
		{"exactly 16 KB", func(w http.ResponseWriter, r *http.Request) { w.Write(big[:MaxResponseBody]) }, 200, "", true, false, 0, MaxResponseBody, false},
		{"endless stream", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			chunk := bytes.Repeat([]byte("z"), 4096)
			for r.Context().Err() == nil {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}, 200, "", true, false, 0, MaxResponseBody, true},
	}
	client := loopbackClient(t, 5*time.Second)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			r := Attempt(context.Background(), client, srv.URL+"/hook", nil, []byte(`{}`))
			if r.Status != tt.status || r.ErrorClass != tt.class || r.OK != tt.ok || r.Gone != tt.gone {
				t.Errorf("got status %d class %q ok %v gone %v (%s); want %d %q %v %v",
					r.Status, r.ErrorClass, r.OK, r.Gone, r.Error, tt.status, tt.class, tt.ok, tt.gone)
			}
			// A date-based Retry-After loses up to a second to rounding.
			if d := r.RetryAfter - tt.retry; d < -time.Second || d > time.Second {
				t.Errorf("RetryAfter = %s, want %s", r.RetryAfter, tt.retry)
			}
			if tt.bodyLen >= 0 && len(r.Body) != tt.bodyLen {
				t.Errorf("len(Body) = %d, want %d", len(r.Body), tt.bodyLen)
			}
			if r.Truncated != tt.truncated {
				t.Errorf("Truncated = %v, want %v", r.Truncated, tt.truncated)
			}
			if r.Duration <= 0 {
				t.Error("Duration not set")
			}
			if r.OK != (r.ErrorClass == "") {
				t.Error("OK and ErrorClass disagree")
			}
		})
	}
}

// TestAttempt429RetryAfterSchedule is T11: after a 429 with Retry-After
// 120 on the first attempt, the next attempt is exactly 120 s out.
func TestAttempt429RetryAfterSchedule(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(429)
	}))
	defer srv.Close()
	r := Attempt(context.Background(), loopbackClient(t, time.Second), srv.URL, nil, nil)
	for _, rnd := range []float64{0, 0.5, 0.999} {
		if d, ok := r.NextDelay(1, constRnd(rnd)); !ok || d != 120*time.Second {
			t.Errorf("rnd %v: NextDelay = %s, %v; want 120s", rnd, d, ok)
		}
	}
}

func TestAttemptTimeout(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
		w.WriteHeader(200)
	}))
	defer srv.Close()

	start := time.Now()
	r := Attempt(context.Background(), loopbackClient(t, 150*time.Millisecond), srv.URL, nil, nil)
	if r.ErrorClass != ClassTimeout || r.Status != 0 || r.OK {
		t.Fatalf("client timeout: %+v, want timeout", r)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("took %s", el)
	}
	if d, ok := r.NextDelay(1, constRnd(0)); !ok || d < 48*time.Second {
		t.Errorf("after a timeout: %s, %v; want the 60 s floor", d, ok)
	}

	// A deadline on the caller's context is a timeout too.
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	if r := Attempt(ctx, loopbackClient(t, 10*time.Second), srv.URL, nil, nil); r.ErrorClass != ClassTimeout {
		t.Errorf("context deadline: %+v, want timeout", r)
	}

	// The caller cancelling (shutdown) is not the receiver's fault.
	ctx2, cancel2 := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel2)
	if r := Attempt(ctx2, loopbackClient(t, 10*time.Second), srv.URL, nil, nil); r.ErrorClass != ClassCanceled {
		t.Errorf("cancelled: %+v, want canceled", r)
	}
}

func TestAttemptConnectionRefused(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := Attempt(context.Background(), loopbackClient(t, time.Second), "http://"+addr+"/hook", nil, nil)
	if r.ErrorClass != ClassConnection || r.Status != 0 {
		t.Fatalf("%+v, want connection", r)
	}
	if d, ok := r.NextDelay(1, constRnd(0.5)); !ok || d != 5*time.Second {
		t.Errorf("refused is retried on schedule: %s, %v", d, ok)
	}
}

func TestAttemptDroppedConnection(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Lost acknowledgement: processed, then the connection drops.
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer srv.Close()
	r := Attempt(context.Background(), loopbackClient(t, time.Second), srv.URL, nil, nil)
	if r.ErrorClass != ClassConnection || r.OK {
		t.Fatalf("%+v, want connection", r)
	}
}

func TestAttemptTLS(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) }))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake failure is expected
	srv.StartTLS()
	defer srv.Close()
	r := Attempt(context.Background(), loopbackClient(t, 2*time.Second), srv.URL, nil, nil)
	if r.ErrorClass != ClassTLS {
		t.Fatalf("self-signed certificate: %+v, want tls", r)
	}
	// Plain HTTP spoken to a TLS client is a TLS failure too.
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer plain.Close()
	r = Attempt(context.Background(), loopbackClient(t, 2*time.Second), strings.Replace(plain.URL, "http:", "https:", 1), nil, nil)
	if r.ErrorClass != ClassTLS {
		t.Fatalf("https to a plain server: %+v, want tls", r)
	}
}

func TestAttemptDNSAndInvalid(t *testing.T) {
	t.Parallel()
	g := mustGuard(t, GuardConfig{Resolver: newFakeResolver(nil)})
	if r := Attempt(context.Background(), g.Client(time.Second), "http://nowhere.example/", nil, nil); r.ErrorClass != ClassDNS {
		t.Errorf("unknown host: %+v, want dns", r)
	}
	if r := Attempt(context.Background(), g.Client(time.Second), "http://a b/", nil, nil); r.ErrorClass != ClassInvalid {
		t.Errorf("bad URL: %+v, want invalid_request", r)
	}
	if _, ok := (Result{ErrorClass: ClassInvalid}).NextDelay(1, nil); ok {
		t.Error("an invalid request is retried")
	}
}

// TestAttemptEndToEnd is T3/T6: what the receiver captures verifies with the
// official library, the body on the wire equals the body signed, and the
// URL's token does not leak into errors.
func TestAttemptEndToEnd(t *testing.T) {
	t.Parallel()
	secret, _ := NewSecret()
	body := []byte(projectBody)
	var mu sync.Mutex
	var gotBody []byte
	var gotHeader http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		gotBody, gotHeader = b, r.Header.Clone()
		mu.Unlock()
		if r.Method != http.MethodPost {
			w.WriteHeader(405)
			return
		}
		w.WriteHeader(200)
	}))
	defer srv.Close()

	now := time.Now()
	sig, err := SignatureHeader([]string{secret}, projectID, now, body)
	if err != nil {
		t.Fatal(err)
	}
	r := Attempt(context.Background(), loopbackClient(t, time.Second), srv.URL+"/hook?token=s3cr3t", Headers(projectID, now, sig), body)
	if !r.OK {
		t.Fatalf("%+v", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if sha256.Sum256(gotBody) != sha256.Sum256(body) {
		t.Fatal("body on the wire differs from the body signed")
	}
	if ct := gotHeader.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	wh, _ := standardwebhooks.NewWebhook(secret)
	if err := wh.Verify(gotBody, gotHeader); err != nil {
		t.Fatalf("official library rejects what we sent: %v", err)
	}

	// Errors name the cause, never the URL's query.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	r = Attempt(context.Background(), loopbackClient(t, time.Second), "http://"+addr+"/hook?token=s3cr3t", nil, body)
	if r.OK || strings.Contains(r.Error, "s3cr3t") {
		t.Errorf("error %q leaks the URL token", r.Error)
	}
}
