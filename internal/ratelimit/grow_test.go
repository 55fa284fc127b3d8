package ratelimit

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/batchd/batchd/internal/backend"
)

// TestLimitDoesNotGrowWhenNotBinding: calls made one at a time never fill
// the limit, so it must not grow (it reached 1024 with 5 calls in flight).
func TestLimitDoesNotGrowWhenNotBinding(t *testing.T) {
	t.Parallel()
	l := New(&fake{}, Limits{Concurrency: 4, MaxConcurrency: 1024})
	for i := 0; i < 2000; i++ {
		if _, err := l.Do(context.Background(), backend.Call{Params: json.RawMessage(`{"max_tokens":5}`)}); err != nil {
			t.Fatal(err)
		}
	}
	if got := l.Stats().Concurrency; got > 8 {
		t.Errorf("limit grew to %d with one call in flight; want it near the start (4)", got)
	}
}
