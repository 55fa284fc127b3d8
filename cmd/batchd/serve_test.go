package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func runBatchd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// TestServeOpenOnlyOnLoopback: with no key, the server runs open on
// loopback and says so, and refuses any other address.
func TestServeOpenOnlyOnLoopback(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, stderr, err := runBatchd(t, "serve", "--addr", "0.0.0.0:0", "--data-dir", dir)
	if err == nil || !strings.Contains(stderr, "refusing to listen on 0.0.0.0:0 without API keys") {
		t.Fatalf("want a refusal, got err=%v stderr=%s", err, stderr)
	}
	p := startServe(t, dir)
	if !strings.Contains(p.Logs(), "running open") {
		t.Fatalf("open mode not announced:\n%s", p.Logs())
	}
}

// TestKeysCommands: keys create prints only the key; the server then
// requires it; revoke makes it fail; with a key, any address may be used.
func TestKeysCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	stdout, _, err := runBatchd(t, "keys", "create", "--workspace", "team-a", "--data-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	key := strings.TrimSuffix(stdout, "\n")
	if strings.Count(stdout, "\n") != 1 || !strings.HasPrefix(key, "sk-batchd-") {
		t.Fatalf("keys create must print the key as its only line, got %q", stdout)
	}
	list, _, err := runBatchd(t, "keys", "list", "--data-dir", dir)
	if err != nil || !strings.Contains(list, "team-a") || strings.Contains(list, key) {
		t.Fatalf("keys list must show the key's workspace but never the key: %v\n%s", err, list)
	}
	// With a key, a non-loopback address is allowed: 0.0.0.0 binds loopback too.
	p := startServe(t, dir, "--addr", "0.0.0.0:0")
	url := strings.Replace(p.URL, "0.0.0.0", "127.0.0.1", 1)
	status := func(k string) int {
		req, _ := http.NewRequest("GET", url+"/v1/messages/batches", nil)
		req.Header.Set("x-api-key", k)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if got := status(key); got != 200 {
		t.Fatalf("the created key: %d", got)
	}
	if got := status("sk-batchd-wrong"); got != 401 {
		t.Fatalf("a wrong key: %d", got)
	}
	prefix := key[:len("sk-batchd-")+8]
	if _, stderr, err := runBatchd(t, "keys", "revoke", prefix, "--data-dir", dir); err != nil {
		t.Fatalf("revoke: %v %s", err, stderr)
	}
	if got := status(key); got != 401 {
		t.Fatalf("a revoked key: %d", got)
	}
	// No key is left, but the server started with keys on a public
	// address: it must not fall open. The span covers the server's key
	// cache (1 s) in which an open switch used to happen.
	time.Sleep(1500 * time.Millisecond)
	for _, k := range []string{"", "anything", key} {
		if got := status(k); got != 401 {
			t.Fatalf("with every key revoked, key %q: %d, want 401", k, got)
		}
	}
}

// TestGracefulShutdown: SIGTERM lets requests in flight finish and records
// their results, so after a restart nothing runs twice and nothing is lost.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := startServe(t, dir, "--concurrency", "4")
	const n = 12
	b := createBatch(t, p.URL, bodyReader(n, func(i int) string { return fmt.Sprintf("[[sim latency=300ms]] %d", i) }))
	deadline := time.Now().Add(20 * time.Second)
	for getBatch(t, p.URL, b.ID).RequestCounts.Succeeded < 4 {
		if time.Now().After(deadline) {
			t.Fatal("no progress")
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.kill(syscall.SIGTERM)
	if !strings.Contains(p.Logs(), "stopped") {
		t.Fatalf("no clean stop:\n%s", p.Logs())
	}
	p2 := startServe(t, dir, "--concurrency", "4")
	end := waitEnded(t, p2.URL, b.ID, 30*time.Second)
	if end.RequestCounts.Succeeded != n {
		t.Fatalf("counts %+v", end.RequestCounts)
	}
	for id, types := range results(t, p2.URL, b.ID) {
		if len(types) != 1 {
			t.Fatalf("%s has %d results", id, len(types))
		}
	}
}
