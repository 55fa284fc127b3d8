package ratelimit

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
)

// records keeps what a Logger handled, by message.
type records struct {
	mu   sync.Mutex
	got  []slog.Record
	attr []map[string]slog.Value
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	attrs := map[string]slog.Value{}
	rec.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value; return true })
	r.got = append(r.got, rec)
	r.attr = append(r.attr, attrs)
	return nil
}

func (r *records) find(msg string) (slog.Record, map[string]slog.Value, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, rec := range r.got {
		if rec.Message == msg {
			return rec, r.attr[i], true
		}
	}
	return slog.Record{}, nil, false
}

// TestThrottlesAreLoggedAtDebug: an operator running at debug level sees
// each throttle (backend, status, retry-after, the new limit) and each
// backend-wide pause.
func TestThrottlesAreLoggedAtDebug(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		err   error
		pause bool
	}{
		{"429 on a concurrency cap", &backend.Error{Type: backend.ErrRateLimit, Status: 429, RetryAfter: time.Second}, false},
		{"529", &backend.Error{Type: backend.ErrOverloaded, Status: 529, RetryAfter: 2 * time.Second}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := &records{}
			l := New(&fake{}, Limits{Concurrency: 8, Logger: slog.New(h)})
			for range 2 {
				l.acquire(context.Background(), 1, 1, nil)
			}
			l.release(time.Now(), 1, 1, nil, tt.err)
			rec, a, ok := h.find("upstream throttled")
			if !ok {
				t.Fatalf("no throttle logged; got %d records", len(h.got))
			}
			be := backend.AsError(tt.err)
			if rec.Level != slog.LevelDebug || a["backend"].String() != "fake" || a["status"].Int64() != int64(be.Status) ||
				a["retry_after"].Duration() != be.RetryAfter || a["limit"].Int64() != int64(l.Stats().Concurrency) {
				t.Errorf("throttle record %v %v", rec.Level, a)
			}
			if _, a, ok := h.find("backend paused"); ok != tt.pause || (ok && a["for"].Duration() != be.RetryAfter) {
				t.Errorf("backend paused logged = %v (%v), want %v", ok, a, tt.pause)
			}
		})
	}
}

// TestSpentBudgetPauseIsLogged: a pause for an
// anthropic-ratelimit-*-remaining: 0 is logged once, naming the budget.
func TestSpentBudgetPauseIsLogged(t *testing.T) {
	t.Parallel()
	h := &records{}
	l := New(&fake{}, Limits{Concurrency: 8, Logger: slog.New(h)})
	hdr := http.Header{}
	hdr.Set("anthropic-ratelimit-output-tokens-remaining", "0")
	hdr.Set("anthropic-ratelimit-output-tokens-reset", time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	l.observe(hdr)
	l.observe(hdr)
	_, a, ok := h.find("backend paused")
	if !ok || a["reason"].String() != "anthropic-ratelimit-output-tokens-remaining: 0" {
		t.Fatalf("pause record %v %v", ok, a)
	}
	if len(h.got) != 1 {
		t.Errorf("%d records for one pause, want 1", len(h.got))
	}
}
