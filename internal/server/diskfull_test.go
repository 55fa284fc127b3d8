package server_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/server"
	"github.com/batchd/batchd/internal/testfs"
)

// freeBytes is what the file system holding dir has left.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// diskState is what a disk-full test logs at each step and when it gives
// up: the room left and the sizes of the database, its WAL and the reserve.
func diskState(t *testing.T, dir string) string {
	db := filepath.Join(dir, "batchd.db")
	return fmt.Sprintf("%d KiB free, db %d KiB, WAL %d KiB, reserve %d KiB",
		freeBytes(t, dir)>>10, fileSize(db)>>10, fileSize(db+"-wal")>>10, fileSize(db+"-reserve")>>10)
}

// TestDiskFull fills a small file system with creates: the create that
// does not fit is refused with 507 storage full in Anthropic's envelope,
// cancel works on the full disk and the canceled batch ends there (its
// claimed requests' results are written with the reserve), DELETE works,
// the space deletes free goes back to the file system, and creates work
// again with no restart.
func TestDiskFull(t *testing.T) {
	t.Parallel()
	dir := testfs.Tmpfs(t, 64)
	var logs bytes.Buffer
	var logMu sync.Mutex
	ts := newTestServer(t, withConfig(func(c *server.Config) {
		c.Logger = slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.DataDir = dir
		c.StorageReserve = 16 << 20
		c.Dispatch.Concurrency = 2
	}))
	db := filepath.Join(dir, "batchd.db")
	step := func(what string) { t.Logf("%s: %s", what, diskState(t, dir)) }
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				logMu.Lock()
				t.Logf("server log:\n%s", logs.String())
				logMu.Unlock()
				var stacks bytes.Buffer
				pprof.Lookup("goroutine").WriteTo(&stacks, 1)
				t.Logf("goroutines:\n%s", stacks.String())
				t.Fatalf("timed out waiting for %s: %s", what, diskState(t, dir))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Two batches that end while there is room, to delete later.
	prompt := strings.Repeat("x", 256<<10)
	var ended []string
	for i := range 2 {
		b := createRaw(t, ts.URL, createBody(t, nRequests(fmt.Sprintf("small%d", i), 16, prompt)...))
		waitEndedRaw(t, ts.URL, b.ID, time.Minute)
		ended = append(ended, b.ID)
	}
	// Both workers busy for the rest of the test, and a batch whose
	// requests are claimed ahead behind them, to cancel on the full disk.
	createRaw(t, ts.URL, createBody(t, nRequests("busy", 2, "[[sim latency=10m]] wait")...))
	long := createRaw(t, ts.URL, createBody(t, nRequests("long", 32, "queued")...))
	step("before filling")

	// Fill the disk with one create larger than it.
	full := do(t, "POST", ts.URL+"/v1/messages/batches", createBody(t, nRequests("huge", 320, prompt)...))
	wantError(t, full, http.StatusInsufficientStorage, "api_error", "storage full")
	fullSize := fileSize(db) + fileSize(db+"-wal")
	step("full")

	// Another create is refused the same way, never a 500: at once while
	// the store is full, or when it fills the disk again if the discarded
	// part of the first one has already given the room back.
	wantError(t, do(t, "POST", ts.URL+"/v1/messages/batches", createBody(t, nRequests("more", 320, prompt)...)),
		http.StatusInsufficientStorage, "api_error", "storage full")

	// Cancel works on the full disk, and the batch ends there.
	if r := do(t, "POST", ts.URL+"/v1/messages/batches/"+long.ID+"/cancel", nil); r.Status != http.StatusOK {
		t.Fatalf("cancel on a full disk: %d %s", r.Status, r.Body)
	}
	waitUntil("the canceled batch to end on the full disk", func() bool {
		return getRaw(t, ts.URL, long.ID).ProcessingStatus == "ended"
	})
	// The fair queue may have sent one or two of them before the busy
	// requests took both workers.
	if c := getRaw(t, ts.URL, long.ID).RequestCounts; c.Canceled == 0 || c.Canceled+c.Succeeded != 32 {
		t.Errorf("canceled batch counts %+v, want 32 canceled or succeeded before the cancel", c)
	}
	step("canceled")

	// DELETE works on the full disk.
	for _, id := range append(ended, long.ID) {
		if r := do(t, "DELETE", ts.URL+"/v1/messages/batches/"+id, nil); r.Status != http.StatusOK {
			t.Fatalf("delete on a full disk: %d %s", r.Status, r.Body)
		}
	}
	step("deleted")

	// The purge and the incremental vacuum give the space back to the file
	// system, and the WAL is cut back.
	waitUntil("the database and its WAL to shrink", func() bool {
		return fileSize(db)+fileSize(db+"-wal") < fullSize/2
	})
	step("shrunk")
	// Creates work again, with no restart.
	waitUntil("a create to succeed again", func() bool {
		r := do(t, "POST", ts.URL+"/v1/messages/batches", createBody(t, nRequests("after", 4, prompt)...))
		if r.Status == http.StatusOK {
			return true
		}
		wantError(t, r, http.StatusInsufficientStorage, "api_error", "storage full")
		return false
	})
	step("recovered")
}
