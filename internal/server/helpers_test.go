package server_test

// Shared test helpers for the integration tests of package server: one place
// that builds a real batchd (SQLite in a temp dir, dispatcher, simulator,
// API) behind a real HTTP listener, plus small helpers for raw HTTP, the
// official Go SDK and waiting on conditions.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/dispatch"
	"github.com/batchd/batchd/internal/server"
	"github.com/batchd/batchd/internal/store"
)

// testModel is the model every test request names; the simulator serves any.
const testModel = "claude-sonnet-4-5"

// testServer is a running batchd behind an httptest server.
type testServer struct {
	URL    string
	Srv    *server.Server
	Client anthropic.Client
}

// serverOpts collects what a test may change about its server.
type serverOpts struct {
	mutate  []func(*server.Config)
	noStart bool
}

// serverOpt changes the configuration of a test server.
type serverOpt func(*serverOpts)

// withConfig lets a test adjust the server.Config before Open.
func withConfig(f func(*server.Config)) serverOpt {
	return func(o *serverOpts) { o.mutate = append(o.mutate, f) }
}

// withoutDispatcher opens the server but never starts dispatching, so
// batches stay in_progress with every request pending: for tests about
// state that must not move.
func withoutDispatcher() serverOpt {
	return func(o *serverOpts) { o.noStart = true }
}

// newTestServer opens a batchd on a fresh data dir with timings short enough
// for tests, starts it, serves its Handler on a real listener, and closes
// everything when the test ends.
func newTestServer(t testing.TB, opts ...serverOpt) *testServer {
	t.Helper()
	var o serverOpts
	for _, opt := range opts {
		opt(&o)
	}
	cfg := server.Config{
		DataDir: t.TempDir(),
		Dispatch: dispatch.Config{
			Concurrency:  16,
			PollInterval: 10 * time.Millisecond,
			BackoffBase:  5 * time.Millisecond,
			BackoffMax:   50 * time.Millisecond,
			Lease:        2 * time.Second,
		},
	}
	for _, f := range o.mutate {
		f(&cfg)
	}
	ctx := context.Background()
	srv, err := server.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open server: %v", err)
	}
	if !o.noStart {
		if err := srv.Start(ctx); err != nil {
			srv.Close(ctx)
			t.Fatalf("start server: %v", err)
		}
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		// Running requests may finish; a test that leaves slow ones behind
		// should not hold the suite for long.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("close server: %v", err)
		}
	})
	return &testServer{URL: hs.URL, Srv: srv, Client: newClient(hs.URL, "test")}
}

// newClient is the official Go SDK pointed at url, with no retries so that a
// server error is seen as it is, and no environment defaults so that the
// developer's own credentials never leak into a test.
func newClient(url, key string, opts ...option.RequestOption) anthropic.Client {
	base := []option.RequestOption{
		option.WithoutEnvironmentDefaults(),
		option.WithBaseURL(url),
		option.WithAPIKey(key),
		option.WithMaxRetries(0),
	}
	return anthropic.NewClient(append(base, opts...)...)
}

// --- request builders -------------------------------------------------------

// sdkRequest is one SDK batch request with a user prompt.
func sdkRequest(customID, prompt string, maxTokens int64) anthropic.MessageBatchNewParamsRequest {
	return anthropic.MessageBatchNewParamsRequest{
		CustomID: customID,
		Params: anthropic.MessageBatchNewParamsRequestParams{
			Model:     testModel,
			MaxTokens: maxTokens,
			Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(prompt))},
		},
	}
}

// sdkBatch creates a batch through the SDK and fails the test on error.
func sdkBatch(t testing.TB, c anthropic.Client, reqs ...anthropic.MessageBatchNewParamsRequest) *anthropic.MessageBatch {
	t.Helper()
	b, err := c.Messages.Batches.New(context.Background(), anthropic.MessageBatchNewParams{Requests: reqs})
	if err != nil {
		t.Fatalf("create batch: %v", err)
	}
	return b
}

// rawRequest is one request of a raw JSON body.
type rawRequest struct {
	CustomID string         `json:"custom_id"`
	Params   map[string]any `json:"params"`
}

// params is a valid Messages body with the given prompt.
func params(prompt string) map[string]any {
	return map[string]any{
		"model":      testModel,
		"max_tokens": 256,
		"messages":   []any{map[string]any{"role": "user", "content": prompt}},
	}
}

// createBody encodes {"requests": reqs}.
func createBody(t testing.TB, reqs ...rawRequest) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"requests": reqs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// nRequests builds n valid requests "<prefix>-<i>" whose prompt is prompt.
func nRequests(prefix string, n int, prompt string) []rawRequest {
	out := make([]rawRequest, n)
	for i := range out {
		out[i] = rawRequest{CustomID: fmt.Sprintf("%s-%d", prefix, i), Params: params(prompt)}
	}
	return out
}

// --- raw HTTP ---------------------------------------------------------------

// response is a raw HTTP answer with its body read.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// do sends a raw request; body may be nil, a []byte or an io.Reader (sent
// with an unknown length, i.e. chunked). Headers are given as key, value
// pairs; by default x-api-key "test" and anthropic-version are sent.
func do(t testing.TB, method, url string, body any, headers ...string) response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	case io.Reader:
		rd = b
	default:
		t.Fatalf("do: unsupported body type %T", body)
	}
	// Only a guard against a hang: an 80 MiB create on a filling tmpfs
	// takes tens of seconds when the package runs under -race beside
	// everything else on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := body.(io.Reader); ok {
		req.ContentLength = -1 // unknown: chunked transfer
	}
	req.Header.Set("x-api-key", "test")
	req.Header.Set("anthropic-version", "2023-06-01")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Add(headers[i], headers[i+1])
		}
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	if res.Header.Get("request-id") == "" {
		t.Errorf("%s %s: %d response without a request-id header", method, url, res.StatusCode)
	}
	return response{Status: res.StatusCode, Header: res.Header, Body: data}
}

// wireBatch is the wire form of a batch as the tests read it.
type wireBatch struct {
	ID                string       `json:"id"`
	Type              string       `json:"type"`
	ProcessingStatus  string       `json:"processing_status"`
	RequestCounts     store.Counts `json:"request_counts"`
	EndedAt           *string      `json:"ended_at"`
	CreatedAt         string       `json:"created_at"`
	ExpiresAt         string       `json:"expires_at"`
	ArchivedAt        *string      `json:"archived_at"`
	CancelInitiatedAt *string      `json:"cancel_initiated_at"`
	ResultsURL        *string      `json:"results_url"`
}

// wantBatch decodes a 200 batch response.
func wantBatch(t testing.TB, r response) wireBatch {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", r.Status, r.Body)
	}
	var b wireBatch
	if err := json.Unmarshal(r.Body, &b); err != nil {
		t.Fatalf("decode batch %s: %v", r.Body, err)
	}
	return b
}

// createRaw posts body and returns the created batch.
func createRaw(t testing.TB, url string, body []byte, headers ...string) wireBatch {
	t.Helper()
	return wantBatch(t, do(t, "POST", url+"/v1/messages/batches", body, headers...))
}

// getRaw fetches a batch by id.
func getRaw(t testing.TB, url, id string, headers ...string) wireBatch {
	t.Helper()
	return wantBatch(t, do(t, "GET", url+"/v1/messages/batches/"+id, nil, headers...))
}

// wantError checks that r is an Anthropic error envelope with the given
// status and type, its request_id equal to the request-id header, and a
// message containing every one of contains. It returns the message.
func wantError(t testing.TB, r response, status int, typ string, contains ...string) string {
	t.Helper()
	if r.Status != status {
		t.Errorf("status %d, want %d; body %s", r.Status, status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("error Content-Type %q, want application/json", ct)
	}
	var env struct {
		Type  *string `json:"type"`
		Error *struct {
			Type    *string `json:"type"`
			Message *string `json:"message"`
		} `json:"error"`
		RequestID *string `json:"request_id"`
	}
	if err := json.Unmarshal(r.Body, &env); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, r.Body)
	}
	if env.Type == nil || *env.Type != "error" || env.Error == nil || env.Error.Type == nil || env.Error.Message == nil || env.RequestID == nil {
		t.Fatalf("error body is not the Anthropic envelope: %s", r.Body)
	}
	if *env.Error.Type != typ {
		t.Errorf("error.type %q, want %q (message %q)", *env.Error.Type, typ, *env.Error.Message)
	}
	if got, want := *env.RequestID, r.Header.Get("request-id"); got != want || !strings.HasPrefix(got, "req_") {
		t.Errorf("request_id %q, header request-id %q: want equal, starting req_", got, want)
	}
	for _, s := range contains {
		if !strings.Contains(*env.Error.Message, s) {
			t.Errorf("error message %q does not contain %q", *env.Error.Message, s)
		}
	}
	return *env.Error.Message
}

// resultLine is one line of a results stream, decoded loosely.
type resultLine struct {
	CustomID string `json:"custom_id"`
	Result   struct {
		Type    string          `json:"type"`
		Message json.RawMessage `json:"message"`
		Error   *struct {
			Type  string `json:"type"`
			Error struct {
				Type    string `json:"type"`
				Message string `json:"message"`
			} `json:"error"`
			RequestID *string `json:"request_id"`
		} `json:"error"`
	} `json:"result"`
}

// resultsRaw fetches results over raw HTTP, checks the JSONL byte rules
// (application/x-jsonl, compact lines each ending in "\n", no CR, no blank
// line) and returns the lines by custom_id.
func resultsRaw(t testing.TB, url, id string, query string, headers ...string) map[string]resultLine {
	t.Helper()
	r := do(t, "GET", url+"/v1/messages/batches/"+id+"/results"+query, nil, headers...)
	if r.Status != http.StatusOK {
		t.Fatalf("results: status %d: %s", r.Status, r.Body)
	}
	return parseJSONL(t, r)
}

func parseJSONL(t testing.TB, r response) map[string]resultLine {
	t.Helper()
	if ct := r.Header.Get("Content-Type"); ct != "application/x-jsonl" {
		t.Errorf("results Content-Type %q, want application/x-jsonl", ct)
	}
	out := map[string]resultLine{}
	if len(r.Body) == 0 {
		return out
	}
	if bytes.IndexByte(r.Body, '\r') >= 0 {
		t.Errorf("results contain a CR")
	}
	if r.Body[len(r.Body)-1] != '\n' {
		t.Errorf("results do not end with a newline")
	}
	for i, line := range bytes.Split(bytes.TrimSuffix(r.Body, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			t.Errorf("results line %d is blank", i)
			continue
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, line); err != nil {
			t.Errorf("results line %d is not JSON: %v: %s", i, err, line)
			continue
		}
		if !bytes.Equal(compact.Bytes(), line) {
			t.Errorf("results line %d is not compact: %s", i, line)
		}
		var rl resultLine
		if err := json.Unmarshal(line, &rl); err != nil {
			t.Errorf("results line %d: %v", i, err)
			continue
		}
		if _, dup := out[rl.CustomID]; dup {
			t.Errorf("results: custom_id %q appears twice", rl.CustomID)
		}
		out[rl.CustomID] = rl
	}
	return out
}

// --- waiting ------------------------------------------------------------

// waitFor polls cond every 10ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitEnded polls Get through the SDK until the batch has ended.
func waitEnded(t testing.TB, c anthropic.Client, id string, timeout time.Duration) *anthropic.MessageBatch {
	t.Helper()
	var b *anthropic.MessageBatch
	waitFor(t, timeout, "batch "+id+" to end", func() bool {
		var err error
		b, err = c.Messages.Batches.Get(context.Background(), id, anthropic.MessageBatchGetParams{})
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		return b.ProcessingStatus == anthropic.MessageBatchProcessingStatusEnded
	})
	return b
}

// waitEndedRaw is waitEnded over raw HTTP, for tests with their own headers.
func waitEndedRaw(t testing.TB, url, id string, timeout time.Duration, headers ...string) wireBatch {
	t.Helper()
	var b wireBatch
	waitFor(t, timeout, "batch "+id+" to end", func() bool {
		b = getRaw(t, url, id, headers...)
		return b.ProcessingStatus == "ended"
	})
	return b
}

// sdkResults reads every result through the SDK's ResultsStreaming.
func sdkResults(t testing.TB, c anthropic.Client, id string) map[string]anthropic.MessageBatchIndividualResponse {
	t.Helper()
	s := c.Messages.Batches.ResultsStreaming(context.Background(), id, anthropic.MessageBatchResultsParams{})
	defer s.Close()
	out := map[string]anthropic.MessageBatchIndividualResponse{}
	for s.Next() {
		r := s.Current()
		if _, dup := out[r.CustomID]; dup {
			t.Errorf("results: custom_id %q appears twice", r.CustomID)
		}
		out[r.CustomID] = r
	}
	if err := s.Err(); err != nil {
		t.Fatalf("results of %s: %v", id, err)
	}
	return out
}

// countsSum is the total of a batch's request_counts.
func countsSum(c anthropic.MessageBatchRequestCounts) int64 {
	return c.Processing + c.Succeeded + c.Errored + c.Canceled + c.Expired
}

// recorder is SDK middleware that remembers every request it saw.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (r *recorder) middleware(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Clone(context.Background()))
	r.mu.Unlock()
	return next(req)
}

func (r *recorder) take() []*http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reqs
	r.reqs = nil
	return out
}

// addKey stores an API key for workspace ws and returns the secret.
func addKey(t testing.TB, st store.Store, ws string) (key, id string) {
	t.Helper()
	key, hash, prefix := batch.NewAPIKey()
	id = batch.NewID("key_")
	if _, err := st.KeyCreate(context.Background(), store.KeyCreateParams{
		ID: id, Workspace: ws, Hash: hash, Prefix: prefix, CreatedAt: time.Now(),
	}); err != nil {
		t.Fatalf("create key: %v", err)
	}
	return key, id
}
