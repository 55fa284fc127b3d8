package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSubmitEstimate: --estimate prints the cost range and what would be
// rejected; off a terminal it submits only with --yes.
func TestSubmitEstimate(t *testing.T) {
	t.Parallel()
	url := startRealServer(t, nil)
	in := filepath.Join(t.TempDir(), "in.jsonl")
	lines := `{"custom_id":"a","params":{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}}
{"custom_id":"b","params":{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"no max_tokens"}]}}
`
	if err := os.WriteFile(in, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	out, stderr, err := runCLI(t, "", "submit", in, "--estimate", "--base-url", url, "--state-dir", state)
	if err != nil {
		t.Fatalf("submit --estimate: %v %s", err, stderr)
	}
	for _, want := range []string{"estimate: 2 requests in 1 batch", "claude-sonnet-4-5", "cost: $", "1 request would end errored without running", "max_tokens: Field required (first: b)", "not submitted: pass --yes"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.TrimSpace(out) != "" {
		t.Errorf("a batch was created without --yes: %q", out)
	}
	out, stderr, err = runCLI(t, "", "submit", in, "--estimate", "--yes", "--base-url", url, "--state-dir", state)
	if err != nil || !strings.HasPrefix(strings.TrimSpace(out), "msgbatch_") || !strings.Contains(stderr, "estimate:") {
		t.Errorf("submit --estimate --yes: %v %q %s", err, out, stderr)
	}
}
