package sqlite_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/sqlite"
	"github.com/batchd/batchd/internal/store/storetest"
)

// newStore is the one way tests get an isolated SQLite database: a fresh
// file in the test's temp dir.
func newStore(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "batchd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, newStore)
}

func TestReopenKeepsData(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "batchd.db")
	ctx := context.Background()
	st, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.KeyCreate(ctx, store.KeyCreateParams{ID: "key_1", Workspace: "w", Hash: "h", Prefix: "p"}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st, err = sqlite.Open(ctx, path) // migrations run again, idempotently
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if ws, err := st.KeyLookup(ctx, "h"); err != nil || ws != "w" {
		t.Fatalf("after reopen: %q %v", ws, err)
	}
}

// TestClaimReadsEachRequestsParams: every claimed request carries its own
// custom_id and params, whether the claim's ids run consecutively (read as
// a range of ids) or not (a batch still being created holds the ids in
// between).
func TestClaimReadsEachRequestsParams(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		batches   int
		published int
		each      int
		limit     int
	}{
		{"one batch, consecutive ids", 1, 1, 5, 5},
		{"one batch, first part", 1, 1, 5, 3},
		{"two batches, ids interleaved", 2, 2, 3, 4},
		{"three batches, every request", 3, 3, 2, 6},
		{"ids with gaps", 3, 2, 3, 6},
		{"one batch, ids with gaps", 2, 1, 4, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			st := newStore(t)
			now := time.Now()
			var seqs []int64
			for b := range tt.batches {
				bt, err := st.BatchInsert(ctx, store.BatchInsertParams{ID: fmt.Sprint("msgbatch_", b), Workspace: "w", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
				if err != nil {
					t.Fatal(err)
				}
				seqs = append(seqs, bt.Seq)
			}
			// One request of each batch in turn, so that a batch's ids
			// are not consecutive when there are several.
			for i := range tt.each {
				for b, seq := range seqs {
					id := fmt.Sprintf("b%d-r%d", b, i)
					req := store.NewRequest{CustomID: id, Params: json.RawMessage(`{"custom":"` + id + `"}`)}
					if err := st.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: seq, Requests: []store.NewRequest{req}}); err != nil {
						t.Fatal(err)
					}
				}
			}
			for _, seq := range seqs[:tt.published] {
				if _, err := st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: seq, Total: int64(tt.each)}); err != nil {
					t.Fatal(err)
				}
			}
			claimed, err := st.RequestsClaim(ctx, store.RequestsClaimParams{Owner: "o", Limit: tt.limit, Now: now, LeaseUntil: now.Add(time.Minute)})
			if err != nil {
				t.Fatal(err)
			}
			if len(claimed) != tt.limit {
				t.Fatalf("claimed %d, want %d", len(claimed), tt.limit)
			}
			for _, c := range claimed {
				if c.CustomID == "" || string(c.Params) != `{"custom":"`+c.CustomID+`"}` {
					t.Errorf("request %d: custom_id %q, params %s", c.ID, c.CustomID, c.Params)
				}
			}
		})
	}
}
