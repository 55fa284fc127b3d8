package cli

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSubmitPrunesOldLocalCopies: local copies older than the retention
// period go on the next submit; younger ones and other files stay.
func TestSubmitPrunesOldLocalCopies(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	state := t.TempDir()
	dir := filepath.Join(state, "batches")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-localCopyMaxAge - time.Hour)
	young := time.Now().Add(-localCopyMaxAge + time.Hour)
	files := map[string]time.Time{
		"msgbatch_old.jsonl":   old,
		"msgbatch_young.jsonl": young,
		"notes.txt":            old,
	}
	for name, mtime := range files {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte("{}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := runCLI(t, `{"custom_id":"a","params":{}}`+"\n", "submit", "-", "--base-url", srv.URL(), "--state-dir", state); err != nil {
		t.Fatal(err)
	}
	for name, wantKept := range map[string]bool{"msgbatch_old.jsonl": false, "msgbatch_young.jsonl": true, "notes.txt": true} {
		_, err := os.Stat(filepath.Join(dir, name))
		if kept := err == nil; kept != wantKept {
			t.Errorf("%s kept = %v, want %v", name, kept, wantKept)
		}
	}
}

// TestSubmitUnreachableServer: submit says at once that it retries, and
// gives up with a message saying how long it tried.
func TestSubmitUnreachableServer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	_, stderr, err := runCLI(t, `{"custom_id":"a","params":{}}`+"\n", "submit", "-", "--base-url", url, "--state-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "giving up after 4 attempts") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("err = %v", err)
	}
	if !strings.Contains(stderr, "no answer from the server") || !strings.Contains(stderr, "retrying in 1s (attempt 2 of 4)") {
		t.Errorf("stderr = %q, want a line per resend", stderr)
	}
}
