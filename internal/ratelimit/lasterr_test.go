package ratelimit

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/batchd/batchd/internal/backend"
)

type invalid struct{}

func (invalid) Name() string { return "invalid" }
func (invalid) Do(context.Context, backend.Call) (json.RawMessage, error) {
	return nil, &backend.Error{Type: backend.ErrInvalidRequest, Status: 400, Message: "top_k not supported"}
}

// TestLastErrorIgnoresClientErrors: a client's own invalid request says
// nothing about the upstream's health, so it is not the backend's last_error.
func TestLastErrorIgnoresClientErrors(t *testing.T) {
	t.Parallel()
	l := New(invalid{}, Limits{Concurrency: 4})
	l.Do(context.Background(), backend.Call{Params: json.RawMessage(`{"max_tokens":5}`)})
	if got := l.Stats().LastError; got != "" {
		t.Errorf("last_error = %q; want empty for a client's invalid request", got)
	}
}
