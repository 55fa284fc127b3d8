// Package batch is batchd's domain: creating batches from a streamed body,
// reading, listing, canceling, deleting them, streaming their results and
// retrying what failed. It knows the Message Batches rules; it knows nothing
// of HTTP or SQL.
package batch

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/batchd/batchd/internal/ids"
	"github.com/batchd/batchd/internal/store"

	"github.com/batchd/batchd/internal/cost"
)

// Defaults, from Anthropic's documented limits (see DESIGN.md).
const (
	DefaultMaxRequests  = 100_000
	DefaultMaxBodyBytes = 256 << 20
	// DefaultMaxParamsBytes caps one request's params: the largest value
	// the server ever holds in memory at once.
	DefaultMaxParamsBytes = 32 << 20
	DefaultMaxInProgress  = 100
	DefaultExpireAfter    = 24 * time.Hour
	DefaultRetention      = 29 * 24 * time.Hour
)

// Config configures a Service. Zero values take the defaults above.
type Config struct {
	// MaxRequests caps requests per batch (default 100,000).
	MaxRequests int
	// MaxBodyBytes caps a create body (default 256 MiB); over it: 413.
	MaxBodyBytes int64
	// MaxParamsBytes caps one request's params (default 32 MiB); over it
	// the create is refused with a 413 naming requests.N.params.
	MaxParamsBytes int64
	// MaxInProgress caps unended batches per workspace (default 100); over
	// it: 429.
	MaxInProgress int
	// ExpireAfter is how long after creation a batch expires (default 24h).
	ExpireAfter time.Duration
	// Retention is how long after creation results are kept (default 29 days).
	Retention time.Duration
	// UploadLease is how long a batch being created survives its creator
	// (default DefaultUploadLease): the creator renews it while the
	// requests stream in; once it lapses (the process died), the leader
	// discards the half-made batch.
	UploadLease time.Duration
	// Now is the clock; tests stub it (default time.Now).
	Now func() time.Time
	// OnCreated is called after a batch becomes visible, to wake the
	// dispatcher early; may be nil.
	OnCreated func()
	// Route names the backend that serves a model, "" when none does
	// (default: "" for every model). Requests are routed when created so
	// that each backend claims only its own.
	Route func(model string) string
	// OnCanceled is called with a batch's seq when it starts canceling, so
	// the dispatcher sends none of its requests it has claimed ahead; may
	// be nil.
	OnCanceled func(batchSeq int64)
	// Prices prices usage reports (default: cost.Default()).
	Prices *cost.Table
	// CheckParams is the dispatcher's check of a request's params, for
	// estimates: the model and max_tokens, or why the request would end
	// errored (default: the model only, nothing rejected).
	CheckParams func(params json.RawMessage) (model string, maxTokens int64, reason string)
	// Budgets are workspaces' spending limits in USD at batch price per
	// calendar month (UTC): a create whose most possible cost, with the
	// month's spending and the most the workspace's batches in progress
	// may still cost, would pass its workspace's limit is refused.
	Budgets map[string]float64
}

func (c Config) withDefaults() Config {
	if c.UploadLease <= 0 {
		c.UploadLease = DefaultUploadLease
	}
	if c.MaxRequests <= 0 {
		c.MaxRequests = DefaultMaxRequests
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxParamsBytes <= 0 {
		c.MaxParamsBytes = DefaultMaxParamsBytes
	}
	if c.MaxInProgress <= 0 {
		c.MaxInProgress = DefaultMaxInProgress
	}
	if c.ExpireAfter <= 0 {
		c.ExpireAfter = DefaultExpireAfter
	}
	if c.Retention <= 0 {
		c.Retention = DefaultRetention
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.OnCreated == nil {
		c.OnCreated = func() {}
	}
	if c.Route == nil {
		c.Route = func(string) string { return "" }
	}
	if c.OnCanceled == nil {
		c.OnCanceled = func(int64) {}
	}
	return c
}

// Service carries out the batch operations for the API and the CLI.
type Service struct {
	store store.Store
	cfg   Config
	// routed says Config.Route was given, so a model it names no backend
	// for is one no backend serves.
	routed bool
}

// NewService returns a Service over st.
func NewService(st store.Store, cfg Config) *Service {
	return &Service{store: st, cfg: cfg.withDefaults(), routed: cfg.Route != nil}
}

// Config returns the effective configuration, defaults applied.
func (s *Service) Config() Config { return s.cfg }

// Kind classifies a domain error; the API maps each to one HTTP status and
// Anthropic error type.
type Kind int

// Error kinds.
const (
	KindInvalid Kind = iota + 1
	KindNotFound
	KindTooLarge
	KindRateLimited
)

// Error is a failure the client caused or can act on; its Message is safe to
// show the client.
type Error struct {
	Kind       Kind
	Message    string
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Message }

func invalid(format string, args ...any) error {
	return &Error{Kind: KindInvalid, Message: fmt.Sprintf(format, args...)}
}

func notFound(id string) error {
	return &Error{Kind: KindNotFound, Message: fmt.Sprintf("message batch %q not found", id)}
}

// mapStore turns store sentinels into domain errors for batch id.
func mapStore(err error, id string) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return notFound(id)
	case errors.Is(err, store.ErrTooManyBatches):
		return &Error{Kind: KindRateLimited, RetryAfter: 30 * time.Second,
			Message: "too many message batches in progress in this workspace; wait for some to end"}
	}
	return err
}

// NewID returns prefix followed by "01" and 22 random base-62 characters,
// the shape of Anthropic's ids (msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d).
func NewID(prefix string) string { return ids.New(prefix) }

// Get returns one batch of the workspace.
func (s *Service) Get(ctx context.Context, workspace, id string) (*store.Batch, error) {
	b, err := s.store.BatchGet(ctx, store.BatchGetParams{Workspace: workspace, ID: id})
	if err != nil {
		return nil, mapStore(err, id)
	}
	return b, nil
}

// ListParams are the list query, validated by List.
type ListParams struct {
	AfterID, BeforeID string
	// Limit is the page size; nil means the default (20). A pointer, so
	// that an explicit 0 is refused naming what the client sent.
	Limit *int
}

// List pages the workspace's batches, newest first.
func (s *Service) List(ctx context.Context, workspace string, p ListParams) (*store.BatchPage, error) {
	if p.AfterID != "" && p.BeforeID != "" {
		return nil, invalid("before_id and after_id cannot both be set")
	}
	limit := 20
	if p.Limit != nil {
		limit = *p.Limit
	}
	if limit < 1 || limit > 1000 {
		return nil, invalid("limit: Input should be between 1 and 1000, got %d", limit)
	}
	page, err := s.store.BatchList(ctx, store.BatchListParams{Workspace: workspace, AfterID: p.AfterID, BeforeID: p.BeforeID, Limit: limit})
	if errors.Is(err, store.ErrNotFound) {
		field, id := "after_id", p.AfterID
		if p.BeforeID != "" {
			field, id = "before_id", p.BeforeID
		}
		return nil, invalid("%s: no message batch %q in this workspace", field, id)
	}
	return page, err
}

// Cancel starts canceling a batch. Canceling twice is harmless; canceling
// an ended batch is a 400.
func (s *Service) Cancel(ctx context.Context, workspace, id string) (*store.BatchChange, error) {
	ch, err := s.store.BatchCancel(ctx, store.BatchCancelParams{Workspace: workspace, ID: id, Now: s.cfg.Now()})
	if errors.Is(err, store.ErrConflict) {
		return nil, invalid("message batch %s has already ended and cannot be canceled", id)
	}
	if err != nil {
		return nil, mapStore(err, id)
	}
	if !ch.Ended {
		s.cfg.OnCanceled(ch.Batch.Seq)
	}
	return ch, nil
}

// Delete deletes an ended batch and its results.
func (s *Service) Delete(ctx context.Context, workspace, id string) error {
	err := s.store.BatchDelete(ctx, store.BatchGetParams{Workspace: workspace, ID: id})
	if errors.Is(err, store.ErrConflict) {
		return invalid("message batch %s is still in progress; cancel it and wait for it to end before deleting it", id)
	}
	if err != nil {
		return mapStore(err, id)
	}
	return nil
}

// resultsPage is how many results one store read fetches while streaming.
const resultsPage = 1000

// Results writes the batch's results as JSONL to w: one compact object per
// settled request, in request order, "\n" after each. Unless partial is
// set, the batch must have ended. Memory stays flat: the results are read a
// page at a time.
func (s *Service) Results(ctx context.Context, workspace, id string, partial bool, w io.Writer) error {
	b, err := s.ResultsReady(ctx, workspace, id, partial)
	if err != nil {
		return err
	}
	return s.WriteResults(ctx, b, w)
}

// ResultsReady checks that the batch's results can be streamed, so that the
// API can answer with an error before it starts the stream.
func (s *Service) ResultsReady(ctx context.Context, workspace, id string, partial bool) (*store.Batch, error) {
	b, err := s.Get(ctx, workspace, id)
	if err != nil {
		return nil, err
	}
	if b.ArchivedAt != nil {
		return nil, &Error{Kind: KindNotFound, Message: fmt.Sprintf("results of message batch %s were archived at %s and are no longer available",
			id, b.ArchivedAt.Format(time.RFC3339))}
	}
	if b.Status != store.StatusEnded && !partial {
		return nil, invalid("message batch %s has not finished processing (processing_status %q); results are available once it has ended, or pass partial=true", id, b.Status)
	}
	return b, nil
}

// WriteResults streams the results of b, which ResultsReady approved. It
// fails when fewer results are left than b had settled: the batch was
// deleted or archived meanwhile (its rows are purged in the background), and
// the caller must break the transfer rather than end it short but valid.
func (s *Service) WriteResults(ctx context.Context, b *store.Batch, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	// Results only ever grow while a batch exists, so what was settled when
	// the stream began is a lower bound of what it must carry.
	want := b.Counts.Succeeded + b.Counts.Errored + b.Counts.Canceled + b.Counts.Expired
	var after, sent int64
	for {
		rows, err := s.store.ResultsList(ctx, store.ResultsListParams{BatchSeq: b.Seq, AfterID: after, Limit: resultsPage})
		if err != nil {
			return err
		}
		for _, r := range rows {
			writeResultLine(bw, r)
		}
		sent += int64(len(rows))
		if len(rows) < resultsPage {
			if sent < want {
				return fmt.Errorf("stream results of %s: %d of %d results left: deleted or archived while streaming", b.ID, sent, want)
			}
			break
		}
		after = rows[len(rows)-1].ID
		// Hand each page to the client as it is read.
		if err := bw.Flush(); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// writeResultLine writes {"custom_id":…,"result":…}\n. custom_id matches
// ^[a-zA-Z0-9_-]{1,64}$, so it needs no escaping.
func writeResultLine(bw *bufio.Writer, r store.Result) {
	bw.WriteString(`{"custom_id":"`)
	bw.WriteString(r.CustomID)
	bw.WriteString(`","result":`)
	switch {
	case len(r.Result) > 0:
		bw.Write(r.Result)
	default:
		bw.WriteString(`{"type":"`)
		bw.WriteString(r.ResultType)
		bw.WriteString(`"}`)
	}
	bw.WriteString("}\n")
}
