package ratelimit

import (
	"net/http"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
)

// TestRateLimitHeadersPauseIsBounded: an anthropic-ratelimit-*-reset far
// in the future (a broken header, a skewed clock) pauses the backend, or
// spreads its calls, for at most backend.MaxRetryAfter, as a retry-after
// does, not for days.
func TestRateLimitHeadersPauseIsBounded(t *testing.T) {
	t.Parallel()
	l, c := newClocked(Limits{Concurrency: 4})
	far := c.now().Add(30 * 24 * time.Hour).UTC().Format(time.RFC3339)
	h := http.Header{}
	h.Set("anthropic-ratelimit-input-tokens-remaining", "0")
	h.Set("anthropic-ratelimit-input-tokens-reset", far)
	l.observe(h)
	if p := l.paused.Sub(c.now()); p > backend.MaxRetryAfter {
		t.Errorf("a spent budget resetting in 30 days pauses the backend for %s, want at most %s", p, backend.MaxRetryAfter)
	}
	h = http.Header{}
	h.Set("anthropic-ratelimit-requests-limit", "1000")
	h.Set("anthropic-ratelimit-requests-remaining", "1")
	h.Set("anthropic-ratelimit-requests-reset", far)
	l.observe(h)
	if l.spacing > backend.MaxRetryAfter || l.spacingUntil.Sub(c.now()) > backend.MaxRetryAfter {
		t.Errorf("a low requests budget resetting in 30 days spaces calls %s apart until %s from now, want at most %s",
			l.spacing, l.spacingUntil.Sub(c.now()), backend.MaxRetryAfter)
	}
}
