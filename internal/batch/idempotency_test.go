package batch_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/batchd/batchd/internal/store"
)

// A create whose client went away just as it finished (the request's
// context ends) still records its Idempotency-Key: the client's resend gets
// the batch made, instead of a 429 for as long as the reservation holds and
// then a second batch.
func TestIdempotencyRecordedWhenClientLeaves(t *testing.T) {
	t.Parallel()
	svc, _ := newFaultService(t)
	ctx, cancel := context.WithCancel(context.Background())
	first, err := svc.Idempotent(ctx, "w", "key-1", strings.NewReader(body(2)), func(r io.Reader) (*store.Batch, error) {
		b, err := svc.Create(ctx, "w", nil, r)
		cancel() // the client disconnects as the batch is made
		return b, err
	})
	if err != nil {
		t.Fatal(err)
	}
	again, err := svc.Idempotent(context.Background(), "w", "key-1", strings.NewReader(body(2)), func(r io.Reader) (*store.Batch, error) {
		t.Error("the resend created a batch again")
		return svc.Create(context.Background(), "w", nil, r)
	})
	if err != nil || again.ID != first.ID {
		t.Fatalf("resend with the same key: %v, %v; want batch %s", again, err, first.ID)
	}
}
