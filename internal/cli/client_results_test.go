package cli

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
)

// fixtureResults are one result of each type, as the server sends them.
var fixtureResults = []string{
	fakeResultLine("ok-1", "succeeded"),
	fakeResultLine("bad-1", "errored"),
	fakeResultLine("gone-1", "canceled"),
	fakeResultLine("late-1", "expired"),
}

func formatFixtures(t *testing.T, format string) string {
	t.Helper()
	var out bytes.Buffer
	f, err := newResultFormatter(format, &out)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range fixtureResults {
		var r anthropic.MessageBatchIndividualResponse
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if err := f.write(&r); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.flush(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func TestTextFormat(t *testing.T) {
	t.Parallel()
	want := "ok-1\tsucceeded\techo:\\tok-1\\nend\n" +
		"bad-1\terrored\tinvalid_request_error: bad, \"very\" bad\n" +
		"gone-1\tcanceled\t\n" +
		"late-1\texpired\t\n"
	if got := formatFixtures(t, "text"); got != want {
		t.Errorf("text:\n%q\nwant\n%q", got, want)
	}
}

func TestCSVFormat(t *testing.T) {
	t.Parallel()
	got := formatFixtures(t, "csv")
	rows, err := csv.NewReader(strings.NewReader(got)).ReadAll()
	if err != nil {
		t.Fatalf("%v:\n%s", err, got)
	}
	want := [][]string{
		csvHeader,
		{"ok-1", "succeeded", "end_turn", "11", "36", "echo:\tok-1\nend", "", ""},
		{"bad-1", "errored", "", "", "", "", "invalid_request_error", `bad, "very" bad`},
		{"gone-1", "canceled", "", "", "", "", "", ""},
		{"late-1", "expired", "", "", "", "", "", ""},
	}
	if len(rows) != len(want) {
		t.Fatalf("rows = %q", rows)
	}
	for i := range want {
		if strings.Join(rows[i], "|") != strings.Join(want[i], "|") {
			t.Errorf("row %d = %q, want %q", i, rows[i], want[i])
		}
	}

	var empty bytes.Buffer
	f := newCSVFormatter(&empty)
	if err := f.flush(); err != nil || empty.String() != strings.Join(csvHeader, ",")+"\n" {
		t.Errorf("no results: %q, %v; want just the header", empty.String(), err)
	}
}

func TestJSONLFormatKeepsRawLines(t *testing.T) {
	t.Parallel()
	if got, want := formatFixtures(t, "jsonl"), strings.Join(fixtureResults, "\n")+"\n"; got != want {
		t.Errorf("jsonl:\n%s\nwant\n%s", got, want)
	}
}

func TestResultsCommand(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	srv.outcome = func(id string) string {
		if id == "r2" {
			return "errored"
		}
		return "succeeded"
	}
	srv.pollsToEnd = 2
	in := `{"custom_id":"r1","params":{}}` + "\n" + `{"custom_id":"r2","params":{}}` + "\n"
	stdout, _, err := runCLI(t, in, "submit", "-", "--base-url", srv.URL(), "--state-dir", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(stdout)

	// Not ended: plain results fail, partial results stream what is done.
	for _, format := range []string{"jsonl", "csv"} {
		_, _, err := runCLI(t, "", "results", id, "--format", format, "--base-url", srv.URL())
		if err == nil || !strings.Contains(err.Error(), "--partial") || strings.Contains(err.Error(), "partial=true") {
			t.Errorf("results --format %s of a running batch: %v; want a hint at --partial", format, err)
		}
	}
	if _, _, err := runCLI(t, "", "status", id, "--base-url", srv.URL()); err != nil { // 1 of 2 polls
		t.Fatal(err)
	}
	out, _, err := runCLI(t, "", "results", id, "--partial", "--base-url", srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	if want := fakeResultLine("r1", "succeeded") + "\n"; out != want {
		t.Errorf("partial results = %q, want %q", out, want)
	}
	srv.mu.Lock()
	queries := append([]string(nil), srv.queries...)
	srv.mu.Unlock()
	if len(queries) != 3 || queries[0] != "" || queries[1] != "" || queries[2] != "partial=true" {
		t.Errorf("results queries = %q", queries)
	}

	if _, _, err := runCLI(t, "", "status", id, "--base-url", srv.URL()); err != nil { // ends it
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "out.csv")
	if out, _, err := runCLI(t, "", "results", id, "--format", "csv", "-o", file, "--base-url", srv.URL()); err != nil || out != "" {
		t.Fatalf("results -o: %q, %v", out, err)
	}
	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(got), "custom_id,result_type,") || !strings.Contains(string(got), "r2,errored,") {
		t.Errorf("csv file:\n%s", got)
	}
	entries, _ := os.ReadDir(filepath.Dir(file))
	if len(entries) != 1 {
		t.Errorf("temp files left next to the output: %v", entries)
	}

	if _, _, err := runCLI(t, "", "results", id, "--format", "xml", "--base-url", srv.URL()); err == nil {
		t.Error("unknown format: no error")
	}
}

func TestWriteFileAtomicKeepsOldFileOnError(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "out.jsonl")
	if err := os.WriteFile(path, []byte("old\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := writeFileAtomic(path, func(w io.Writer) error {
		_, _ = w.Write([]byte("half"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "old\n" {
		t.Errorf("file = %q after a failed write", got)
	}
	if err := writeFileAtomic(path, func(w io.Writer) error { _, err := w.Write([]byte("new\n")); return err }); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if got, _ := os.ReadFile(path); string(got) != "new\n" || fi.Mode().Perm() != 0o640 {
		t.Errorf("file = %q, mode %v; want new content, old mode", got, fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temp files left: %v", entries)
	}
}
