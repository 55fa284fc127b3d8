package migrate_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/migrate"
	"github.com/batchd/batchd/internal/store/postgres/pgtest"
	"github.com/batchd/batchd/internal/store/sqlite"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)

// fill writes a bit of everything into st: batches with requests, running
// and settled ones, an endpoint with deliveries, a key, an idempotency key.
func fill(t *testing.T, st store.Store, batches, perBatch int) {
	t.Helper()
	ctx := context.Background()
	if err := st.WebhookEndpointCreate(ctx, &store.WebhookEndpoint{ID: "whep_1", Workspace: "w", URL: "https://a.example/hook",
		Secret: "v1:sealed", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	for i := range batches {
		bt, err := st.BatchInsert(ctx, store.BatchInsertParams{ID: fmt.Sprintf("msgbatch_%d", i), Workspace: "w", CreatedAt: t0, ExpiresAt: t0.Add(24 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		reqs := make([]store.NewRequest, perBatch)
		for j := range reqs {
			reqs[j] = store.NewRequest{CustomID: fmt.Sprint("r", j), Params: json.RawMessage(fmt.Sprintf(`{"model":"m","i":%d}`, j)), Model: "m", Backend: "sim"}
		}
		if err := st.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: bt.Seq, Requests: reqs}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: int64(perBatch)}); err != nil {
			t.Fatal(err)
		}
	}
	// Half of the requests settle; some are left running under a lease.
	claimed, err := st.RequestsClaim(ctx, store.RequestsClaimParams{Backend: "sim", Owner: "gone", Limit: batches * perBatch / 2, Now: t0, LeaseUntil: t0.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	var outs []store.Outcome
	for _, c := range claimed[:len(claimed)/2] {
		outs = append(outs, store.Outcome{RequestID: c.ID, BatchSeq: c.BatchSeq, CustomID: c.CustomID, Attempt: c.Attempt,
			ResultType: store.ResultSucceeded, Result: json.RawMessage(`{"type":"succeeded"}`)})
	}
	if _, err := st.RequestsComplete(ctx, store.RequestsCompleteParams{Owner: "gone", Now: t0, Outcomes: outs}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.EventTestInsert(ctx, "w", "whep_1", t0); err != nil {
		t.Fatal(err)
	}
	if _, err := st.KeyCreate(ctx, store.KeyCreateParams{ID: "key_1", Workspace: "w", Hash: "h1", Prefix: "sk-1", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.IdempotencyReserve(ctx, store.IdempotencyReserveParams{Workspace: "w", Key: "k1", Now: t0, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.WebhookKeyCheck(ctx, "v1:check"); err != nil {
		t.Fatal(err)
	}
}

func newSource(t *testing.T) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "batchd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestCopy: a copy carries every table over, verified; run again it
// changes nothing; ids drawn afterwards are new; a target holding other
// data is refused and left as it was.
func TestCopy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := newSource(t)
	fill(t, src, 5, 40)
	dst := pgtest.NewStore(t)

	var reports int
	rep, err := migrate.Copy(ctx, src, dst, migrate.Options{ProgressEvery: 50, Progress: func(migrate.Progress) { reports++ }})
	if err != nil {
		t.Fatal(err)
	}
	if rep.AlreadyCopied || rep.Rows == 0 || reports == 0 {
		t.Fatalf("first copy: %+v, %d progress reports", rep, reports)
	}
	byName := map[string]int64{}
	for _, tr := range rep.Tables {
		byName[tr.Name] = tr.Rows
	}
	for table, want := range map[string]int64{"batches": 5, "requests": 200, "results": 50, "tasks": 150, "webhook_endpoints": 1,
		"events": 6, "deliveries": 6, "api_keys": 1, "idempotency_keys": 1, "webhook_key_check": 1} {
		if byName[table] != want {
			t.Errorf("%s: copied %d rows, want %d", table, byName[table], want)
		}
	}
	if _, ok := byName["leaders"]; ok {
		t.Error("leader leases were copied")
	}

	again, err := migrate.Copy(ctx, src, dst, migrate.Options{})
	if err != nil || !again.AlreadyCopied {
		t.Fatalf("second copy: %+v %v", again, err)
	}

	// The target works on the copy: the running requests' leases lapsed,
	// so they are rescued at once; a new batch gets a seq never used.
	got, err := dst.BatchGet(ctx, store.BatchGetParams{Workspace: "w", ID: "msgbatch_4"})
	if err != nil || got.Total != 40 {
		t.Fatalf("copied batch: %+v %v", got, err)
	}
	if _, err := dst.RequestsRescue(ctx, store.RequestsRescueParams{Now: t0}); err != nil {
		t.Fatal(err)
	}
	if due, err := dst.RequestNextDue(ctx, "sim"); err != nil || due.IsZero() {
		t.Fatalf("the copied running requests were not rescued: %v %v", due, err)
	}
	bt, err := dst.BatchInsert(ctx, store.BatchInsertParams{ID: "msgbatch_new", Workspace: "w", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	if err != nil || bt.Seq <= 5 {
		t.Fatalf("new batch after the copy: %+v %v", bt, err)
	}
	if _, err := dst.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: bt.Seq}); err != nil {
		t.Fatal(err)
	}
	if ws, err := dst.KeyLookup(ctx, "h1"); err != nil || ws != "w" {
		t.Fatalf("copied key: %q %v", ws, err)
	}

	// Now the target holds more than the source: refused, unchanged.
	_, err = migrate.Copy(ctx, src, dst, migrate.Options{})
	if !errors.Is(err, migrate.ErrNotEmpty) || !strings.Contains(err.Error(), "batches: 6 rows") {
		t.Fatalf("copy into a target with other data: %v", err)
	}
	if _, err := dst.BatchGet(ctx, store.BatchGetParams{Workspace: "w", ID: "msgbatch_new"}); err != nil {
		t.Fatalf("the refused copy changed the target: %v", err)
	}
}

// TestCopyIntoStartedTarget: a server that started on the empty target
// (a leader lease, its key check) does not make it "other data".
func TestCopyIntoStartedTarget(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := newSource(t)
	fill(t, src, 1, 3)
	dst := pgtest.NewStore(t)
	if _, err := dst.WebhookKeyCheck(ctx, "v1:another"); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.LeaderAcquire(ctx, store.LeaderAcquireParams{Name: store.LeaderChores, Owner: "o", Now: t0, Until: t0.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if _, err := migrate.Copy(ctx, src, dst, migrate.Options{}); err != nil {
		t.Fatal(err)
	}
	if got, err := dst.WebhookKeyCheck(ctx, "v1:x"); err != nil || got[0] != "v1:check" {
		t.Fatalf("key check after the copy: %q %v", got, err)
	}
}

// TestCopyRefusesLiveTarget: a server running on the target (its leader
// lease live) makes the copy refuse rather than pull its state away.
func TestCopyRefusesLiveTarget(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := newSource(t)
	fill(t, src, 1, 3)
	dst := pgtest.NewStore(t)
	now := time.Now()
	if _, err := dst.LeaderAcquire(ctx, store.LeaderAcquireParams{Name: store.LeaderChores, Owner: "live", Now: now, Until: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := migrate.Copy(ctx, src, dst, migrate.Options{}); err == nil || !strings.Contains(err.Error(), "process live leads") {
		t.Fatalf("copy beside a live server: %v", err)
	}
	if l, err := dst.LeaderAcquire(ctx, store.LeaderAcquireParams{Name: store.LeaderChores, Owner: "other", Now: now, Until: now.Add(time.Hour)}); err != nil || l.Owner != "live" {
		t.Fatalf("the refused copy touched the lease: %+v %v", l, err)
	}
}
