package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/server"
)

// stalledCreate sends a create's headers and part of its body, then
// nothing; it returns the connection, still open.
func stalledCreate(t *testing.T, url string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	part := `{"requests":[{"custom_id":"a","params":{"model":"m","max_tokens":1,"messages":[`
	fmt.Fprintf(conn, "POST /v1/messages/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n%s", part)
	return conn
}

// TestStalledUploadEnds: a client that sends half a body and holds the
// socket gets a clear 400 once the body has been idle for the timeout, and
// its creating batch stops counting toward the in-progress cap.
func TestStalledUploadEnds(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withConfig(func(c *server.Config) {
		c.Batch.MaxInProgress = 1
		c.BodyIdleTimeout = 300 * time.Millisecond
	}))
	conn := stalledCreate(t, ts.URL)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the stalled upload got no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 400 || !strings.Contains(string(body), "upload stalled") {
		t.Fatalf("stalled upload: %d %s", resp.StatusCode, body)
	}
	// The cap of one in-progress batch is free again.
	wantBatch(t, do(t, "POST", ts.URL+"/v1/messages/batches", createBody(t, nRequests("r", 1, "hi")...)))
}

// slowBody sends a body in pieces, pausing between them.
type slowBody struct {
	parts []string
	pause time.Duration
}

func (s *slowBody) Read(p []byte) (int, error) {
	if len(s.parts) == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.pause) // the scenario is a span of time: a slow client
	n := copy(p, s.parts[0])
	s.parts[0] = s.parts[0][n:]
	if s.parts[0] == "" {
		s.parts = s.parts[1:]
	}
	return n, nil
}

// TestSlowUploadIsNotCutOff: the deadline is idle time between reads, not
// total time: a body that keeps coming, slower in all than the timeout,
// creates its batch.
func TestSlowUploadIsNotCutOff(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withConfig(func(c *server.Config) { c.BodyIdleTimeout = 2 * time.Second }))
	body := string(createBody(t, nRequests("r", 20, "hi")...))
	var parts []string
	for i := 0; i < len(body); i += len(body)/8 + 1 {
		parts = append(parts, body[i:min(len(body), i+len(body)/8+1)])
	}
	// 9 pauses of 500 ms: 4.5 s in all, never 2 s without data.
	req, _ := http.NewRequest("POST", ts.URL+"/v1/messages/batches", &slowBody{parts: parts, pause: 500 * time.Millisecond})
	req.Header.Set("x-api-key", "test")
	req.Header.Set("content-type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 {
		t.Fatalf("slow upload: %d %s", resp.StatusCode, b)
	}
}

// TestConcurrentCreatesCapped: a workspace may upload only so many creates
// at once; one more is refused at once with 429 instead of waiting.
func TestConcurrentCreatesCapped(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withConfig(func(c *server.Config) {
		c.MaxConcurrentCreates = 2
		c.BodyIdleTimeout = time.Minute
	}))
	stalledCreate(t, ts.URL)
	stalledCreate(t, ts.URL)
	waitFor(t, 10*time.Second, "a third create refused", func() bool {
		r := do(t, "POST", ts.URL+"/v1/messages/batches", createBody(t, nRequests("r", 1, "hi")...))
		return r.Status == 429 && strings.Contains(string(r.Body), "being uploaded at once")
	})
}
