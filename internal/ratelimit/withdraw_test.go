package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
)

// blocking is a backend whose calls hold until release closes.
type blocking struct {
	started chan struct{}
	release chan struct{}
}

func (b *blocking) Name() string { return "blocking" }

func (b *blocking) Do(ctx context.Context, _ backend.Call) (json.RawMessage, error) {
	b.started <- struct{}{}
	select {
	case <-b.release:
		return json.RawMessage(`{"usage":{"input_tokens":1,"output_tokens":1}}`), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestWithdrawnWhileWaiting: a call waiting for a concurrency slot returns
// backend.ErrWithdrawn as soon as it is withdrawn, without being sent; the
// call in flight is not affected.
func TestWithdrawnWhileWaiting(t *testing.T) {
	t.Parallel()
	inner := &blocking{started: make(chan struct{}, 2), release: make(chan struct{})}
	l := New(inner, Limits{Concurrency: 1, Fixed: true})
	ctx := context.Background()
	withdrawn := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		_, err := l.Do(ctx, backend.Call{Params: json.RawMessage(`{}`), Withdrawn: withdrawn})
		first <- err
	}()
	<-inner.started
	second := make(chan error, 1)
	go func() {
		_, err := l.Do(ctx, backend.Call{Params: json.RawMessage(`{}`), Withdrawn: withdrawn})
		second <- err
	}()
	close(withdrawn)
	select {
	case err := <-second:
		if !errors.Is(err, backend.ErrWithdrawn) {
			t.Fatalf("waiting call: %v, want ErrWithdrawn", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the waiting call was not withdrawn")
	}
	close(inner.release)
	if err := <-first; err != nil {
		t.Fatalf("the call in flight: %v, want it to finish", err)
	}
	if len(inner.started) != 0 {
		t.Fatal("the withdrawn call was sent")
	}
}
