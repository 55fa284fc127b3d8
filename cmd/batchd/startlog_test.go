package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestStartLogsBackendsNotKeys: at start `serve` logs each backend (name,
// kind, the route patterns that reach it, base URL, effective limits) and
// the routes in the order they are matched, so an operator can trust the
// configuration; the upstream key never appears, at any log level.
func TestStartLogsBackendsNotKeys(t *testing.T) {
	// Not parallel: it sets an environment variable for the child process.
	const secret = "sk-ant-api03-never-log-me-4c1f"
	t.Setenv("BATCHD_TEST_LOG_KEY", secret)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "batchd.toml")
	toml := `[[backends]]
name = "claude"
kind = "anthropic"
base_url = "http://127.0.0.1:9/upstream"
api_key_env = "BATCHD_TEST_LOG_KEY"
concurrency = 4
max_concurrency = 16
requests_per_minute = 600
input_tokens_per_minute = 100000
output_tokens_per_minute = 20000

[[backends]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "BATCHD_TEST_LOG_KEY"
concurrency = 2
fixed_concurrency = true

[[backends]]
name = "sim"
kind = "sim"
latency = "50ms"

[[routes]]
model = "claude-*"
backend = "claude"

[[routes]]
model = "gpt-*"
backend = "local"

[[routes]]
model = "claude-3*"
backend = "sim"

[[routes]]
model = "*"
backend = "sim"
`
	if err := os.WriteFile(cfg, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, filepath.Join(dir, "data"), "--config", cfg, "--log-level", "debug")
	logs := p.Logs()
	if strings.Contains(logs, secret) || strings.Contains(logs, "never-log-me") {
		t.Fatalf("the upstream key is in the log:\n%s", logs)
	}
	want := []string{
		`msg=backend name=claude kind=anthropic models=\[claude-\*\] base_url=http://127.0.0.1:9/upstream api_key_env=BATCHD_TEST_LOG_KEY concurrency=4 max_concurrency=16 adaptive=true requests_per_minute=600 input_tokens_per_minute=100000 output_tokens_per_minute=20000`,
		`msg=backend name=local kind=openai models=\[gpt-\*\] base_url=http://127.0.0.1:9/v1 api_key_env=BATCHD_TEST_LOG_KEY concurrency=2 max_concurrency=2 adaptive=false`,
		`msg=backend name=sim kind=sim models="\[claude-3\* \*\]" latency=50ms concurrency=\d+ max_concurrency=\d+ adaptive=false`,
		// The routes, in the order they are matched.
		`msg=route order=1 model=claude-\* backend=claude\n(.*\n)?.*msg=route order=2 model=gpt-\* backend=local\n(.*\n)?.*msg=route order=3 model=claude-3\* backend=sim\n(.*\n)?.*msg=route order=4 model=\* backend=sim`,
	}
	for _, re := range want {
		if !regexp.MustCompile(re).MatchString(logs) {
			t.Errorf("no match for %s in the start-up log:\n%s", re, logs)
		}
	}
}
