// Package api is batchd's HTTP surface: Anthropic's Message Batches API,
// wire-compatible so the official SDKs work by changing only their base URL,
// plus batchd's extension endpoints beside it. It does routing,
// authentication, decoding and encoding; the rules live in package batch.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/dashboard"
	"github.com/batchd/batchd/internal/store"
)

// DefaultWorkspace is the workspace of every request while no API key exists.
const DefaultWorkspace = "default"

// Config configures the API handler.
type Config struct {
	// Service carries out the batch operations.
	Service *batch.Service
	// Keys answers key lookups; the store implements it.
	Keys KeyStore
	// PublicURL is the base of results_url, e.g. "https://batchd.example";
	// empty means derive it from each request's Host.
	PublicURL string
	// Logger receives request errors (default: discard).
	Logger *slog.Logger
	// Backends lists the backends for GET /v1/backends; may be nil.
	Backends func() []BackendInfo
	// Webhooks enables the webhook endpoints API; may be nil.
	Webhooks *Webhooks
	// Events enables the live event streams; may be nil.
	Events EventSource
	// MaxStreamsPerWorkspace caps the event streams one workspace holds
	// open at once (default 64); over it: 429.
	MaxStreamsPerWorkspace int
	// StreamPollInterval is how often the event streams read the store
	// for new events and progress when nothing wakes them (default
	// 250ms). Wake wakes them after a commit of this process, and the
	// server calls it on a store notification from any process.
	StreamPollInterval time.Duration
	// BodyIdleTimeout ends a create whose body sends nothing for this long
	// (default 30s); a slow body that keeps sending is never cut off.
	BodyIdleTimeout time.Duration
	// MaxConcurrentCreates caps the creates one workspace uploads at once
	// (default 8); over it: 429.
	MaxConcurrentCreates int
	// Metrics serves GET /metrics; may be nil.
	Metrics http.Handler
	// Ready answers GET /readyz (503 when not ready); may be nil.
	Ready func(ctx context.Context) Readiness
}

// BackendInfo is one entry of GET /v1/backends, a batchd extension.
type BackendInfo struct {
	Name   string        `json:"name"`
	Kind   string        `json:"kind"`
	Models []string      `json:"models"`
	Limits BackendLimits `json:"limits"`
	// Concurrency is the current (adaptive) limit on requests in flight.
	Concurrency int    `json:"concurrency"`
	InFlight    int    `json:"in_flight"`
	Throttled   int64  `json:"throttled"`
	LastError   string `json:"last_error"`
	// ClusterShare is this process's share of Limits, which hold for all
	// the processes sharing a database together (50 concurrent calls
	// means 50 in all): the whole limits for a process alone, 0 for what
	// is not limited; nil for a backend without limits.
	ClusterShare *BackendShare `json:"cluster_share"`
}

// BackendShare is one process's share of a backend's limits.
type BackendShare struct {
	Concurrency           int `json:"concurrency"`
	RequestsPerMinute     int `json:"requests_per_minute"`
	InputTokensPerMinute  int `json:"input_tokens_per_minute"`
	OutputTokensPerMinute int `json:"output_tokens_per_minute"`
}

// BackendLimits are a backend's configured limits; 0 means none.
type BackendLimits struct {
	Concurrency           int `json:"concurrency"`
	MaxConcurrency        int `json:"max_concurrency"`
	RequestsPerMinute     int `json:"requests_per_minute"`
	InputTokensPerMinute  int `json:"input_tokens_per_minute"`
	OutputTokensPerMinute int `json:"output_tokens_per_minute"`
}

// KeyStore is the part of the store authentication needs.
type KeyStore interface {
	KeyLookup(ctx context.Context, hash string) (string, error)
	KeysActive(ctx context.Context) (bool, error)
}

// API serves HTTP.
type API struct {
	cfg Config
	svc *batch.Service
	log *slog.Logger
	mux *http.ServeMux
	// slots holds each workspace's uploading creates.
	slots *createSlots
	// hub feeds the event streams; nil without Events.
	hub *hub
	// long holds the streams and downloads CloseStreams ends.
	long longResponses

	// mode says whether requests need a key. It moves one way only, from
	// open to enforced (when a first key appears), so revoking every key
	// never opens a server: with none left it refuses every request.
	keysMu      sync.Mutex
	mode        authMode
	keysChecked time.Time
}

type authMode int

const (
	modeUndecided authMode = iota // decided by the first request
	modeOpen
	modeEnforced
)

// SetOpenMode decides, once at start, whether the server runs open (no
// keys existed: any key or none is accepted, in the default workspace) or
// enforces keys. An open server still switches to enforcing as soon as a
// key is created; an enforcing one never opens.
func (a *API) SetOpenMode(open bool) {
	a.keysMu.Lock()
	defer a.keysMu.Unlock()
	a.mode = modeEnforced
	if open {
		a.mode = modeOpen
	}
}

// New returns the API handler.
func New(cfg Config) *API {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	if cfg.BodyIdleTimeout <= 0 {
		cfg.BodyIdleTimeout = DefaultBodyIdleTimeout
	}
	if cfg.MaxConcurrentCreates <= 0 {
		cfg.MaxConcurrentCreates = DefaultMaxConcurrentCreates
	}
	if cfg.MaxStreamsPerWorkspace <= 0 {
		cfg.MaxStreamsPerWorkspace = DefaultMaxStreamsPerWorkspace
	}
	a := &API{cfg: cfg, svc: cfg.Service, log: cfg.Logger.With("component", "api"), mux: http.NewServeMux(),
		slots: &createSlots{max: cfg.MaxConcurrentCreates, n: map[string]int{}}}
	a.handle("POST /v1/messages/batches", a.create)
	a.handle("GET /v1/messages/batches", a.list)
	a.handle("GET /v1/messages/batches/{id}", a.get)
	a.handle("POST /v1/messages/batches/{id}/cancel", a.cancel)
	a.handle("DELETE /v1/messages/batches/{id}", a.delete)
	a.handle("GET /v1/messages/batches/{id}/results", a.longLived(a.results))
	a.handle("POST /v1/messages/batches/{id}/retry", a.retry)
	a.handle("GET /v1/backends", a.backends)
	a.handleUsage()
	a.handleWebhooks()
	a.handleEvents()
	a.handleOps()
	dashboard.Mount(a.mux) // GET / and /dashboard/…: the web dashboard
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, http.StatusNotFound, "not_found_error", fmt.Sprintf("%s %s: no such endpoint", r.Method, r.URL.Path))
	})
	return a
}

// ServeHTTP gives every response a request-id header, then routes.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := batch.NewID("req_")
	w.Header().Set("request-id", id)
	r = r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id))
	a.mux.ServeHTTP(w, r)
}

type requestIDKey struct{}
type workspaceKey struct{}

// handle registers an authenticated endpoint.
func (a *API) handle(pattern string, h func(w http.ResponseWriter, r *http.Request) error) {
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		ws, err := a.authenticate(r)
		if err == nil {
			err = h(w, r.WithContext(context.WithValue(r.Context(), workspaceKey{}, ws)))
		}
		if err != nil {
			a.fail(w, r, err)
		}
	})
}

func workspace(r *http.Request) string { return r.Context().Value(workspaceKey{}).(string) }

type authError struct{ msg string }

func (e *authError) Error() string { return e.msg }

func (a *API) authenticate(r *http.Request) (string, error) {
	active, err := a.keysEnforced(r.Context())
	if err != nil {
		return "", err
	}
	if !active {
		return DefaultWorkspace, nil
	}
	key := r.Header.Get("X-Api-Key")
	if key == "" {
		if auth := r.Header.Get("Authorization"); len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
			key = strings.TrimSpace(auth[7:])
		}
	}
	if key == "" {
		return "", &authError{"x-api-key header is required"}
	}
	ws, err := a.cfg.Keys.KeyLookup(r.Context(), batch.HashKey(key))
	if errors.Is(err, store.ErrNotFound) {
		return "", &authError{"invalid x-api-key"}
	}
	return ws, err
}

func (a *API) keysEnforced(ctx context.Context) (bool, error) {
	a.keysMu.Lock()
	defer a.keysMu.Unlock()
	if a.mode == modeEnforced {
		return true, nil
	}
	// Open (or not yet decided): a key created since makes it enforced for
	// good. Asked on every request, so the answer is cached briefly.
	if a.mode == modeOpen && time.Since(a.keysChecked) < time.Second {
		return false, nil
	}
	active, err := a.cfg.Keys.KeysActive(ctx)
	if err != nil {
		return false, err
	}
	a.keysChecked = time.Now()
	if active {
		a.mode = modeEnforced
		return true, nil
	}
	a.mode = modeOpen
	return false, nil
}

// fail writes err as an Anthropic error envelope. Only domain errors say
// what went wrong; anything else is logged and reported as api_error.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	var de *batch.Error
	var ae *authError
	switch {
	case errors.As(err, &ae):
		writeError(w, r, http.StatusUnauthorized, "authentication_error", ae.msg)
	case errors.As(err, &de):
		switch de.Kind {
		case batch.KindInvalid:
			writeError(w, r, http.StatusBadRequest, "invalid_request_error", de.Message)
		case batch.KindNotFound:
			writeError(w, r, http.StatusNotFound, "not_found_error", de.Message)
		case batch.KindTooLarge:
			writeError(w, r, http.StatusRequestEntityTooLarge, "request_too_large", de.Message)
		case batch.KindRateLimited:
			secs := max(1, int(de.RetryAfter.Seconds()))
			w.Header().Set("retry-after", strconv.Itoa(secs))
			writeError(w, r, http.StatusTooManyRequests, "rate_limit_error", de.Message)
		default:
			writeError(w, r, http.StatusInternalServerError, "api_error", de.Message)
		}
	case errors.Is(err, store.ErrFull):
		// 507 Insufficient Storage: the server's disk, not the request, is
		// at fault; deletes still work and free room (README, "Disk full").
		a.log.Warn("storage full", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, r, http.StatusInsufficientStorage, "api_error", "storage full")
	default:
		if r.Context().Err() != nil {
			return // the client went away; nobody to answer
		}
		a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "request_id", r.Context().Value(requestIDKey{}), "err", err)
		writeError(w, r, http.StatusInternalServerError, "api_error", "internal server error")
	}
}

func writeError(w http.ResponseWriter, r *http.Request, status int, typ, msg string) {
	reqID, _ := r.Context().Value(requestIDKey{}).(string)
	body, _ := json.Marshal(map[string]any{
		"type":       "error",
		"error":      map[string]string{"type": typ, "message": msg},
		"request_id": reqID,
	})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
}

func writeJSON(w http.ResponseWriter, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(body)
	return err
}

// wireTime is Anthropic's timestamp format: RFC 3339, microseconds, Z.
func wireTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000Z07:00") }

func wireTimePtr(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := wireTime(*t)
	return &s
}

// MessageBatch is the wire form of a batch; every key is always present.
type MessageBatch struct {
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

func (a *API) wire(r *http.Request, b *store.Batch) MessageBatch {
	m := MessageBatch{
		ID:                b.ID,
		Type:              "message_batch",
		ProcessingStatus:  b.Status,
		RequestCounts:     b.Counts,
		EndedAt:           wireTimePtr(b.EndedAt),
		CreatedAt:         wireTime(b.CreatedAt),
		ExpiresAt:         wireTime(b.ExpiresAt),
		ArchivedAt:        wireTimePtr(b.ArchivedAt),
		CancelInitiatedAt: wireTimePtr(b.CancelInitiatedAt),
	}
	if b.Status == store.StatusEnded {
		u := a.baseURL(r) + "/v1/messages/batches/" + b.ID + "/results"
		m.ResultsURL = &u
	}
	return m
}

// baseURL is where clients reach batchd: --public-url, else the request's
// own scheme and host, so results_url works behind whatever name the client
// used (the TS and Python SDKs fetch it as given).
func (a *API) baseURL(r *http.Request) string {
	if a.cfg.PublicURL != "" {
		return a.cfg.PublicURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p == "http" || p == "https" {
		scheme = p
	}
	host := r.Host
	if h := r.Header.Get("X-Forwarded-Host"); h != "" {
		host = h
	}
	return scheme + "://" + host
}

func (a *API) create(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength > a.svc.Config().MaxBodyBytes {
		return &batch.Error{Kind: batch.KindTooLarge, Message: fmt.Sprintf("request body of %d bytes is over the %d-byte limit for a message batch", r.ContentLength, a.svc.Config().MaxBodyBytes)}
	}
	body, release, err := a.upload(w, r)
	if err != nil {
		return err
	}
	b, err := a.svc.Idempotent(r.Context(), workspace(r), r.Header.Get("Idempotency-Key"), body,
		func(body io.Reader) (*store.Batch, error) {
			return a.svc.Create(r.Context(), workspace(r), betas(r.Header), body)
		})
	release()
	if err != nil {
		return err
	}
	return writeJSON(w, a.wire(r, b))
}

// betas collects anthropic-beta values, sent as one comma-joined header
// (TypeScript, Python) or several (Go), without the batches beta itself,
// which only selected the endpoint.
func betas(h http.Header) []string {
	var out []string
	seen := map[string]bool{"message-batches-2024-09-24": true}
	for _, v := range h.Values("anthropic-beta") {
		for _, b := range strings.Split(v, ",") {
			b = strings.TrimSpace(b)
			if b != "" && !seen[b] && !strings.ContainsAny(b, ",\r\n") {
				seen[b] = true
				out = append(out, b)
			}
		}
	}
	return out
}

func (a *API) get(w http.ResponseWriter, r *http.Request) error {
	b, err := a.svc.Get(r.Context(), workspace(r), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, a.wire(r, b))
}

func (a *API) list(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	p := batch.ListParams{AfterID: q.Get("after_id"), BeforeID: q.Get("before_id")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return &batch.Error{Kind: batch.KindInvalid, Message: fmt.Sprintf("limit: Input should be a valid integer, got %q", v)}
		}
		p.Limit = &n
	}
	page, err := a.svc.List(r.Context(), workspace(r), p)
	if err != nil {
		return err
	}
	out := struct {
		Data    []MessageBatch `json:"data"`
		HasMore bool           `json:"has_more"`
		FirstID *string        `json:"first_id"`
		LastID  *string        `json:"last_id"`
	}{Data: make([]MessageBatch, 0, len(page.Batches)), HasMore: page.HasMore}
	for _, b := range page.Batches {
		out.Data = append(out.Data, a.wire(r, b))
	}
	if n := len(page.Batches); n > 0 {
		out.FirstID, out.LastID = &page.Batches[0].ID, &page.Batches[n-1].ID
	}
	return writeJSON(w, out)
}

func (a *API) cancel(w http.ResponseWriter, r *http.Request) error {
	ch, err := a.svc.Cancel(r.Context(), workspace(r), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, a.wire(r, ch.Batch))
}

func (a *API) delete(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := a.svc.Delete(r.Context(), workspace(r), id); err != nil {
		return err
	}
	return writeJSON(w, map[string]string{"id": id, "type": "message_batch_deleted"})
}

func (a *API) retry(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	b, err := a.svc.Idempotent(r.Context(), workspace(r), r.Header.Get("Idempotency-Key"), strings.NewReader("retry "+id),
		func(io.Reader) (*store.Batch, error) { return a.svc.Retry(r.Context(), workspace(r), id) })
	if err != nil {
		return err
	}
	return writeJSON(w, a.wire(r, b))
}

// results streams JSONL: application/x-jsonl (the Ruby and PHP SDKs decode
// only with it), one compact object per line, "\n" only.
func (a *API) results(w http.ResponseWriter, r *http.Request) error {
	partial, _ := strconv.ParseBool(r.URL.Query().Get("partial"))
	b, err := a.svc.ResultsReady(r.Context(), workspace(r), r.PathValue("id"), partial)
	if err != nil {
		return err
	}
	if wantsResultsPage(r.URL.Query()) {
		return a.resultsPage(w, r, b)
	}
	w.Header().Set("Content-Type", "application/x-jsonl")
	w.Header().Set("Content-Disposition", "attachment; filename*=utf-8''"+b.ID+"_results.jsonl")
	if err := a.svc.WriteResults(r.Context(), b, w); err != nil {
		if r.Context().Err() == nil {
			a.log.Error("results stream failed", "batch", b.ID, "err", err)
		}
		// The status is sent; abort the connection so the client sees a
		// broken stream, never a clean but short one.
		panic(http.ErrAbortHandler)
	}
	return nil
}

// backends lists the backends, their limits and live state.
func (a *API) backends(w http.ResponseWriter, r *http.Request) error {
	data := []BackendInfo{}
	if a.cfg.Backends != nil {
		data = a.cfg.Backends()
	}
	return writeJSON(w, map[string]any{"data": data})
}
