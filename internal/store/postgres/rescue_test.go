package postgres_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/postgres/pgtest"
)

// TestRescueBesideCancel: a batch canceled while a rescue returns its lost
// request to pending (the rescue's transaction not yet committed) still
// ends, its request canceled. Before, the cancel settled the batch's
// pending requests without seeing the one the rescue was moving (it was
// still running to the cancel's snapshot) and the rescue then left it
// pending in a canceling batch: nothing claims those, no rescue looks at
// pending requests, and the batch stayed canceling until it expired.
func TestRescueBesideCancel(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := pgtest.NewStore(t)
	now := time.Now()
	b, err := st.BatchInsert(ctx, store.BatchInsertParams{ID: "msgbatch_rescue", Workspace: "w", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: b.Seq, Requests: []store.NewRequest{{CustomID: "r0", Params: json.RawMessage(`{}`)}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: b.Seq, Total: 1}); err != nil {
		t.Fatal(err)
	}
	// A process claims the request and dies: its lease lapses.
	if got, err := st.RequestsClaim(ctx, store.RequestsClaimParams{Owner: "dead", Limit: 1, Now: now, LeaseUntil: now.Add(time.Second)}); err != nil || len(got) != 1 {
		t.Fatalf("claim: %d claimed, %v", len(got), err)
	}
	// The rescue's move of a running task back to pending waits, inside
	// its transaction, for an advisory lock the test holds.
	key := rand.Int64()
	conn, err := pgx.Connect(ctx, pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, key); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE FUNCTION hold_rescue() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN PERFORM pg_advisory_xact_lock(` + jsonInt(key) + `); RETURN NEW; END $$`,
		`CREATE TRIGGER hold_rescue BEFORE UPDATE ON tasks FOR EACH ROW
			WHEN (OLD.state = 1 AND NEW.state = 0) EXECUTE FUNCTION hold_rescue()`,
	} {
		if _, err := st.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	rescued := make(chan error, 1)
	go func() {
		_, err := st.RequestsRescue(ctx, store.RequestsRescueParams{Now: now.Add(2 * time.Second)})
		rescued <- err
	}()
	waitAdvisoryWaiter(t, conn, key)
	canceled := make(chan error, 1)
	go func() {
		_, err := st.BatchCancel(ctx, store.BatchCancelParams{Workspace: "w", ID: b.ID, Now: now.Add(2 * time.Second)})
		canceled <- err
	}()
	// Let the cancel run as far as it goes (to its commit, or to a wait
	// for the rescue), then let the rescue go on.
	select {
	case err := <-canceled:
		canceled <- err
	case <-time.After(500 * time.Millisecond):
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, key); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []chan error{rescued, canceled} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the rescue or the cancel did not return")
		}
	}
	// A later sweep changes nothing either way.
	if _, err := st.RequestsRescue(ctx, store.RequestsRescueParams{Now: now.Add(3 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	got, err := st.BatchGet(ctx, store.BatchGetParams{Workspace: "w", ID: b.ID})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != store.StatusEnded || got.Counts != (store.Counts{Canceled: 1}) {
		t.Errorf("batch is %s with %+v, want ended with its request canceled", got.Status, got.Counts)
	}
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

// waitAdvisoryWaiter waits until some session waits for advisory lock key
// (a bigint key is split into two 32-bit halves in pg_locks).
func waitAdvisoryWaiter(t *testing.T, conn *pgx.Conn, key int64) {
	t.Helper()
	ctx := context.Background()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		var n int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1`, key).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the rescue never reached the held move")
		}
	}
}
