package server_test

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestCloseStreams: CloseStreams (called when the shutdown begins) ends the
// open event streams and refuses new streams and downloads with a 503 the
// SDKs retry, while other requests are still answered. (The real binary's
// shutdown with a stalled download: cmd/batchd TestShutdownEndsStreams.)
func TestCloseStreams(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 2, "hi")...))
	waitEndedRaw(t, ts.URL, b.ID, 30*time.Second)
	// A stream's end is clean (EOF, not a cut connection): clients
	// reconnect to the next server without an error.
	ended := make(chan error, 1)
	req, _ := http.NewRequest("GET", ts.URL+"/v1/events", nil)
	req.Header.Set("x-api-key", "test")
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("open stream: %v %v", res, err)
	}
	t.Cleanup(func() { res.Body.Close() })
	go func() {
		_, err := io.Copy(io.Discard, res.Body)
		ended <- err
	}()

	ts.Srv.CloseStreams()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("the event stream ended with %v, want a clean end", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the event stream is still open after CloseStreams")
	}

	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/v1/events", http.StatusServiceUnavailable},
		{"/v1/messages/batches/" + b.ID + "/events", http.StatusServiceUnavailable},
		{"/v1/messages/batches/" + b.ID + "/results", http.StatusServiceUnavailable},
		{"/v1/messages/batches/" + b.ID, http.StatusOK},
	} {
		r := do(t, "GET", ts.URL+tc.path, nil)
		if r.Status != tc.status {
			t.Errorf("GET %s after CloseStreams: %d %s, want %d", tc.path, r.Status, r.Body, tc.status)
		}
		if tc.status == http.StatusServiceUnavailable {
			wantError(t, r, tc.status, "overloaded_error", "shutting down")
		}
	}
}
