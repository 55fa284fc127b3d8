package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/sqlite"
)

// TestFilesArePrivate: the database and its WAL and shared-memory files are
// 0600 whether the store makes them or finds them readable by others.
func TestFilesArePrivate(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		existing os.FileMode // 0: no file before Open
	}{{"new", 0}, {"world-readable", 0o644}, {"group-writable", 0o664}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "batchd.db")
			if tt.existing != 0 {
				if err := os.WriteFile(path, nil, tt.existing); err != nil {
					t.Fatal(err)
				}
				os.Chmod(path, tt.existing) // past the umask
			}
			ctx := context.Background()
			st, err := sqlite.Open(ctx, path)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			// A write, so that the WAL and shared-memory files exist.
			if _, err := st.KeyCreate(ctx, store.KeyCreateParams{ID: "key_1", Workspace: "w", Hash: "h", Prefix: "p"}); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{path, path + "-wal", path + "-shm"} {
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if m := fi.Mode().Perm(); m != 0o600 {
					t.Errorf("%s: mode %#o, want 0600", filepath.Base(p), m)
				}
			}
		})
	}
}

// TestPathWithURIMetacharacters: a data dir whose path holds characters a
// file: URI gives meaning to opens that very path, and keeps its data.
func TestPathWithURIMetacharacters(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "100% sure?#x")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "batchd.db")
	ctx := context.Background()
	for i := range 2 {
		st, err := sqlite.Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			_, err = st.KeyCreate(ctx, store.KeyCreateParams{ID: "key_1", Workspace: "w", Hash: "h", Prefix: "p"})
		} else {
			var keys []*store.Key
			keys, err = st.KeyList(ctx)
			if err == nil && len(keys) != 1 {
				t.Fatalf("%d keys after reopening, want 1", len(keys))
			}
		}
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) == 0 {
		t.Fatal("nothing written in the directory itself")
	}
}
