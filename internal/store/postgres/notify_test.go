package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/postgres"
	"github.com/batchd/batchd/internal/store/postgres/pgtest"
)

// next is the next notification on ch, failing t after a generous wait.
func next(t *testing.T, ch <-chan store.Notification) store.Notification {
	t.Helper()
	select {
	case n, ok := <-ch:
		if !ok {
			t.Fatal("the listener's channel closed")
		}
		return n
	case <-time.After(30 * time.Second):
		t.Fatal("no notification")
	}
	return store.Notification{}
}

func listen(t *testing.T, st *postgres.Store) <-chan store.Notification {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := st.Listen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		for range ch { // closed once the listener is gone
		}
	})
	if n := next(t, ch); n.Kind != store.NotifyResync {
		t.Fatalf("first notification %+v, want resync", n)
	}
	return ch
}

// twoProcesses opens two stores on one new schema, as two processes of a
// cluster would.
func twoProcesses(t *testing.T) (a, b *postgres.Store) {
	t.Helper()
	url := pgtest.URL(t) + "&search_path=" + pgtest.Schema(t)
	open := func() *postgres.Store {
		st, err := postgres.Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	return open(), open()
}

func newBatch(t *testing.T, st store.Store, id string, requests int) *store.Batch {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	b, err := st.BatchInsert(ctx, store.BatchInsertParams{ID: id, Workspace: "w", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	reqs := make([]store.NewRequest, requests)
	for i := range reqs {
		reqs[i] = store.NewRequest{CustomID: string(rune('a' + i)), Params: []byte(`{}`)}
	}
	if err := st.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: b.Seq, Requests: reqs}); err != nil {
		t.Fatal(err)
	}
	if b, err = st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: b.Seq, Total: int64(requests)}); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNotifyOnCommit: a store's transitions notify a listener of another
// store on the same schema (another process) when they commit: published,
// canceling, ended, each with its batch.
func TestNotifyOnCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := twoProcesses(t)
	ch := listen(t, b)

	bt := newBatch(t, a, "msgbatch_1", 2)
	if n := next(t, ch); n.Kind != store.NotifyCreated || n.BatchSeq != bt.Seq {
		t.Fatalf("after publish: %+v, want created of %d", n, bt.Seq)
	}
	// Canceling a batch with nothing running ends it at once: both, in
	// commit order.
	if _, err := a.BatchCancel(ctx, store.BatchCancelParams{Workspace: "w", ID: bt.ID, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []store.NotifyKind{store.NotifyCanceled, store.NotifyEnded} {
		if n := next(t, ch); n.Kind != want || n.BatchSeq != bt.Seq {
			t.Fatalf("after cancel: %+v, want %s of %d", n, want, bt.Seq)
		}
	}
}

// TestNotifyNotOnRollback: a transition that rolls back notifies nobody;
// the next notification is the next commit's.
func TestNotifyNotOnRollback(t *testing.T) {
	t.Parallel()
	st := pgtest.NewStore(t)
	ch := listen(t, st)
	ctx := context.Background()
	first := newBatch(t, st, "msgbatch_1", 1)
	if n := next(t, ch); n.Kind != store.NotifyCreated || n.BatchSeq != first.Seq {
		t.Fatalf("%+v, want created of %d", n, first.Seq)
	}
	if err := st.RecordEventRolledBack(ctx, first, store.EventBatchCanceling); err != nil {
		t.Fatal(err)
	}
	second := newBatch(t, st, "msgbatch_2", 1)
	if n := next(t, ch); n.Kind != store.NotifyCreated || n.BatchSeq != second.Seq {
		t.Fatalf("after a rolled-back cancel and a publish: %+v, want created of %d", n, second.Seq)
	}
}

// TestNotifyOtherSchemaSilent: a cluster on another schema of the same
// database does not wake this one.
func TestNotifyOtherSchemaSilent(t *testing.T) {
	t.Parallel()
	st, other := pgtest.NewStore(t), pgtest.NewStore(t)
	ch := listen(t, st)
	newBatch(t, other, "msgbatch_other", 1)
	mine := newBatch(t, st, "msgbatch_mine", 1)
	if n := next(t, ch); n.BatchSeq != mine.Seq {
		t.Fatalf("%+v, want only this schema's created of %d", n, mine.Seq)
	}
}

// TestListenReconnects: the listener's connection is killed; it connects
// again, says so (resync, with the reason), and hears commits again.
func TestListenReconnects(t *testing.T) {
	t.Parallel()
	st := pgtest.NewStore(t)
	ch := listen(t, st)
	ctx := context.Background()
	if _, err := st.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE query = 'LISTEN "batchd_' || current_schema() || '"' AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	if n := next(t, ch); n.Kind != store.NotifyResync || n.Err == nil {
		t.Fatalf("after the kill: %+v, want resync with the reason", n)
	}
	bt := newBatch(t, st, "msgbatch_1", 1)
	if n := next(t, ch); n.Kind != store.NotifyCreated || n.BatchSeq != bt.Seq {
		t.Fatalf("after reconnecting: %+v, want created of %d", n, bt.Seq)
	}
}

// BenchmarkCancelHeard is how long a cancel committed through one store
// takes to reach the listener of another on the same schema (another
// process): the part of "a cancel stops every process within 1 s" that the
// database carries. It reports the time per cancel and its ratio to that
// second.
func BenchmarkCancelHeard(b *testing.B) {
	url := pgtest.URL(b) + "&search_path=" + pgtest.Schema(b)
	ctx := context.Background()
	open := func() *postgres.Store {
		st, err := postgres.Open(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		return st
	}
	a, other := open(), open()
	lctx, stop := context.WithCancel(ctx)
	ch, err := other.Listen(lctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stop()
		for range ch {
		}
	})
	wait := func(kind store.NotifyKind, seq int64) {
		for n := range ch {
			if n.Kind == kind && n.BatchSeq == seq {
				return
			}
		}
		b.Fatal("the listener stopped")
	}
	var heard time.Duration
	for i := 0; b.Loop(); i++ {
		bt, err := a.BatchInsert(ctx, store.BatchInsertParams{ID: fmt.Sprint("msgbatch_", i), Workspace: "w", CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
		if err != nil {
			b.Fatal(err)
		}
		if err := a.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: bt.Seq, Requests: []store.NewRequest{{CustomID: "r", Params: []byte(`{}`)}}}); err != nil {
			b.Fatal(err)
		}
		if _, err := a.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: 1}); err != nil {
			b.Fatal(err)
		}
		wait(store.NotifyCreated, bt.Seq)
		start := time.Now()
		if _, err := a.BatchCancel(ctx, store.BatchCancelParams{Workspace: "w", ID: bt.ID, Now: time.Now()}); err != nil {
			b.Fatal(err)
		}
		wait(store.NotifyCanceled, bt.Seq)
		heard += time.Since(start)
	}
	per := heard / time.Duration(b.N)
	b.ReportMetric(float64(per.Microseconds())/1000, "ms/cancel")
	b.ReportMetric(per.Seconds()/time.Second.Seconds(), "ratio_to_1s")
}

// TestNotifyDeliveryFreed: a delivery recorded while its endpoint has more
// deliveries due wakes the other processes' deliverers (before, one held
// back by the endpoint's cap waited for its next poll); with nothing more
// due it notifies nobody.
func TestNotifyDeliveryFreed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := twoProcesses(t)
	ch := listen(t, b)
	ep := &store.WebhookEndpoint{ID: "whep_1", Workspace: "w", URL: "https://one.example/", Secret: "s", CreatedAt: time.Now()}
	if err := a.WebhookEndpointCreate(ctx, ep); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // a message_batch.created delivery each
		bt := newBatch(t, a, fmt.Sprintf("msgbatch_%d", i), 1)
		if n := next(t, ch); n.Kind != store.NotifyCreated || n.BatchSeq != bt.Seq {
			t.Fatalf("after publish: %+v, want created of %d", n, bt.Seq)
		}
	}
	deliver := func() {
		t.Helper()
		now := time.Now()
		ds, err := a.DeliveriesClaim(ctx, store.DeliveriesClaimParams{Owner: "d", Limit: 10, PerEndpoint: 1, Now: now, LeaseUntil: now.Add(time.Minute)})
		if err != nil || len(ds) != 1 {
			t.Fatalf("claim: %d deliveries, %v; want 1", len(ds), err)
		}
		if err := a.DeliveryRecord(ctx, store.DeliveryRecordParams{ID: ds[0].ID, Owner: "d", Attempt: ds[0].Attempt, Now: time.Now(),
			Record: store.AttemptRecord{Status: 200}, State: store.DeliverySucceeded}); err != nil {
			t.Fatal(err)
		}
	}
	deliver()
	if n := next(t, ch); n.Kind != store.NotifyDelivery {
		t.Fatalf("after a delivery with another due: %+v, want delivery", n)
	}
	deliver()
	last := newBatch(t, a, "msgbatch_last", 1)
	if n := next(t, ch); n.Kind != store.NotifyCreated || n.BatchSeq != last.Seq {
		t.Fatalf("after the last delivery and a publish: %+v, want only created of %d", n, last.Seq)
	}
}
