package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

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
