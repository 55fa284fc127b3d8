package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSanitizeCustomID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"abc-DEF_123", "abc-DEF_123"},
		{"a b/c.d", "a_b_c_d"},
		{"héllo", "h_llo"},
		{"", ""},
		{strings.Repeat("x", 70), strings.Repeat("x", 64)},
		{strings.Repeat("é", 70), strings.Repeat("_", 64)},
	} {
		if got := sanitizeCustomID(tc.in); got != tc.want {
			t.Errorf("sanitizeCustomID(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := sanitizeCustomID(tc.in); got != "" && !customIDPattern.MatchString(got) {
			t.Errorf("sanitizeCustomID(%q) = %q, not a valid custom_id", tc.in, got)
		}
	}
}

func TestDeriveCustomID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		record   string
		field    string
		required bool
		want     string
		wantErr  string
	}{
		{name: "StringID", record: `{"id":"doc 1"}`, field: "id", want: "doc_1"},
		{name: "BigNumberKeepsDigits", record: `{"id":12345678901234567890}`, field: "id", want: "12345678901234567890"},
		{name: "MissingFallsBackToLine", record: `{"text":"x"}`, field: "id", want: "req-7"},
		{name: "NullFallsBackToLine", record: `{"id":null}`, field: "id", want: "req-7"},
		{name: "EmptyFallsBackToLine", record: `{"id":""}`, field: "id", want: "req-7"},
		{name: "NotAnObject", record: `"just text"`, field: "id", want: "req-7"},
		{name: "OtherField", record: `{"id":"a","key":"k9"}`, field: "key", required: true, want: "k9"},
		{name: "RequiredMissing", record: `{"id":"a"}`, field: "key", required: true, wantErr: `no "key" field`},
		{name: "NotScalar", record: `{"id":{"x":1}}`, field: "id", wantErr: "not a string or a number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			record, err := decodeRecord([]byte(tc.record))
			if err != nil {
				t.Fatal(err)
			}
			got, err := deriveCustomID(record, tc.field, tc.required, 7)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestTemplateEncoder(t *testing.T) {
	t.Parallel()
	enc, err := newTemplateEncoder("Summarize: {{.text}} ({{.n}}) {{json .tags}}", "claude-x", 64, "id", false)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	id, err := enc.encode(&buf, 3, []byte(`{"id":"a/1","text":"<b>hi</b>\nthere","n":1e400,"tags":["x"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if id != "a_1" {
		t.Errorf("id = %q", id)
	}
	if bytes.Contains(buf.Bytes(), []byte("\n")) {
		t.Errorf("request is not one line: %s", buf.Bytes())
	}
	var req struct {
		CustomID string `json:"custom_id"`
		Params   struct {
			Model     string `json:"model"`
			MaxTokens int    `json:"max_tokens"`
			Messages  []struct {
				Role    string `json:"role"`
				Content []struct {
					Type string `json:"type"`
					Text string `json:"text"`
				} `json:"content"`
			} `json:"messages"`
		} `json:"params"`
	}
	if err := json.Unmarshal(buf.Bytes(), &req); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	if req.CustomID != "a_1" || req.Params.Model != "claude-x" || req.Params.MaxTokens != 64 {
		t.Errorf("request = %+v", req)
	}
	if len(req.Params.Messages) != 1 || req.Params.Messages[0].Role != "user" || len(req.Params.Messages[0].Content) != 1 {
		t.Fatalf("messages = %+v", req.Params.Messages)
	}
	if got, want := req.Params.Messages[0].Content[0].Text, "Summarize: <b>hi</b>\nthere (1e400) [\"x\"]"; got != want {
		t.Errorf("text = %q, want %q", got, want)
	}

	buf.Reset()
	if _, err := enc.encode(&buf, 4, []byte(`{"id":"b"}`)); err == nil || !strings.Contains(err.Error(), "text") {
		t.Errorf("missing template field: err = %v, want an error naming it", err)
	}
	if _, err := enc.encode(&buf, 5, []byte(`{"text":"a"} {"text":"b"}`)); err == nil {
		t.Error("two values on a line: no error")
	}
}

func TestRawEncoder(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	id, err := rawEncoder{}.encode(&buf, 1, []byte(`{ "custom_id": "r-1",  "params": {"model": "m", "extra_field": [1, 2]} }`))
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"custom_id":"r-1","params":{"model":"m","extra_field":[1,2]}}`; id != "r-1" || buf.String() != want {
		t.Errorf("got %q %s, want r-1 %s", id, buf.String(), want)
	}
	for line, wantErr := range map[string]string{
		`{"params":{}}`:                   "custom_id",
		`{"custom_id":"a b","params":{}}`: "does not match",
		`{"custom_id":"a","params":"x"}`:  "params",
		`{"custom_id":"a"}`:               "params",
		`[1,2]`:                           "not a request",
		`{"custom_id":"` + strings.Repeat("x", 65) + `","params":{}}`: "does not match",
	} {
		buf.Reset()
		if _, err := (rawEncoder{}).encode(&buf, 1, []byte(line)); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: err = %v, want %q", line, err, wantErr)
		}
	}
}

func TestReadLines(t *testing.T) {
	t.Parallel()
	in := "a\r\n\n  \nb\nc" // CRLF, blank lines, no final newline
	var got []string
	err := readLines(strings.NewReader(in), 100, func(n int, line []byte) error {
		got = append(got, fmt.Sprintf("%d:%s", n, line))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "1:a 4:b 5:c"; strings.Join(got, " ") != want {
		t.Errorf("got %v, want %s", got, want)
	}

	long := strings.Repeat("x", 200<<10) // longer than the reader's buffer
	err = readLines(strings.NewReader("ok\n"+long+"\n"), 100<<10, func(int, []byte) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("over-long line: err = %v", err)
	}
	n := 0
	err = readLines(strings.NewReader(long+"\n"), 300<<10, func(_ int, line []byte) error { n = len(line); return nil })
	if err != nil || n != len(long) {
		t.Errorf("long line: n = %d, err = %v", n, err)
	}
}

// readBody returns the create body of p as it would be sent.
func readBody(t *testing.T, p *pendingBatch) []byte {
	t.Helper()
	r, c, err := p.body()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkBody checks that p's body is exactly bodySize bytes and decodes to
// the wanted custom_ids.
func checkBody(t *testing.T, p *pendingBatch, wantIDs ...string) {
	t.Helper()
	body := readBody(t, p)
	if int64(len(body)) != p.bodySize() {
		t.Errorf("body is %d bytes, bodySize says %d", len(body), p.bodySize())
	}
	var req struct {
		Requests []fakeRequest `json:"requests"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, body)
	}
	var ids []string
	for _, r := range req.Requests {
		ids = append(ids, r.CustomID)
	}
	if strings.Join(ids, ",") != strings.Join(wantIDs, ",") {
		t.Errorf("custom_ids = %v, want %v", ids, wantIDs)
	}
}

func request(id string, pad int) []byte {
	return []byte(fmt.Sprintf(`{"custom_id":%q,"params":{"pad":%q}}`, id, strings.Repeat("p", pad)))
}

func TestSplitterMaxRequests(t *testing.T) {
	t.Parallel()
	sp := newSplitter(t.TempDir(), 2, defaultMaxBytes)
	defer sp.cleanup()
	for i := 1; i <= 5; i++ {
		if err := sp.add(i, fmt.Sprintf("r%d", i), request(fmt.Sprintf("r%d", i), 3)); err != nil {
			t.Fatal(err)
		}
	}
	batches, err := sp.finish()
	if err != nil {
		t.Fatal(err)
	}
	if len(batches) != 3 {
		t.Fatalf("%d batches, want 3", len(batches))
	}
	checkBody(t, batches[0], "r1", "r2")
	checkBody(t, batches[1], "r3", "r4")
	checkBody(t, batches[2], "r5")
	if b := batches[1]; b.firstLine != 3 || b.lastLine != 4 || b.requests != 2 {
		t.Errorf("batch 2: lines %d-%d, %d requests", b.firstLine, b.lastLine, b.requests)
	}
}

func TestSplitterMaxBytes(t *testing.T) {
	t.Parallel()
	one := int64(len(request("r1", 50)))
	// Room for exactly two requests: prefix + r + "," + r + suffix.
	maxBytes := int64(len(bodyPrefix)+len(bodySuffix)) + 2*one + 1
	sp := newSplitter(t.TempDir(), 1000, maxBytes)
	defer sp.cleanup()
	for i := 1; i <= 5; i++ {
		if err := sp.add(i, fmt.Sprintf("r%d", i), request(fmt.Sprintf("r%d", i), 50)); err != nil {
			t.Fatal(err)
		}
	}
	batches, err := sp.finish()
	if err != nil {
		t.Fatal(err)
	}
	if len(batches) != 3 {
		t.Fatalf("%d batches, want 3", len(batches))
	}
	checkBody(t, batches[0], "r1", "r2")
	checkBody(t, batches[2], "r5")
	for i, b := range batches {
		if b.bodySize() > maxBytes {
			t.Errorf("batch %d body is %d bytes, over %d", i, b.bodySize(), maxBytes)
		}
	}
	if batches[0].bodySize() != maxBytes {
		t.Errorf("batch 1 body is %d bytes, want exactly %d", batches[0].bodySize(), maxBytes)
	}

	// A request that cannot fit in any batch is an error, not an empty batch.
	if err := sp.add(6, "big", request("big", 200)); err == nil || !strings.Contains(err.Error(), "line 6") {
		t.Errorf("oversized request: err = %v", err)
	}
}

func TestSplitterDuplicateIDs(t *testing.T) {
	t.Parallel()
	sp := newSplitter(t.TempDir(), 2, defaultMaxBytes)
	defer sp.cleanup()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(sp.add(1, "a", request("a", 1)))
	if err := sp.add(2, "a", request("a", 1)); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("duplicate in a batch: err = %v", err)
	}
	must(sp.add(3, "b", request("b", 1)))
	// Batches are independent, so "a" may come back in the next one.
	must(sp.add(4, "a", request("a", 1)))
}

func TestSplitterCleanup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sp := newSplitter(dir, 1, defaultMaxBytes)
	for i := range 3 {
		if err := sp.add(i+1, fmt.Sprint(i), request(fmt.Sprint(i), 1)); err != nil {
			t.Fatal(err)
		}
	}
	batches, _ := sp.finish()
	batches[0].committed = true
	sp.cleanup()
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != filepath.Base(batches[0].path) {
		t.Errorf("left %v, want only the committed file", entries)
	}
}

func TestSubmitSplitsAndKeepsLocalCopies(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	state := t.TempDir()
	var input strings.Builder
	for i := 1; i <= 5; i++ {
		fmt.Fprintf(&input, "{\"custom_id\": \"r%d\", \"params\": {\"model\": \"m\", \"max_tokens\": 5, \"messages\": [{\"role\": \"user\", \"content\": \"hi %d\"}]}}\n\n", i, i)
	}
	file := filepath.Join(t.TempDir(), "in.jsonl")
	if err := os.WriteFile(file, []byte(input.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	stdout, stderr, err := runCLI(t, "", "submit", file, "--base-url", srv.URL(), "--state-dir", state, "--max-requests", "2")
	if err != nil {
		t.Fatalf("submit: %v\n%s", err, stderr)
	}
	creates := srv.createsSnapshot()
	if len(creates) != 3 {
		t.Fatalf("%d creates, want 3", len(creates))
	}
	var wantOut string
	for _, c := range creates {
		wantOut += c.id + "\n"
		if c.contentLength != int64(c.bodyLen) || len(c.transferEncoding) != 0 {
			t.Errorf("%s: Content-Length %d, body %d bytes, transfer encoding %v", c.id, c.contentLength, c.bodyLen, c.transferEncoding)
		}
		if c.contentType != "application/json" {
			t.Errorf("%s: Content-Type %q", c.id, c.contentType)
		}
		local, err := os.ReadFile(localCopyPath(state, c.id))
		if err != nil {
			t.Fatalf("local copy: %v", err)
		}
		var sent []string
		for _, r := range c.requests {
			b, _ := json.Marshal(r)
			sent = append(sent, string(b))
		}
		if got, want := string(local), strings.Join(sent, "\n")+"\n"; got != want {
			t.Errorf("local copy of %s:\n%s\nwant (as sent):\n%s", c.id, got, want)
		}
	}
	if stdout != wantOut {
		t.Errorf("stdout = %q, want only the IDs %q", stdout, wantOut)
	}
	if got := creates[2].requests; len(got) != 1 || got[0].CustomID != "r5" {
		t.Errorf("last batch = %+v", got)
	}
	entries, _ := os.ReadDir(filepath.Join(state, "batches"))
	if len(entries) != 3 {
		t.Errorf("state dir holds %d files, want the 3 local copies", len(entries))
	}
}

func TestSubmitTemplateFromStdin(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	in := `{"id":"doc 1","text":"alpha"}` + "\n" + `{"text":"beta"}` + "\n"
	stdout, stderr, err := runCLI(t, in, "submit", "-", "--base-url", srv.URL(), "--state-dir", t.TempDir(),
		"--template", "Summarize: {{.text}}", "--model", "claude-test", "--max-tokens", "100")
	if err != nil {
		t.Fatalf("submit: %v\n%s", err, stderr)
	}
	creates := srv.createsSnapshot()
	if len(creates) != 1 || stdout != creates[0].id+"\n" {
		t.Fatalf("stdout %q, creates %+v", stdout, creates)
	}
	reqs := creates[0].requests
	if len(reqs) != 2 || reqs[0].CustomID != "doc_1" || reqs[1].CustomID != "req-2" {
		t.Fatalf("requests = %+v", reqs)
	}
	if !strings.Contains(string(reqs[1].Params), `"Summarize: beta"`) || !strings.Contains(string(reqs[1].Params), `"model":"claude-test"`) {
		t.Errorf("params = %s", reqs[1].Params)
	}
}

func TestSubmitRejectsBadInputBeforeCreating(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	state := t.TempDir()
	in := `{"custom_id":"a","params":{}}` + "\n" + `{"custom_id":"b","params":{}}` + "\n" + `{"custom_id":"bad id","params":{}}` + "\n"
	stdout, _, err := runCLI(t, in, "submit", "-", "--base-url", srv.URL(), "--state-dir", state, "--max-requests", "1")
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("err = %v, want one about line 3", err)
	}
	if stdout != "" || len(srv.createsSnapshot()) != 0 {
		t.Errorf("created batches despite bad input: %q", stdout)
	}
	entries, _ := os.ReadDir(filepath.Join(state, "batches"))
	if len(entries) != 0 {
		t.Errorf("left pending files: %v", entries)
	}
}

func TestSubmitFlagChecks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--template", "{{.x}}"}, "needs --model and --max-tokens"},
		{[]string{"--template", "{{.x}}", "--model", "m"}, "needs --model and --max-tokens"},
		{[]string{"--model", "m"}, "--model only applies with --template"},
		{[]string{"--id-field", "k"}, "--id-field only applies with --template"},
		{[]string{"--template", "{{.x", "--model", "m", "--max-tokens", "5"}, "parse --template"},
		{[]string{"--max-requests", "0"}, "--max-requests"},
		{[]string{"--max-bytes", "3"}, "--max-bytes"},
		{[]string{"--wait", "--interval", "0s"}, "--interval"},
	} {
		args := append([]string{"submit", "-", "--base-url", "http://127.0.0.1:1", "--state-dir", t.TempDir()}, tc.args...)
		if _, _, err := runCLI(t, `{"custom_id":"a","params":{}}`+"\n", args...); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.wantErr)
		}
	}
	_, _, err := runCLI(t, "\n\n", "submit", "-", "--base-url", "http://127.0.0.1:1", "--state-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no requests") {
		t.Errorf("empty input: err = %v", err)
	}
}

func TestSubmitResendsAfter429(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	srv.throttleCreates = 2
	in := `{"custom_id":"a","params":{}}` + "\n" + `{"custom_id":"b","params":{}}` + "\n"
	stdout, stderr, err := runCLI(t, in, "submit", "-", "--base-url", srv.URL(), "--state-dir", t.TempDir())
	if err != nil {
		t.Fatalf("submit: %v\n%s", err, stderr)
	}
	creates := srv.createsSnapshot()
	if len(creates) != 1 || stdout != creates[0].id+"\n" || len(creates[0].requests) != 2 {
		t.Fatalf("stdout %q, creates %+v", stdout, creates)
	}
	if creates[0].contentLength != int64(creates[0].bodyLen) {
		t.Errorf("resent body: Content-Length %d, %d bytes", creates[0].contentLength, creates[0].bodyLen)
	}
	// Every attempt of one create carries the same Idempotency-Key, so a
	// server that did act on a lost attempt answers the resend with it.
	srv.mu.Lock()
	keys := append([]string(nil), srv.idemKeys...)
	srv.mu.Unlock()
	if len(keys) != 3 || keys[0] == "" || keys[1] != keys[0] || keys[2] != keys[0] {
		t.Fatalf("Idempotency-Keys of the three attempts: %q, want one key, the same each time", keys)
	}
	if _, stderr, err := runCLI(t, in, "submit", "-", "--base-url", srv.URL(), "--state-dir", t.TempDir()); err != nil {
		t.Fatalf("second submit: %v\n%s", err, stderr)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if last := srv.idemKeys[len(srv.idemKeys)-1]; last == "" || last == keys[0] {
		t.Fatalf("a new create reused key %q", last)
	}
}

func TestSweepPending(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	old, fresh, kept := filepath.Join(dir, ".pending-1.jsonl"), filepath.Join(dir, ".pending-2.jsonl"), filepath.Join(dir, "msgbatch_1.jsonl")
	for _, p := range []string{old, fresh, kept} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-48 * time.Hour)
	for _, p := range []string{old, kept} {
		if err := os.Chtimes(p, long, long); err != nil {
			t.Fatal(err)
		}
	}
	sweepPending(dir, time.Now().Add(-pendingMaxAge))
	for p, want := range map[string]bool{old: false, fresh: true, kept: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", filepath.Base(p), err == nil, want)
		}
	}
}
