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

// TestGivingUpPassesTheSlotOn: waiters are admitted first come first
// served, one per freed slot; one that gives up while queued must not
// keep the next from the slot it would have had.
func TestGivingUpPassesTheSlotOn(t *testing.T) {
	t.Parallel()
	inner := &blocking{started: make(chan struct{}, 3), release: make(chan struct{})}
	l := New(inner, Limits{Concurrency: 1, Fixed: true})
	first := make(chan error, 1)
	go func() {
		_, err := l.Do(context.Background(), backend.Call{Params: json.RawMessage(`{}`)})
		first <- err
	}()
	<-inner.started
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := l.Do(ctx, backend.Call{Params: json.RawMessage(`{}`)})
		gaveUp <- err
	}()
	waitQueued(t, l, 1)
	third := make(chan error, 1)
	go func() {
		_, err := l.Do(context.Background(), backend.Call{Params: json.RawMessage(`{}`)})
		third <- err
	}()
	waitQueued(t, l, 2)
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("the call that gave up: %v", err)
	}
	close(inner.release)
	for _, c := range []chan error{first, third} {
		if err := <-c; err != nil {
			t.Fatalf("call: %v", err)
		}
	}
	if n := len(inner.started); n != 1 {
		t.Fatalf("%d more calls started, want the third only", n)
	}
}

// waitQueued waits until n calls are queued in l.
func waitQueued(t *testing.T, l *Limiter, n int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; {
		l.mu.Lock()
		got := len(l.queue)
		l.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls queued, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}
