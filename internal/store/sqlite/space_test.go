package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/sqlite"
)

func size(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Deleting batches gives their space back to the file system (incremental
// vacuum), and the WAL is cut back after the burst.
func TestDeleteGivesSpaceBack(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "batchd.db")
	ctx := context.Background()
	st, err := sqlite.OpenWith(ctx, path, sqlite.Options{Reserve: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Unix(1e9, 0)
	params := `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"` + strings.Repeat("x", 64<<10) + `"}]}`
	var reqs []store.NewRequest
	for range 400 { // 25 MiB
		reqs = append(reqs, store.NewRequest{CustomID: "r", Params: []byte(params)})
	}
	b, err := st.BatchInsert(ctx, store.BatchInsertParams{ID: "msgbatch_1", Workspace: "w", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: b.Seq, Requests: reqs}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: b.Seq, Total: int64(len(reqs))}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.BatchCancel(ctx, store.BatchCancelParams{Workspace: "w", ID: b.ID, Now: now}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for size(path) < 20<<20 { // the checkpointer copies the WAL back
		if time.Now().After(deadline) {
			t.Fatalf("database never grew: %d", size(path))
		}
		time.Sleep(20 * time.Millisecond)
	}
	full := size(path)
	if err := st.BatchDelete(ctx, store.BatchGetParams{Workspace: "w", ID: b.ID}); err != nil {
		t.Fatal(err)
	}
	for {
		n, err := st.RequestsPurge(ctx, store.RequestsPurgeParams{Limit: 1000, Now: now, Lead: lead(t, st, now)})
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	deadline = time.Now().Add(time.Minute)
	for size(path) > full/4 || size(path+"-wal") > 1<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("space not given back: database %d (was %d), WAL %d", size(path), full, size(path+"-wal"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
