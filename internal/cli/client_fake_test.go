package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// fakeServer implements just enough of the Message Batches API, plus
// batchd's retry endpoint and partial results, to drive the client commands
// end to end. A batch ends after pollsToEnd GETs; until then its counts move
// like batchd's live counts.
type fakeServer struct {
	t   *testing.T
	srv *httptest.Server

	// outcome gives the result type of a request; nil means all succeed.
	outcome func(customID string) string
	// pollsToEnd is how many GETs a batch takes to end.
	pollsToEnd int
	// noRetryEndpoint makes /retry answer 404 like the Anthropic API.
	noRetryEndpoint bool
	// failGets makes that many batch GETs answer 503, marked not to be
	// retried by the SDK so that the client's own tolerance is tested.
	failGets int
	// throttleCreates makes that many creates answer 429 before the body
	// is read.
	throttleCreates int

	mu      sync.Mutex
	nextID  int
	order   []string // creation order
	batches map[string]*fakeBatch
	creates []fakeCreate
	queries []string // raw queries of results requests
	// idemKeys is the Idempotency-Key of every create attempt, in order.
	idemKeys []string
}

type fakeBatch struct {
	id        string
	requests  []fakeRequest
	gets      int
	canceling bool
	// cancelFrom is how many requests had finished when cancel came; the
	// rest end canceled.
	cancelFrom int
	createdAt  time.Time
}

type fakeRequest struct {
	CustomID string          `json:"custom_id"`
	Params   json.RawMessage `json:"params"`
}

// fakeCreate records what a create request looked like on the wire.
type fakeCreate struct {
	id               string
	contentLength    int64
	bodyLen          int
	transferEncoding []string
	contentType      string
	requests         []fakeRequest
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	f := &fakeServer{t: t, pollsToEnd: 1, batches: map[string]*fakeBatch{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/messages/batches", f.create)
	mux.HandleFunc("GET /v1/messages/batches", f.list)
	mux.HandleFunc("GET /v1/messages/batches/{id}", f.get)
	mux.HandleFunc("DELETE /v1/messages/batches/{id}", f.delete)
	mux.HandleFunc("POST /v1/messages/batches/{id}/cancel", f.cancel)
	mux.HandleFunc("GET /v1/messages/batches/{id}/results", f.results)
	mux.HandleFunc("POST /v1/messages/batches/{id}/retry", f.retry)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeFakeError(w, http.StatusNotFound, "not_found_error", "no such endpoint")
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServer) URL() string { return f.srv.URL }

func writeFakeError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"type":"error","error":{"type":%q,"message":%q},"request_id":"req_fake"}`, typ, msg)
}

func writeFakeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeServer) outcomeOf(customID string) string {
	if f.outcome == nil {
		return "succeeded"
	}
	return f.outcome(customID)
}

// newBatch stores a batch; f.mu must be held.
func (f *fakeServer) newBatch(reqs []fakeRequest) *fakeBatch {
	f.nextID++
	b := &fakeBatch{
		id:        fmt.Sprintf("msgbatch_fake%04d", f.nextID),
		requests:  reqs,
		createdAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(f.nextID) * time.Minute),
	}
	f.batches[b.id] = b
	f.order = append(f.order, b.id)
	return b
}

// finished is how many requests of b have a result; f.mu must be held.
func (f *fakeServer) finished(b *fakeBatch) int {
	if b.gets >= f.pollsToEnd || b.canceling {
		return len(b.requests)
	}
	return len(b.requests) * b.gets / f.pollsToEnd
}

func (f *fakeServer) resultType(b *fakeBatch, i int) string {
	if b.canceling && i >= b.cancelFrom {
		return "canceled"
	}
	return f.outcomeOf(b.requests[i].CustomID)
}

// wire renders b as the API does; f.mu must be held.
func (f *fakeServer) wire(b *fakeBatch) map[string]any {
	done := f.finished(b)
	counts := map[string]int{"processing": len(b.requests) - done, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
	for i := range done {
		counts[f.resultType(b, i)]++
	}
	status := "in_progress"
	var endedAt, resultsURL any
	if done == len(b.requests) {
		status = "ended"
		endedAt = b.createdAt.Add(90 * time.Second).Format(time.RFC3339Nano)
		resultsURL = f.srv.URL + "/v1/messages/batches/" + b.id + "/results"
	}
	return map[string]any{
		"id": b.id, "type": "message_batch", "processing_status": status, "request_counts": counts,
		"created_at": b.createdAt.Format(time.RFC3339Nano), "expires_at": b.createdAt.Add(24 * time.Hour).Format(time.RFC3339Nano),
		"ended_at": endedAt, "archived_at": nil, "cancel_initiated_at": nil, "results_url": resultsURL,
	}
}

func (f *fakeServer) create(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.idemKeys = append(f.idemKeys, r.Header.Get("Idempotency-Key"))
	throttle := f.throttleCreates > 0
	if throttle {
		f.throttleCreates--
	}
	f.mu.Unlock()
	if throttle {
		w.Header().Set("Retry-After", "0")
		writeFakeError(w, http.StatusTooManyRequests, "rate_limit_error", "slow down")
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeFakeError(w, http.StatusBadRequest, "invalid_request_error", err.Error())
		return
	}
	var req struct {
		Requests []fakeRequest `json:"requests"`
	}
	if err := json.Unmarshal(body, &req); err != nil || len(req.Requests) == 0 {
		writeFakeError(w, http.StatusBadRequest, "invalid_request_error", fmt.Sprintf("bad body %q: %v", body, err))
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.newBatch(req.Requests)
	f.creates = append(f.creates, fakeCreate{
		id: b.id, contentLength: r.ContentLength, bodyLen: len(body), transferEncoding: r.TransferEncoding,
		contentType: r.Header.Get("Content-Type"), requests: req.Requests,
	})
	writeFakeJSON(w, f.wire(b))
}

func (f *fakeServer) lookup(w http.ResponseWriter, r *http.Request) *fakeBatch {
	b, ok := f.batches[r.PathValue("id")]
	if !ok {
		writeFakeError(w, http.StatusNotFound, "not_found_error", "no batch "+r.PathValue("id"))
		return nil
	}
	return b
}

func (f *fakeServer) get(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failGets > 0 {
		f.failGets--
		w.Header().Set("x-should-retry", "false")
		writeFakeError(w, http.StatusServiceUnavailable, "overloaded_error", "try later")
		return
	}
	if b := f.lookup(w, r); b != nil {
		b.gets++
		writeFakeJSON(w, f.wire(b))
	}
}

func (f *fakeServer) list(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	limit := 20
	if s := r.URL.Query().Get("limit"); s != "" {
		limit, _ = strconv.Atoi(s)
	}
	var ids []string // newest first
	for i := len(f.order) - 1; i >= 0; i-- {
		ids = append(ids, f.order[i])
	}
	if after := r.URL.Query().Get("after_id"); after != "" {
		for i, id := range ids {
			if id == after {
				ids = ids[i+1:]
				break
			}
		}
	}
	hasMore := len(ids) > limit
	if hasMore {
		ids = ids[:limit]
	}
	data := []any{}
	for _, id := range ids {
		data = append(data, f.wire(f.batches[id]))
	}
	var first, last any
	if len(ids) > 0 {
		first, last = ids[0], ids[len(ids)-1]
	}
	writeFakeJSON(w, map[string]any{"data": data, "has_more": hasMore, "first_id": first, "last_id": last})
}

func (f *fakeServer) delete(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.lookup(w, r); b != nil {
		delete(f.batches, b.id)
		writeFakeJSON(w, map[string]any{"id": b.id, "type": "message_batch_deleted"})
	}
}

func (f *fakeServer) cancel(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.lookup(w, r); b != nil {
		if !b.canceling {
			b.cancelFrom, b.canceling = f.finished(b), true
		}
		writeFakeJSON(w, f.wire(b))
	}
}

func (f *fakeServer) results(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.lookup(w, r)
	if b == nil {
		return
	}
	f.queries = append(f.queries, r.URL.RawQuery)
	done := f.finished(b)
	if done < len(b.requests) && r.URL.Query().Get("partial") != "true" {
		writeFakeError(w, http.StatusBadRequest, "invalid_request_error", "message batch has not finished processing; results are available once it has ended, or pass partial=true")
		return
	}
	w.Header().Set("Content-Type", "application/x-jsonl")
	for i := range done {
		fmt.Fprintln(w, fakeResultLine(b.requests[i].CustomID, f.resultType(b, i)))
	}
}

func (f *fakeServer) retry(w http.ResponseWriter, r *http.Request) {
	if f.noRetryEndpoint {
		writeFakeError(w, http.StatusNotFound, "not_found_error", "Not Found")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.lookup(w, r)
	if b == nil {
		return
	}
	var failed []fakeRequest
	for i, req := range b.requests {
		if f.resultType(b, i) != "succeeded" {
			failed = append(failed, req)
		}
	}
	if len(failed) == 0 { // as batchd answers
		writeFakeError(w, http.StatusBadRequest, "invalid_request_error", "message batch "+b.id+" has no failed, canceled or expired requests to retry")
		return
	}
	writeFakeJSON(w, f.wire(f.newBatch(failed)))
}

// fakeResultLine is one results line of the given type, compact.
func fakeResultLine(customID, typ string) string {
	var result string
	switch typ {
	case "succeeded":
		result = fmt.Sprintf(`{"type":"succeeded","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"echo:\t%s\nend"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":11,"output_tokens":36}}}`, customID)
	case "errored":
		result = `{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"bad, \"very\" bad"},"request_id":null}}`
	default:
		result = fmt.Sprintf(`{"type":%q}`, typ)
	}
	return fmt.Sprintf(`{"custom_id":%q,"result":%s}`, customID, result)
}

func (f *fakeServer) createsSnapshot() []fakeCreate {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeCreate(nil), f.creates...)
}

// runCLI runs the client commands with args and returns stdout and stderr.
func runCLI(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	root := &cobra.Command{Use: "batchd", SilenceUsage: true, SilenceErrors: true}
	addClientCommands(root)
	var stdout, stderr bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	root.SetIn(strings.NewReader(stdin))
	err := root.Execute()
	return stdout.String(), stderr.String(), err
}
