package server_test

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/webhook"
)

type wireAttempt struct {
	Status            int    `json:"status"`
	ErrorClass        string `json:"error_class"`
	Error             string `json:"error"`
	Response          string `json:"response"`
	ResponseTruncated bool   `json:"response_truncated"`
}

// firstAttempt waits for the endpoint's first logged attempt.
func firstAttempt(t *testing.T, ts *testServer, id string) wireAttempt {
	t.Helper()
	var page struct{ Data []wireAttempt }
	waitFor(t, 10*time.Second, "an attempt", func() bool {
		r := do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+id+"/attempts", nil)
		return json.Unmarshal(r.Body, &page) == nil && len(page.Data) > 0
	})
	return page.Data[len(page.Data)-1]
}

// TestWebhookAttemptNotes: a receiver answering with far more than is kept
// is logged with the start of its response and response_truncated, not an
// error; a short answer is not marked; a refused connection says why.
func TestWebhookAttemptNotes(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("y"), 100<<10)
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		status    int
		truncated bool
		respLen   int
	}{
		{"100 KiB answer", func(w http.ResponseWriter, r *http.Request) { w.Write(big) }, 200, true, webhook.MaxResponseBody},
		{"100 KiB error answer", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500); w.Write(big) }, 500, true, webhook.MaxResponseBody},
		{"short answer", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }, 200, false, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			recv := httptest.NewServer(tt.handler)
			t.Cleanup(recv.Close)
			ts := webhookServer(t)
			id, _ := addEndpoint(t, ts, recv.URL)
			b := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "hi")...))
			waitEndedRaw(t, ts.URL, b.ID, 10*time.Second)
			a := firstAttempt(t, ts, id)
			if a.Status != tt.status || a.ResponseTruncated != tt.truncated || len(a.Response) != tt.respLen {
				t.Fatalf("attempt: status %d truncated %v response %d bytes (error %q); want %d %v %d",
					a.Status, a.ResponseTruncated, len(a.Response), a.Error, tt.status, tt.truncated, tt.respLen)
			}
			if tt.status == 200 && a.Error != "" {
				t.Fatalf("a successful attempt carries an error: %q", a.Error)
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		t.Parallel()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		ts := webhookServer(t)
		id, _ := addEndpoint(t, ts, "http://"+addr+"/hook")
		b := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "hi")...))
		waitEndedRaw(t, ts.URL, b.ID, 10*time.Second)
		a := firstAttempt(t, ts, id)
		if a.Status != 0 || a.ErrorClass != webhook.ClassConnection || !strings.Contains(a.Error, "refused") {
			t.Fatalf("refused attempt: %+v", a)
		}
	})
}
