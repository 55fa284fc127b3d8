package anthropic

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdk "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/batchd/batchd/internal/backend"
)

// testKey is distinctive so a leak anywhere is easy to grep for.
const testKey = "sk-ant-api03-TESTKEY-must-never-leak-7f3a9c"

// params is deliberately not compact, with odd spacing, key order and escapes,
// so byte-for-byte forwarding is actually checked.
const params = `{ "model" : "claude-sonnet-4-5",
  "max_tokens": 1024, "messages": [{"role":"user","content":"caf\u00e9 <b>&</b>"}],
  "zz_unknown": {"keep": [1, 2.50, 1e3]} }`

// upstreamMessage is pretty-printed and carries block types and fields the
// backend knows nothing about; all of it must survive.
const upstreamMessage = `{
  "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-5",
  "content": [
    {"type": "thinking", "thinking": "Let me think\nabout it.", "signature": "EqQBCgIYAhIM"},
    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
    {"type": "text", "text": "Caf\u00e9 \u003cb\u003e & \"quotes\"", "citations": null},
    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}},
    {"type": "future_block_type", "payload": {"nested": [true, false, null]}}
  ],
  "stop_reason": "tool_use",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 2095,
    "output_tokens": 503,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    "service_tier": "batch",
    "brand_new_counter": 1.50
  },
  "container": null,
  "unknown_top_level": {"a": 1}
}`

func newBackend(t *testing.T, baseURL string, mod ...func(*Config)) *Backend {
	t.Helper()
	cfg := Config{BaseURL: baseURL, APIKey: testKey}
	for _, m := range mod {
		m(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b
}

func call() backend.Call {
	return backend.Call{Model: "claude-sonnet-4-5", Params: json.RawMessage(params), Attempt: 1}
}

// asBackendError fails unless err is a *backend.Error free of the key.
func asBackendError(t *testing.T, err error) *backend.Error {
	t.Helper()
	if err == nil {
		t.Fatal("Do succeeded, want an error")
	}
	assertNoKey(t, err)
	var be *backend.Error
	if !errors.As(err, &be) {
		t.Fatalf("error %T %q is not a *backend.Error", err, err)
	}
	return be
}

func assertNoKey(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
		if strings.Contains(s, testKey) || strings.Contains(s, "TESTKEY") {
			t.Fatalf("error leaks the API key: %s", strings.ReplaceAll(s, testKey, "<KEY>"))
		}
	}
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("request-id", "req_test")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

func envelope(typ, msg string) string {
	return fmt.Sprintf(`{"type":"error","error":{"type":%q,"message":%q},"request_id":"req_test"}`, typ, msg)
}

func TestSuccessForwardsAndKeepsMessage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		betas       []string
		version     string
		prefix      string
		wantBeta    string
		wantVersion string
	}{
		{name: "no betas", wantVersion: "2023-06-01"},
		{name: "betas joined", betas: []string{"message-batches-2024-09-24", " ", "interleaved-thinking-2025-05-14"},
			wantBeta: "message-batches-2024-09-24,interleaved-thinking-2025-05-14", wantVersion: "2023-06-01"},
		{name: "custom version", version: "2099-01-01", wantVersion: "2099-01-01"},
		{name: "base URL with path prefix", prefix: "/proxy/anthropic", wantVersion: "2023-06-01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var hits atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				body, _ := io.ReadAll(r.Body)
				var problems []string
				check := func(what, got, want string) {
					if got != want {
						problems = append(problems, fmt.Sprintf("%s = %q, want %q", what, got, want))
					}
				}
				check("method", r.Method, http.MethodPost)
				check("path", r.URL.Path, tt.prefix+"/v1/messages")
				check("x-api-key", r.Header.Get("X-Api-Key"), testKey)
				check("authorization", r.Header.Get("Authorization"), "")
				check("anthropic-version", r.Header.Get("Anthropic-Version"), tt.wantVersion)
				check("content-type", r.Header.Get("Content-Type"), "application/json")
				check("anthropic-beta", strings.Join(r.Header.Values("Anthropic-Beta"), "|"), tt.wantBeta)
				check("body", string(body), params)
				if len(problems) > 0 {
					writeJSON(w, 400, envelope("invalid_request_error", strings.Join(problems, "; ")))
					return
				}
				w.Header().Set("anthropic-ratelimit-requests-remaining", "42")
				writeJSON(w, 200, upstreamMessage)
			}))
			defer srv.Close()

			b := newBackend(t, srv.URL+tt.prefix, func(c *Config) { c.Version = tt.version })
			c := call()
			c.Betas = tt.betas
			var seen []int
			var remaining string
			c.OnResponse = func(status int, h http.Header) {
				seen = append(seen, status)
				remaining = h.Get("anthropic-ratelimit-requests-remaining")
			}
			got, err := b.Do(context.Background(), c)
			if err != nil {
				t.Fatalf("Do: %v", err)
			}
			var want bytes.Buffer
			if err := json.Compact(&want, []byte(upstreamMessage)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Errorf("message changed:\n got %s\nwant %s", got, want.Bytes())
			}
			if bytes.ContainsAny(got, "\r\n") {
				t.Errorf("message is not compact: %s", got)
			}
			var gotV, wantV any
			if err := json.Unmarshal(got, &gotV); err != nil {
				t.Fatal(err)
			}
			_ = json.Unmarshal([]byte(upstreamMessage), &wantV)
			if !reflect.DeepEqual(gotV, wantV) {
				t.Errorf("message differs semantically")
			}
			if !reflect.DeepEqual(seen, []int{200}) || remaining != "42" {
				t.Errorf("OnResponse saw statuses %v, remaining %q; want [200], 42", seen, remaining)
			}
			if hits.Load() != 1 {
				t.Errorf("upstream hit %d times, want 1", hits.Load())
			}
		})
	}
}

func TestUpstreamErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		status    int
		header    map[string]string
		body      string
		wantType  string
		transient bool
		wantMsg   string // substring
		wantRetry time.Duration
	}{
		{name: "400 invalid request", status: 400, body: envelope("invalid_request_error", "max_tokens: Field required"),
			wantType: backend.ErrInvalidRequest, wantMsg: "max_tokens: Field required"},
		{name: "401 authentication", status: 401, body: envelope("authentication_error", "invalid x-api-key"),
			wantType: backend.ErrAuthentication, wantMsg: "invalid x-api-key"},
		{name: "402 billing", status: 402, body: envelope("billing_error", "credit balance too low"),
			wantType: backend.ErrBilling, wantMsg: "credit balance too low"},
		{name: "403 permission", status: 403, body: envelope("permission_error", "no access to model"),
			wantType: backend.ErrPermission, wantMsg: "no access to model"},
		{name: "404 not found", status: 404, body: envelope("not_found_error", "model: claude-nope"),
			wantType: backend.ErrNotFound, wantMsg: "model: claude-nope"},
		{name: "413 too large", status: 413, body: envelope("request_too_large", "Request exceeds the maximum allowed number of bytes."),
			wantType: backend.ErrRequestTooLarge, wantMsg: "maximum allowed"},
		{name: "413 from a proxy, HTML", status: 413, body: "<html>413 Request Entity Too Large</html>",
			wantType: backend.ErrRequestTooLarge, wantMsg: "HTTP 413"},
		{name: "400 not an envelope", status: 400, body: `{"detail":"bad"}`,
			wantType: backend.ErrInvalidRequest, wantMsg: "HTTP 400"},
		{name: "422 other 4xx", status: 422, body: "nope",
			wantType: backend.ErrInvalidRequest, wantMsg: "HTTP 422"},
		{name: "400 envelope claiming a transient type stays permanent", status: 400, body: envelope("overloaded_error", "odd"),
			wantType: backend.ErrInvalidRequest, wantMsg: "odd"},
		{name: "409 conflict type kept", status: 409, body: envelope("conflict_error", "busy"),
			wantType: "conflict_error", wantMsg: "busy"},
		{name: "408", status: 408, body: "",
			wantType: backend.ErrTimeout, transient: true},
		{name: "429 retry-after seconds", status: 429, header: map[string]string{"retry-after": "7"},
			body:     envelope("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
			wantType: backend.ErrRateLimit, transient: true, wantMsg: "per-minute rate limit", wantRetry: 7 * time.Second},
		{name: "429 retry-after-ms preferred", status: 429, header: map[string]string{"retry-after": "9", "retry-after-ms": "1500"},
			body: envelope("rate_limit_error", "slow down"), wantType: backend.ErrRateLimit, transient: true, wantRetry: 1500 * time.Millisecond},
		{name: "429 retry-after bounded", status: 429, header: map[string]string{"retry-after": "999999999"},
			body: envelope("rate_limit_error", "slow down"), wantType: backend.ErrRateLimit, transient: true, wantRetry: time.Hour},
		{name: "429 garbage retry-after", status: 429, header: map[string]string{"retry-after": "soon"},
			body: envelope("rate_limit_error", "slow down"), wantType: backend.ErrRateLimit, transient: true},
		{name: "429 plain text", status: 429, body: "Too Many Requests",
			wantType: backend.ErrRateLimit, transient: true, wantMsg: "HTTP 429"},
		{name: "529 overloaded", status: 529, header: map[string]string{"retry-after": "3"}, body: envelope("overloaded_error", "Overloaded"),
			wantType: backend.ErrOverloaded, transient: true, wantMsg: "Overloaded", wantRetry: 3 * time.Second},
		{name: "529 no body", status: 529,
			wantType: backend.ErrOverloaded, transient: true},
		{name: "500 api error", status: 500, body: envelope("api_error", "Internal server error"),
			wantType: backend.ErrAPI, transient: true, wantMsg: "Internal server error"},
		{name: "500 envelope claiming a permanent type stays transient", status: 500, body: envelope("invalid_request_error", "odd"),
			wantType: backend.ErrAPI, transient: true, wantMsg: "odd"},
		{name: "502 HTML from a proxy", status: 502, body: "<html><body>Bad Gateway</body></html>",
			wantType: backend.ErrAPI, transient: true, wantMsg: "HTTP 502"},
		{name: "503 with retry-after", status: 503, header: map[string]string{"retry-after": "2"}, body: "unavailable",
			wantType: backend.ErrAPI, transient: true, wantRetry: 2 * time.Second},
		{name: "504 timeout envelope", status: 504, body: envelope("timeout_error", "Request timed out"),
			wantType: backend.ErrTimeout, transient: true, wantMsg: "Request timed out"},
		{name: "504 bare", status: 504,
			wantType: backend.ErrAPI, transient: true},
		{name: "599 other 5xx", status: 599, body: envelope("overloaded_error", "busy"),
			wantType: backend.ErrOverloaded, transient: true, wantMsg: "busy"},
		{name: "401 echoing the key is scrubbed", status: 401, body: envelope("authentication_error", "invalid x-api-key "+testKey),
			wantType: backend.ErrAuthentication, wantMsg: "[redacted]"},
		// 2xx bodies that are not a Message are transient api_errors.
		{name: "200 malformed JSON", status: 200, body: `{"id":"msg_1","type":"message",`,
			wantType: backend.ErrAPI, transient: true, wantMsg: "not valid JSON"},
		{name: "200 HTML", status: 200, body: "<html>hello</html>",
			wantType: backend.ErrAPI, transient: true, wantMsg: "not valid JSON"},
		{name: "200 empty", status: 200, body: "",
			wantType: backend.ErrAPI, transient: true, wantMsg: "not valid JSON"},
		{name: "200 array", status: 200, body: `[{"type":"message"}]`,
			wantType: backend.ErrAPI, transient: true, wantMsg: "not a Message"},
		{name: "200 error envelope", status: 200, body: envelope("overloaded_error", "Overloaded"),
			wantType: backend.ErrAPI, transient: true, wantMsg: `type is "error"`},
		{name: "200 no type", status: 200, body: `{"id":"msg_1","content":[]}`,
			wantType: backend.ErrAPI, transient: true, wantMsg: "type is missing"},
		{name: "200 type not a string", status: 200, body: `{"id":"msg_1","type":7}`,
			wantType: backend.ErrAPI, transient: true, wantMsg: "not a Message"},
		{name: "200 message without id", status: 200, body: `{"type":"message","content":[]}`,
			wantType: backend.ErrAPI, transient: true, wantMsg: "id is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				writeJSON(w, tt.status, tt.body)
			}))
			defer srv.Close()
			b := newBackend(t, srv.URL)
			c := call()
			var seen []int
			c.OnResponse = func(status int, h http.Header) { seen = append(seen, status) }
			msg, err := b.Do(context.Background(), c)
			if msg != nil {
				t.Errorf("Do returned a message with an error: %s", msg)
			}
			be := asBackendError(t, err)
			if be.Type != tt.wantType || be.Transient() != tt.transient || be.Status != tt.status {
				t.Errorf("got type %q transient %v status %d, want %q %v %d (%v)",
					be.Type, be.Transient(), be.Status, tt.wantType, tt.transient, tt.status, be)
			}
			if !strings.Contains(be.Message, tt.wantMsg) {
				t.Errorf("message %q does not contain %q", be.Message, tt.wantMsg)
			}
			if be.RetryAfter != tt.wantRetry {
				t.Errorf("RetryAfter = %v, want %v", be.RetryAfter, tt.wantRetry)
			}
			if !reflect.DeepEqual(seen, []int{tt.status}) {
				t.Errorf("OnResponse saw %v, want [%d]", seen, tt.status)
			}
		})
	}
}

// hijack returns a handler that takes over the connection and does f to it.
func hijack(f func(conn net.Conn, rw io.Writer)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		f(conn, buf.Writer)
	}
}

func resetConn(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // close with RST
	}
	conn.Close()
}

func TestConnectionFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		wantStatus int    // 0: no response at all
		wantSeen   []int  // statuses OnResponse must see
		wantMsg    string // substring
	}{
		{name: "reset before response", handler: hijack(func(c net.Conn, _ io.Writer) { resetConn(c) }), wantMsg: "upstream: connection"},
		{name: "closed before response", handler: hijack(func(c net.Conn, _ io.Writer) { c.Close() }), wantMsg: "upstream: connection"},
		{name: "reset mid-body", wantStatus: 200, wantSeen: []int{200}, wantMsg: "reading the 200 response",
			handler: hijack(func(c net.Conn, w io.Writer) {
				io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n")
				io.WriteString(w, upstreamMessage[:100])
				w.(interface{ Flush() error }).Flush()
				time.Sleep(20 * time.Millisecond)
				resetConn(c)
			})},
		{name: "malformed HTTP", handler: hijack(func(c net.Conn, w io.Writer) {
			io.WriteString(w, "NOT HTTP AT ALL\r\n\r\n")
			w.(interface{ Flush() error }).Flush()
			c.Close()
		}), wantMsg: "upstream: connection"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			b := newBackend(t, srv.URL)
			c := call()
			var seen []int
			c.OnResponse = func(status int, _ http.Header) { seen = append(seen, status) }
			start := time.Now()
			_, err := b.Do(context.Background(), c)
			be := asBackendError(t, err)
			if be.Type != backend.ErrAPI || !be.Transient() || be.Status != tt.wantStatus {
				t.Errorf("got %q transient %v status %d, want transient api_error status %d (%v)", be.Type, be.Transient(), be.Status, tt.wantStatus, be)
			}
			if !strings.Contains(be.Message, tt.wantMsg) {
				t.Errorf("message %q does not contain %q", be.Message, tt.wantMsg)
			}
			if !reflect.DeepEqual(seen, tt.wantSeen) {
				t.Errorf("OnResponse saw %v, want %v", seen, tt.wantSeen)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// closedAddr returns an address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestConnectionRefused(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "http://"+closedAddr(t))
	c := call()
	c.OnResponse = func(int, http.Header) { t.Error("OnResponse called without a response") }
	_, err := b.Do(context.Background(), c)
	be := asBackendError(t, err)
	if be.Type != backend.ErrAPI || !be.Transient() || be.Status != 0 || !strings.Contains(be.Message, "refused") {
		t.Errorf("got %+v, want transient api_error about a refused connection", be)
	}
}

func TestUpstreamDownThenBack(t *testing.T) {
	t.Parallel()
	addr := closedAddr(t)
	b := newBackend(t, "http://"+addr)

	_, err := b.Do(context.Background(), call())
	if be := asBackendError(t, err); be.Type != backend.ErrAPI || !be.Transient() {
		t.Fatalf("while down: got %+v, want transient api_error", be)
	}

	var ln net.Listener
	for i := 0; ; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		if i == 20 {
			t.Skipf("cannot listen on %s again: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, upstreamMessage)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	defer srv.Close()

	msg, err := b.Do(context.Background(), call())
	if err != nil {
		t.Fatalf("after coming back: %v", err)
	}
	if !bytes.Contains(msg, []byte(`"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF"`)) {
		t.Errorf("unexpected message %s", msg)
	}
}

// blockUntilGone holds a request until the client goes away or the test ends.
func blockUntilGone(done <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-done:
		}
	}
}

func TestTimeouts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		timeout  time.Duration
		ctx      func() (context.Context, context.CancelFunc)
		slowBody bool
		wantType string // "" means context.Canceled
	}{
		{name: "no headers within Timeout", timeout: 150 * time.Millisecond, wantType: backend.ErrTimeout},
		{name: "body slower than Timeout", timeout: 150 * time.Millisecond, slowBody: true, wantType: backend.ErrTimeout},
		{name: "ctx deadline", timeout: time.Hour, wantType: backend.ErrTimeout,
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 150*time.Millisecond)
			}},
		{name: "ctx cancelled", timeout: time.Hour,
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(150*time.Millisecond, cancel)
				return ctx, cancel
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			done := make(chan struct{})
			handler := blockUntilGone(done)
			if tt.slowBody {
				handler = func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(200)
					for i := 0; i < len(upstreamMessage); i++ {
						if _, err := io.WriteString(w, upstreamMessage[i:i+1]); err != nil {
							return
						}
						w.(http.Flusher).Flush()
						select {
						case <-r.Context().Done():
							return
						case <-done:
							return
						case <-time.After(50 * time.Millisecond):
						}
					}
				}
			}
			srv := httptest.NewServer(handler)
			defer srv.Close()
			defer close(done)

			b := newBackend(t, srv.URL, func(c *Config) { c.Timeout = tt.timeout })
			ctx, cancel := context.Background(), context.CancelFunc(func() {})
			if tt.ctx != nil {
				ctx, cancel = tt.ctx()
			}
			defer cancel()
			start := time.Now()
			_, err := b.Do(ctx, call())
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("Do took %v, want it to give up promptly", d)
			}
			assertNoKey(t, err)
			if tt.wantType == "" {
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("got %v, want context.Canceled", err)
				}
				return
			}
			be := asBackendError(t, err)
			if be.Type != tt.wantType || !be.Transient() {
				t.Errorf("got %+v, want transient %s", be, tt.wantType)
			}
		})
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	var leaked atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") != "" {
			leaked.Store(true)
		}
		writeJSON(w, 200, upstreamMessage)
	}))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/v1/messages", http.StatusTemporaryRedirect)
	}))
	defer srv.Close()

	_, err := newBackend(t, srv.URL).Do(context.Background(), call())
	be := asBackendError(t, err)
	if be.Type != backend.ErrAPI || be.Status != 307 || !strings.Contains(be.Message, "not followed") {
		t.Errorf("got %+v, want api_error about an unfollowed 307", be)
	}
	if leaked.Load() {
		t.Error("the key was sent to the redirect target")
	}
}

func TestConcurrentCalls(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%3 == 0 {
			w.Header().Set("retry-after", "1")
			writeJSON(w, 529, envelope("overloaded_error", "Overloaded"))
			return
		}
		writeJSON(w, 200, upstreamMessage)
	}))
	defer srv.Close()
	b := newBackend(t, srv.URL)

	var wg sync.WaitGroup
	var ok, overloaded atomic.Int32
	for range 60 {
		wg.Go(func() {
			c := call()
			var calls int
			c.OnResponse = func(int, http.Header) { calls++ }
			_, err := b.Do(context.Background(), c)
			if calls != 1 {
				t.Errorf("OnResponse called %d times", calls)
			}
			if err == nil {
				ok.Add(1)
				return
			}
			if be := backend.AsError(err); be.Type == backend.ErrOverloaded {
				overloaded.Add(1)
				return
			}
			t.Errorf("unexpected error %v", err)
		})
	}
	wg.Wait()
	if ok.Load()+overloaded.Load() != 60 || overloaded.Load() != 20 {
		t.Errorf("ok %d, overloaded %d; want 40, 20", ok.Load(), overloaded.Load())
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "defaults", cfg: Config{APIKey: testKey}},
		{name: "missing key", cfg: Config{}, wantErr: "APIKey is required"},
		{name: "key with newline", cfg: Config{APIKey: testKey + "\n"}, wantErr: "line break"},
		{name: "relative base URL", cfg: Config{APIKey: testKey, BaseURL: "api.anthropic.com"}, wantErr: "absolute"},
		{name: "ftp base URL", cfg: Config{APIKey: testKey, BaseURL: "ftp://x"}, wantErr: "absolute"},
		{name: "base URL with userinfo", cfg: Config{APIKey: testKey, BaseURL: "https://u:pw@x"}, wantErr: "credentials"},
		{name: "negative timeout", cfg: Config{APIKey: testKey, Timeout: -time.Second}, wantErr: "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := New(tt.cfg)
			assertNoKey(t, err)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New error %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "pw") {
					t.Errorf("error shows the URL password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.Name() != "anthropic" || b.timeout != 10*time.Minute {
				t.Errorf("defaults: name %q timeout %v", b.Name(), b.timeout)
			}
			for _, s := range []string{fmt.Sprint(b), fmt.Sprintf("%+v", b), fmt.Sprintf("%#v", b), fmt.Sprintf("%+v", *b), fmt.Sprintf("%#v", *b)} {
				if strings.Contains(s, testKey) {
					t.Errorf("printing the backend shows the key")
				}
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		header map[string]string
		want   time.Duration
	}{
		{name: "none", want: 0},
		{name: "seconds", header: map[string]string{"Retry-After": "30"}, want: 30 * time.Second},
		{name: "fractional seconds", header: map[string]string{"Retry-After": "0.25"}, want: 250 * time.Millisecond},
		{name: "ms preferred", header: map[string]string{"Retry-After": "30", "Retry-After-Ms": "120"}, want: 120 * time.Millisecond},
		{name: "bad ms falls back", header: map[string]string{"Retry-After": "4", "Retry-After-Ms": "x"}, want: 4 * time.Second},
		{name: "http date", header: map[string]string{"Retry-After": now.Add(90 * time.Second).Format(http.TimeFormat)}, want: 90 * time.Second},
		{name: "past date", header: map[string]string{"Retry-After": now.Add(-time.Minute).Format(http.TimeFormat)}, want: 0},
		{name: "far date bounded", header: map[string]string{"Retry-After": now.Add(48 * time.Hour).Format(http.TimeFormat)}, want: time.Hour},
		{name: "huge seconds bounded", header: map[string]string{"Retry-After": "1e300"}, want: time.Hour},
		{name: "huge ms bounded", header: map[string]string{"Retry-After-Ms": "99999999999"}, want: time.Hour},
		{name: "negative", header: map[string]string{"Retry-After": "-5"}, want: 0},
		{name: "NaN", header: map[string]string{"Retry-After": "NaN"}, want: 0},
		{name: "garbage", header: map[string]string{"Retry-After": "later"}, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := http.Header{}
			for k, v := range tt.header {
				h.Set(k, v)
			}
			if got := backend.RetryAfter(h, now); got != tt.want {
				t.Errorf("RetryAfter(%v) = %v, want %v", tt.header, got, tt.want)
			}
		})
	}
}

// TestIgnoresSDKEnvironment is not parallel because it sets environment
// variables: the SDK reads ANTHROPIC_* variables by default, and none of them
// may redirect the server's requests or swap its key.
func TestIgnoresSDKEnvironment(t *testing.T) {
	var wrongHit atomic.Bool
	wrong := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wrongHit.Store(true)
		writeJSON(w, 500, envelope("api_error", "wrong upstream"))
	}))
	defer wrong.Close()
	t.Setenv("ANTHROPIC_BASE_URL", wrong.URL)
	t.Setenv("ANTHROPIC_API_KEY", "env-key")
	t.Setenv("ANTHROPIC_AUTH_TOKEN", "env-token")
	t.Setenv("ANTHROPIC_CUSTOM_HEADERS", "X-Api-Key: env-key\nAnthropic-Version: 1999-01-01")

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Values("X-Api-Key"); len(got) != 1 || got[0] != testKey {
			writeJSON(w, 401, envelope("authentication_error", "wrong key header"))
			return
		}
		if r.Header.Get("Authorization") != "" || r.Header.Get("Anthropic-Version") != DefaultVersion {
			writeJSON(w, 400, envelope("invalid_request_error", "environment leaked into headers"))
			return
		}
		writeJSON(w, 200, upstreamMessage)
	}))
	defer srv.Close()

	if _, err := newBackend(t, srv.URL).Do(context.Background(), call()); err != nil {
		t.Fatalf("Do: %v", err)
	}
	if wrongHit.Load() {
		t.Error("ANTHROPIC_BASE_URL redirected the request")
	}
}

// TestSendsWhatTheSDKSends: the backend builds its request with the SDK
// once and sends copies, so what reaches the upstream — method, path,
// every header, the body — must be what the SDK itself sends for the same
// call, betas included.
func TestSendsWhatTheSDKSends(t *testing.T) {
	t.Parallel()
	type seen struct {
		method, path string
		header       http.Header
		body         string
	}
	reqs := make(chan seen, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		reqs <- seen{r.Method, r.URL.Path, r.Header.Clone(), string(body)}
		writeJSON(w, 200, upstreamMessage)
	}))
	defer srv.Close()

	b := newBackend(t, srv.URL+"/prefix")
	c := call()
	c.Betas = []string{"message-batches-2024-09-24", "interleaved-thinking-2025-05-14"}
	if _, err := b.Do(context.Background(), c); err != nil {
		t.Fatalf("Do: %v", err)
	}
	ours := <-reqs

	client := sdk.NewClient(
		option.WithoutEnvironmentDefaults(),
		option.WithoutOpenTelemetry(),
		option.WithBaseURL(srv.URL+"/prefix"),
		option.WithMaxRetries(0),
		option.WithHeader("X-Api-Key", testKey),
		option.WithHeader("Anthropic-Version", DefaultVersion),
	)
	var res *http.Response
	if err := client.Post(context.Background(), messagesPath, nil, &res,
		option.WithRequestBody("application/json", []byte(params)),
		option.WithHeader("Anthropic-Beta", "message-batches-2024-09-24,interleaved-thinking-2025-05-14")); err != nil {
		t.Fatalf("SDK: %v", err)
	}
	res.Body.Close()
	theirs := <-reqs

	if ours.method != theirs.method || ours.path != theirs.path || ours.body != theirs.body {
		t.Errorf("request %s %s %q, SDK sends %s %s %q", ours.method, ours.path, ours.body, theirs.method, theirs.path, theirs.body)
	}
	if !reflect.DeepEqual(ours.header, theirs.header) {
		t.Errorf("headers differ from the SDK's:\n ours %v\n  SDK %v", ours.header, theirs.header)
	}
	if ours.header.Get("X-Stainless-Lang") != "go" || !strings.HasPrefix(ours.header.Get("User-Agent"), "Anthropic/Go ") {
		t.Errorf("not the SDK's headers: %v", ours.header)
	}
}

// TestMessageFastPathAgrees: message reads the common body without
// decoding it; for every body, what it returns (the bytes or the error)
// must be what decoding returns.
func TestMessageFastPathAgrees(t *testing.T) {
	t.Parallel()
	bodies := []string{
		upstreamMessage,
		`{"id":"msg_1","type":"message","content":[]}`,
		`{"type":"message","id":"msg_1"}`,
		` {"type" : "message", "id":"msg_1" } `,
		`{"type":"message","id":"msg_1","nested":{"type":"x","id":""},"list":[{"id":""}]}`,
		`{"type":"message","id":"msg_1","type":"error"}`,
		`{"type":"error","id":"msg_1","type":"message"}`,
		`{"type":"message","id":"msg_1","id":""}`,
		`{"type":"message","Type":"error","id":"msg_1"}`,
		`{"TYPE":"message","id":"msg_1"}`,
		`{"type":"message","ID":"msg_2"}`,
		`{"t\u0079pe":"message","id":"msg_1"}`,
		`{"type":"m\u0065ssage","id":"msg_1"}`,
		`{"type":"message","id":"msg_\"quoted\\"}`,
		`{"type":"message","id":null}`,
		`{"type":null,"id":"msg_1"}`,
		`{"type":"message","id":7}`,
		`{"type":["message"],"id":"msg_1"}`,
		`{"type":{"a":"message"},"id":"msg_1"}`,
		`{"type":"message","id":"msg_1","s":"a \" } ] , : \\ \n"}`,
		`{"type":"message"}`,
		`{"id":"msg_1"}`,
		`{}`,
		`[]`,
		`"message"`,
		`42`,
		`null`,
		`{"type":"message","id":"msg_1"`,
		`{"type":"message","id":"msg_1"} x`,
		``,
		`{"text":"\u003cb\u003e","type":"message","id":"msg_1"}`,
	}
	b := newBackend(t, "http://upstream.invalid")
	for _, body := range bodies {
		fast, ferr := b.message(&exchange{status: 200, body: []byte(body)})
		slow, serr := b.decodeMessage(&exchange{status: 200, body: []byte(body)})
		if !bytes.Equal(fast, slow) || fmt.Sprint(ferr) != fmt.Sprint(serr) {
			t.Errorf("%s:\n message %s %v\n  decode %s %v", body, fast, ferr, slow, serr)
		}
	}
}
