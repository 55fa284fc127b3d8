package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
)

// batchd streams events as Server-Sent Events (a batchd extension):
// GET /v1/messages/batches/{id}/events for one batch (the stream closes after
// the batch's message_batch.ended event) and GET /v1/events for the
// workspace. Webhook events (message_batch.created, .canceling, .ended) carry
// the webhook envelope as data and the event sequence as id, so a client
// resumes with Last-Event-ID; progress events carry live counts and no id.

const (
	// sseEventProgress is the type of batchd's live-count events.
	sseEventProgress = "progress"
	// sseMaxLine bounds one line of the stream; an event's data is one line.
	sseMaxLine = 4 << 20
	// sseIdleTimeout drops a stream on which nothing, not even a keepalive
	// comment, arrived for that long: the connection is probably dead.
	sseIdleTimeout = 2 * time.Minute
	// sseMaxBackoff caps the delay between reconnections.
	sseMaxBackoff = 30 * time.Second
)

// errNoEventStream means the server does not offer the event stream: a 404
// or 405 on the events path, or an answer that is not text/event-stream.
// That is an Anthropic API server or an older batchd.
var errNoEventStream = errors.New("server has no event stream")

// sseEvent is one dispatched server-sent event.
type sseEvent struct {
	// ID is the event's id field; HasID says whether it had one.
	ID    string
	HasID bool
	// Event is the event field, "" when absent (the spec's "message").
	Event string
	// Data is the data lines joined with "\n".
	Data []byte
}

// sseReader parses a text/event-stream as the HTML Living Standard says:
// lines end in LF, CRLF or CR; lines starting with ":" are comments; a field
// without a colon has an empty value; one space after the colon is dropped;
// data lines accumulate, joined with LF; a blank line dispatches the event,
// unless it has no data; an unterminated event at the end is discarded.
type sseReader struct {
	sc     *bufio.Scanner
	first  bool
	lastID string
	retry  time.Duration
}

func newSSEReader(r io.Reader) *sseReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), sseMaxLine)
	sc.Split(scanSSELines)
	return &sseReader{sc: sc, first: true}
}

// LastEventID is the last id field seen, what Last-Event-ID resumes from.
func (r *sseReader) LastEventID() string { return r.lastID }

// Retry is the reconnection time the server asked for, or 0.
func (r *sseReader) Retry() time.Duration { return r.retry }

// Next returns the next event, or io.EOF when the stream ended cleanly.
func (r *sseReader) Next() (*sseEvent, error) {
	var (
		ev      sseEvent
		data    bytes.Buffer
		hasData bool
	)
	for r.sc.Scan() {
		line := r.sc.Bytes()
		if r.first {
			line = bytes.TrimPrefix(line, []byte("\uFEFF"))
			r.first = false
		}
		if len(line) == 0 {
			if !hasData {
				ev = sseEvent{}
				continue
			}
			ev.Data = bytes.Clone(data.Bytes())
			return &ev, nil
		}
		if line[0] == ':' {
			continue // comment, e.g. a keepalive
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			ev.Event = string(value)
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.Write(value)
			hasData = true
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				ev.ID, ev.HasID = string(value), true
				r.lastID = ev.ID
			}
		case "retry":
			if ms, ok := asciiDigits(value); ok {
				r.retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
	if err := r.sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("event stream: a line is longer than %d MB", sseMaxLine>>20)
		}
		return nil, err
	}
	return nil, io.EOF
}

func asciiDigits(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 12 {
		return 0, false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	return n, err == nil
}

// scanSSELines splits at LF, CRLF or a lone CR.
func scanSSELines(data []byte, atEOF bool) (int, []byte, error) {
	if atEOF && len(data) == 0 {
		return 0, nil, nil
	}
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		if data[i] == '\n' {
			return i + 1, data[:i], nil
		}
		switch {
		case i+1 < len(data) && data[i+1] == '\n':
			return i + 2, data[:i], nil
		case i+1 < len(data) || atEOF:
			return i + 1, data[:i], nil
		default:
			return 0, nil, nil // is the CR followed by LF? read on
		}
	}
	if atEOF {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// eventStream is one open connection to an event stream.
type eventStream struct {
	*sseReader
	body   io.ReadCloser
	cancel context.CancelFunc
	idle   *time.Timer
	mu     sync.Mutex
	idled  bool
}

// openEventStream GETs path (relative to the base URL) through the SDK
// client, so that the base URL, key and headers are those of every other
// command, resuming after lastEventID when it is not empty. It returns an
// error wrapping errNoEventStream when the server has no such stream.
func openEventStream(ctx context.Context, client *anthropic.Client, path, lastEventID string, extra ...option.RequestOption) (*eventStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	opts := append([]option.RequestOption{
		option.WithHeader("Accept", "text/event-stream"),
		option.WithHeader("Cache-Control", "no-cache"),
	}, extra...)
	if lastEventID != "" {
		opts = append(opts, option.WithHeader("Last-Event-ID", lastEventID))
	}
	var res *http.Response
	if err := client.Get(ctx, path, nil, &res, opts...); err != nil {
		cancel()
		if s := apiStatus(err); s == http.StatusNotFound || s == http.StatusMethodNotAllowed {
			return nil, fmt.Errorf("%w: GET /%s: %w", errNoEventStream, path, concise(err))
		}
		return nil, err
	}
	if mt, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type")); mt != "text/event-stream" {
		res.Body.Close()
		cancel()
		return nil, fmt.Errorf("%w: GET /%s answered %d with Content-Type %q", errNoEventStream, path, res.StatusCode, res.Header.Get("Content-Type"))
	}
	s := &eventStream{body: res.Body, cancel: cancel}
	s.idle = time.AfterFunc(sseIdleTimeout, func() {
		s.mu.Lock()
		s.idled = true
		s.mu.Unlock()
		cancel()
	})
	s.sseReader = newSSEReader(idleReader{r: res.Body, t: s.idle})
	s.lastID = lastEventID // what the next reconnection resumes from, until an id comes
	return s, nil
}

// Next returns the next event, io.EOF when the server ended the stream, or
// the error that broke it.
func (s *eventStream) Next() (*sseEvent, error) {
	ev, err := s.sseReader.Next()
	if err != nil && !errors.Is(err, io.EOF) {
		s.mu.Lock()
		idled := s.idled
		s.mu.Unlock()
		if idled {
			return nil, fmt.Errorf("event stream: nothing received for %s", sseIdleTimeout)
		}
	}
	return ev, err
}

func (s *eventStream) Close() {
	s.idle.Stop()
	s.cancel()
	s.body.Close()
}

// idleReader pushes back t's deadline whenever anything is read.
type idleReader struct {
	r io.Reader
	t *time.Timer
}

func (r idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.t.Reset(sseIdleTimeout)
	}
	return n, err
}

// sseBackoff is the delay before reconnecting after failures consecutive
// failures: base (or what the server asked for), doubling, at most
// sseMaxBackoff.
func sseBackoff(base, serverRetry time.Duration, failures int) time.Duration {
	d := base
	if serverRetry > 0 {
		d = serverRetry
	}
	for range min(failures, 16) {
		d *= 2
		if d >= sseMaxBackoff {
			return sseMaxBackoff
		}
	}
	return min(d, sseMaxBackoff)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// webhookEnvelope is the data of a webhook event:
// {"type":"event","id":"evt_…","created_at":"…","data":{"type":"message_batch.ended","id":"msgbatch_…",…}}.
type webhookEnvelope struct {
	Type      string          `json:"type"`
	ID        string          `json:"id"`
	CreatedAt string          `json:"created_at"`
	Data      json.RawMessage `json:"data"`
}

// sseBatch is what events say about a batch: the data of a progress event,
// or the data inside a webhook envelope.
type sseBatch struct {
	Type             string `json:"type"`
	ID               string `json:"id"`
	ProcessingStatus string `json:"processing_status"`
	RequestCounts    *struct {
		Processing int64 `json:"processing"`
		Succeeded  int64 `json:"succeeded"`
		Errored    int64 `json:"errored"`
		Canceled   int64 `json:"canceled"`
		Expired    int64 `json:"expired"`
	} `json:"request_counts"`
	CreatedAt  *time.Time `json:"created_at"`
	EndedAt    *time.Time `json:"ended_at"`
	ResultsURL *string    `json:"results_url"`
}

// messageBatch converts b for the progress display.
func (b *sseBatch) messageBatch() *anthropic.MessageBatch {
	m := &anthropic.MessageBatch{ID: b.ID, ProcessingStatus: anthropic.MessageBatchProcessingStatus(b.ProcessingStatus)}
	if c := b.RequestCounts; c != nil {
		m.RequestCounts.Processing, m.RequestCounts.Succeeded, m.RequestCounts.Errored = c.Processing, c.Succeeded, c.Errored
		m.RequestCounts.Canceled, m.RequestCounts.Expired = c.Canceled, c.Expired
	}
	if b.CreatedAt != nil {
		m.CreatedAt = *b.CreatedAt
	}
	if b.EndedAt != nil {
		m.EndedAt = *b.EndedAt
	}
	if b.ResultsURL != nil {
		m.ResultsURL = *b.ResultsURL
	}
	return m
}

// batchOfEvent returns what ev says about a batch, or nil for an event
// that says nothing (a comment-only event, an unknown type).
func batchOfEvent(ev *sseEvent) (*sseBatch, error) {
	var b sseBatch
	switch {
	case ev.Event == sseEventProgress:
		if err := json.Unmarshal(ev.Data, &b); err != nil {
			return nil, fmt.Errorf("progress event: %w", err)
		}
	default:
		var env webhookEnvelope
		if err := json.Unmarshal(ev.Data, &env); err != nil {
			return nil, fmt.Errorf("%s event: %w", ev.Event, err)
		}
		if env.Type != "event" || len(env.Data) == 0 {
			return nil, nil
		}
		if err := json.Unmarshal(env.Data, &b); err != nil {
			return nil, fmt.Errorf("%s event: %w", ev.Event, err)
		}
		if b.Type == "" {
			b.Type = ev.Event
		}
	}
	return &b, nil
}
