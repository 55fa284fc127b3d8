package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/testfs"
)

// fillDisk writes a file that takes every byte the file system holding dir
// has left, and returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	for len(chunk) > 1 { // the last blocks
		chunk = chunk[:len(chunk)/2]
		f.Write(chunk)
	}
	return path
}

// TestWritesOnAFullDisk: on a disk filled by something else (the store is
// not yet known to be full, and its WAL has no slack), the writes that
// free space or let batches end still commit, with the reserve: a
// canceled batch's outcomes (without which it never ends, so it can never
// be deleted), heartbeats (whose lapse would send running requests
// again), cancel and delete. Creates are refused with store.ErrFull.
func TestWritesOnAFullDisk(t *testing.T) {
	t.Parallel()
	now := time.Unix(1e9, 0)
	const owner = "worker_1"
	tests := []struct {
		name  string
		write func(ctx context.Context, s *Store, b *store.Batch, claimed []store.ClaimedRequest) error
		check func(t *testing.T, s *Store, b *store.Batch)
	}{
		{"outcomes of a canceled batch", func(ctx context.Context, s *Store, b *store.Batch, claimed []store.ClaimedRequest) error {
			var os []store.Outcome
			for _, c := range claimed {
				os = append(os, store.Outcome{RequestID: c.ID, BatchSeq: c.BatchSeq, CustomID: c.CustomID, Attempt: c.Attempt, ResultType: store.ResultCanceled})
			}
			_, err := s.RequestsComplete(ctx, store.RequestsCompleteParams{Owner: owner, Now: now, Outcomes: os})
			return err
		}, func(t *testing.T, s *Store, b *store.Batch) {
			got, err := s.BatchGet(context.Background(), store.BatchGetParams{Workspace: "w", ID: b.ID})
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != store.StatusEnded || got.Counts.Canceled != got.Total {
				t.Errorf("batch %s with %+v, want ended, all canceled", got.Status, got.Counts)
			}
		}},
		{"heartbeat", func(ctx context.Context, s *Store, _ *store.Batch, _ []store.ClaimedRequest) error {
			return s.RequestsHeartbeat(ctx, store.RequestsHeartbeatParams{Owner: owner, LeaseUntil: now.Add(time.Hour)})
		}, nil},
		{"cancel", func(ctx context.Context, s *Store, b *store.Batch, _ []store.ClaimedRequest) error {
			_, err := s.BatchCancel(ctx, store.BatchCancelParams{Workspace: "w", ID: b.ID, Now: now})
			return err
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dir := testfs.Tmpfs(t, 16)
			s, err := OpenWith(ctx, filepath.Join(dir, "batchd.db"), Options{Reserve: 2 << 20})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			b := newBatch(t, s, "msgbatch_1", 8)
			claimed, err := s.RequestsClaim(ctx, store.RequestsClaimParams{Backend: "sim", Owner: owner, Limit: 8, Now: now, LeaseUntil: now.Add(time.Minute)})
			if err != nil || len(claimed) != 8 {
				t.Fatalf("claim: %d, %v", len(claimed), err)
			}
			if tt.name != "cancel" {
				if _, err := s.BatchCancel(ctx, store.BatchCancelParams{Workspace: "w", ID: b.ID, Now: now}); err != nil {
					t.Fatal(err)
				}
			}
			// An empty WAL: every write needs new blocks.
			if _, err := s.w.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
				t.Fatal(err)
			}
			filler := fillDisk(t, dir)

			if err := tt.write(ctx, s, b, claimed); err != nil {
				t.Fatalf("on a full disk: %v", err)
			}
			if tt.check != nil {
				tt.check(t, s, b)
			}
			if _, err := s.BatchInsert(ctx, store.BatchInsertParams{ID: "msgbatch_2", Workspace: "w", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); !errors.Is(err, store.ErrFull) {
				t.Errorf("create on a full disk: %v, want store.ErrFull", err)
			}
			// Once the disk has room again, the store puts its reserve
			// back and takes creates again.
			os.Remove(filler)
			deadline := time.Now().Add(time.Minute)
			for s.space.isFull() {
				if time.Now().After(deadline) {
					t.Fatal("still full a minute after the disk was freed")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if _, err := os.Stat(s.space.path); err != nil {
				t.Errorf("reserve not put back: %v", err)
			}
			newBatch(t, s, "msgbatch_3", 1)
		})
	}
}

// newBatch creates and publishes a batch of n small requests on backend
// "sim".
func newBatch(t *testing.T, s *Store, id string, n int) *store.Batch {
	t.Helper()
	ctx := context.Background()
	now := time.Unix(1e9, 0)
	b, err := s.BatchInsert(ctx, store.BatchInsertParams{ID: id, Workspace: "w", CreatedAt: now, ExpiresAt: now.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	var reqs []store.NewRequest
	for i := range n {
		reqs = append(reqs, store.NewRequest{CustomID: fmt.Sprint("r", i), Params: []byte(`{"model":"m","max_tokens":1,"messages":[]}`), Model: "m", Backend: "sim"})
	}
	if err := s.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: b.Seq, Requests: reqs}); err != nil {
		t.Fatal(err)
	}
	if b, err = s.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: b.Seq, Total: int64(n)}); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFullDiskRecoversByDeleting: a disk filled while the WAL holds a large
// batch that was never copied into the database file (a reader pinned
// it), and freed only by deleting that batch through the store. Before,
// the background checkpoint ran first and copied the batch's pages into
// the file, growing it into the room the released reserve had given the
// deletes, and failed half way: the vacuum then had no WAL room, the WAL
// could not be emptied, and the store stayed full for good. Now the
// vacuum runs first and the checkpoint only once it cannot run out of
// room, so the space comes back and so do creates.
func TestFullDiskRecoversByDeleting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := testfs.Tmpfs(t, 48)
	path := filepath.Join(dir, "batchd.db")
	s, err := OpenWith(ctx, path, Options{Reserve: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	newBatch(t, s, "msgbatch_0", 1)

	// A reader on an older snapshot keeps every checkpoint from copying
	// what follows into the database file.
	pin, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer pin.Close()
	ptx, err := pin.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := ptx.QueryRowContext(ctx, `SELECT count(*) FROM batches`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1e9, 0)
	big, err := s.BatchInsert(ctx, store.BatchInsertParams{ID: "msgbatch_big", Workspace: "w", CreatedAt: now, ExpiresAt: now.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	params := []byte(`{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"` + strings.Repeat("x", 64<<10) + `"}]}`)
	var reqs []store.NewRequest
	for i := range 320 { // 20 MiB
		reqs = append(reqs, store.NewRequest{CustomID: fmt.Sprint("r", i), Params: params, Model: "m", Backend: "sim"})
	}
	if err := s.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: big.Seq, Requests: reqs}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: big.Seq, Total: int64(len(reqs))}); err != nil {
		t.Fatal(err)
	}
	fillDisk(t, dir) // left in place: only the delete may free room
	ptx.Rollback()
	state := func() string {
		return fmt.Sprintf("full %v, %d free pages; db %d KiB, WAL %d KiB, reserve %d KiB",
			s.space.isFull(), s.freePages(ctx), fileSize(path)>>10, fileSize(path+"-wal")>>10, fileSize(s.space.path)>>10)
	}
	t.Logf("filled: %s", state())

	if _, err := s.BatchCancel(ctx, store.BatchCancelParams{Workspace: "w", ID: big.ID, Now: now}); err != nil {
		t.Fatalf("cancel on the full disk: %v (%s)", err, state())
	}
	if err := s.BatchDelete(ctx, store.BatchGetParams{Workspace: "w", ID: big.ID}); err != nil {
		t.Fatalf("delete on the full disk: %v (%s)", err, state())
	}
	l, err := s.LeaderAcquire(ctx, store.LeaderAcquireParams{Name: store.LeaderChores, Owner: "test", Now: now, Until: now.Add(time.Hour)})
	if err != nil {
		t.Fatalf("lead on the full disk: %v (%s)", err, state())
	}
	lead := store.Lead{Name: l.Name, Owner: l.Owner, Term: l.Term}
	for {
		n, err := s.RequestsPurge(ctx, store.RequestsPurgeParams{Limit: 1000, Now: now, Lead: lead})
		if err != nil {
			t.Fatalf("purge on the full disk: %v (%s)", err, state())
		}
		if n == 0 {
			break
		}
	}
	t.Logf("deleted: %s", state())
	deadline := time.Now().Add(time.Minute)
	for s.space.isFull() || fileSize(path)+fileSize(path+"-wal") > 4<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("space not given back a minute after the delete: %s", state())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("recovered: %s", state())
	newBatch(t, s, "msgbatch_after", 1)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
