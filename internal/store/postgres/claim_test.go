package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/postgres/pgtest"
)

// TestClaimsDoNotCollide: a claim made while another claimer's transaction
// holds the rows it took (two processes claiming at once) takes the next
// pending requests, of every batch, instead of finding the same ones
// locked and leaving with none.
func TestClaimsDoNotCollide(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := pgtest.NewStore(t)
	now := time.Now()
	for b := range 2 {
		bt, err := st.BatchInsert(ctx, store.BatchInsertParams{ID: fmt.Sprint("msgbatch_", b), Workspace: "w", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		var reqs []store.NewRequest
		for i := range 50 {
			reqs = append(reqs, store.NewRequest{CustomID: fmt.Sprint("r", i), Params: json.RawMessage(`{}`)})
		}
		if err := st.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: bt.Seq, Requests: reqs}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: int64(len(reqs))}); err != nil {
			t.Fatal(err)
		}
	}
	claim := func(owner string) store.RequestsClaimParams {
		return store.RequestsClaimParams{Owner: owner, Limit: 10, Now: now, LeaseUntil: now.Add(time.Minute)}
	}
	held, release, err := st.ClaimHeld(ctx, claim("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	got, err := st.RequestsClaim(ctx, claim("b"))
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 10 || len(got) != 10 {
		t.Fatalf("claims of 10 with 100 pending got %d and %d", len(held), len(got))
	}
	seen := map[int64]bool{}
	perBatch := map[int64]int{}
	for _, c := range held {
		seen[c.ID] = true
	}
	for _, c := range got {
		if seen[c.ID] {
			t.Fatalf("request %d claimed twice", c.ID)
		}
		perBatch[c.BatchSeq]++
	}
	if len(perBatch) != 2 || slices.Min(slices.Collect(maps.Values(perBatch))) != 5 {
		t.Errorf("the second claim is not shared fairly between the batches: %v", perBatch)
	}
}
