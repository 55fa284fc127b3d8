package cli

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func TestStatusListCancelDelete(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	srv.pollsToEnd = 100
	state := t.TempDir()
	in := `{"custom_id":"a","params":{}}` + "\n" + `{"custom_id":"b","params":{}}` + "\n" + `{"custom_id":"c","params":{}}` + "\n"
	stdout, _, err := runCLI(t, in, "submit", "-", "--max-requests", "1", "--base-url", srv.URL(), "--state-dir", state)
	if err != nil {
		t.Fatal(err)
	}
	ids := strings.Fields(stdout)

	out, _, err := runCLI(t, "", "status", ids[0], "--base-url", srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	var batch map[string]any
	if err := json.Unmarshal([]byte(out), &batch); err != nil || batch["id"] != ids[0] || !strings.Contains(out, "\n  \"") {
		t.Errorf("status output (want pretty JSON): %v\n%s", err, out)
	}

	out, _, err = runCLI(t, "", "list", "--base-url", srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID ") || !strings.HasPrefix(lines[1], ids[2]+" ") {
		t.Fatalf("list:\n%s", out)
	}
	if f := strings.Fields(lines[3]); f[0] != ids[0] || f[1] != "in_progress" || f[2] != "1" || f[3] != "1" || !strings.HasPrefix(f[8], "2026-01-02T") {
		t.Errorf("row = %q", f)
	}

	// --limit pages through the server, one batch per page.
	out, _, err = runCLI(t, "", "list", "--limit", "2", "--json", "--base-url", srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"id":"`+ids[2]+`"`) || strings.Contains(lines[0], " ") {
		t.Errorf("list --json --limit 2:\n%s", out)
	}
	out, _, err = runCLI(t, "", "list", "--all", "--limit", "1", "--json", "--base-url", srv.URL())
	if err != nil || strings.Count(out, "\n") != 3 {
		t.Errorf("list --all: %v\n%s", err, out)
	}

	out, _, err = runCLI(t, "", "cancel", ids[1], "--base-url", srv.URL())
	if err != nil || !strings.Contains(out, `"processing_status": "ended"`) {
		t.Errorf("cancel: %v\n%s", err, out)
	}
	_, _, err = runCLI(t, "", "wait", ids[1], "--interval", "1ms", "--base-url", srv.URL())
	checkExitCode(t, err, 2) // canceled requests

	out, _, err = runCLI(t, "", "delete", ids[1], "--base-url", srv.URL(), "--state-dir", state)
	if err != nil || !strings.Contains(out, "message_batch_deleted") {
		t.Errorf("delete: %v\n%s", err, out)
	}
	if _, err := os.Stat(localCopyPath(state, ids[1])); !os.IsNotExist(err) {
		t.Errorf("local copy of a deleted batch: %v", err)
	}
	if _, err := os.Stat(localCopyPath(state, ids[0])); err != nil {
		t.Errorf("local copy of another batch: %v", err)
	}
	if _, _, err := runCLI(t, "", "status", ids[1], "--base-url", srv.URL()); apiStatus(err) != 404 {
		t.Errorf("status of a deleted batch: %v", err)
	}
}
