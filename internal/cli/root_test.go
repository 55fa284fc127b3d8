package cli

import (
	"bytes"
	"strings"
	"testing"
)

func runRoot(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := NewRootCommand()
	var stdout, stderr bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	err := cmd.Execute()
	return stdout.String(), stderr.String(), err
}

func TestMissingArgumentIsNamed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"results"}, "missing ID"},
		{[]string{"wait"}, "missing ID"},
		{[]string{"submit"}, "missing FILE.jsonl"},
		{[]string{"keys", "revoke"}, "missing ID|PREFIX"},
		{[]string{"webhooks", "resend"}, "missing DELIVERY_ID"},
		{[]string{"webhooks", "recover"}, "missing ID"},
		{[]string{"status", "a", "b"}, `unexpected argument "b"`},
	} {
		_, _, err := runRoot(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("batchd %s: %v; want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

func TestVersionFlag(t *testing.T) {
	t.Parallel()
	out, _, err := runRoot(t, "--version")
	if err != nil || !strings.HasPrefix(out, "batchd ") || len(strings.TrimSpace(out)) <= len("batchd") {
		t.Errorf("--version: %q, %v", out, err)
	}
}

func TestOneRequestIsSingular(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	srv.outcome = func(string) string { return "errored" }
	_, stderr, err := runCLI(t, `{"custom_id":"a","params":{}}`+"\n", "submit", "-", "--wait", "--interval", "1ms", "--base-url", srv.URL(), "--state-dir", t.TempDir())
	for _, want := range []string{": 1 request (input", "ended: 1 request,"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q lacks %q", stderr, want)
		}
	}
	if err == nil || !strings.Contains(err.Error(), "1 of 1 request did not succeed") {
		t.Errorf("err = %v", err)
	}
}
