package main

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"
)

// invalidEvery makes every tenth request lack max_tokens: the dispatcher
// settles those itself, without a worker, which is what once raced the
// shutdown.
const invalidEvery = 10

// mixedBody is a create body of n requests of which every invalidEvery-th
// lacks max_tokens.
func mixedBody(n int) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriterSize(pw, 1<<20)
		bw.WriteString(`{"requests":[`)
		for i := range n {
			if i > 0 {
				bw.WriteByte(',')
			}
			maxTokens := `"max_tokens":16,`
			if i%invalidEvery == 0 {
				maxTokens = ""
			}
			fmt.Fprintf(bw, `{"custom_id":"req-%d","params":{"model":"claude-sim",%s"messages":[{"role":"user","content":"hi %d"}]}}`, i, maxTokens, i)
		}
		bw.WriteString(`]}`)
		pw.CloseWithError(bw.Flush())
	}()
	return pr
}

// TestSIGTERMWhileDispatching sends SIGTERM to a real `batchd serve` at
// several points of a fast batch (zero latency, a tenth of the requests
// invalid): every time the process exits 0 after a clean stop, and a
// restart on the same data dir gives every request exactly one result.
// Before, the completer could refill its slots after the shutdown closed
// the outcomes channel and the process died of "send on closed channel"
// (exit 2) in most runs.
func TestSIGTERMWhileDispatching(t *testing.T) {
	t.Parallel()
	const n = 20000
	// When to send SIGTERM: after this share of the results is written.
	// Points by progress rather than by time hold on a slow machine too.
	for _, share := range []float64{0, 0.02, 0.1, 0.3, 0.6} {
		t.Run(fmt.Sprintf("after %.0f percent", 100*share), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := startServe(t, dir)
			b := createBatch(t, p.URL, mixedBody(n))
			for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(2 * time.Millisecond) {
				got := getBatch(t, p.URL, b.ID)
				c := got.RequestCounts
				if float64(c.Succeeded+c.Errored) >= share*n || got.ProcessingStatus == "ended" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no progress: %+v", got)
				}
			}
			p.kill(syscall.SIGTERM)
			if code := p.cmd.ProcessState.ExitCode(); code != 0 || strings.Contains(p.Logs(), "panic") {
				t.Fatalf("batchd exited %d after SIGTERM:\n%s", code, tail(p.Logs(), 40))
			}
			if !strings.Contains(p.Logs(), "stopped") {
				t.Fatalf("no clean stop:\n%s", tail(p.Logs(), 40))
			}
			p2 := startServe(t, dir)
			end := waitEnded(t, p2.URL, b.ID, 2*time.Minute)
			if c := end.RequestCounts; c.Succeeded != n-n/invalidEvery || c.Errored != n/invalidEvery {
				t.Errorf("counts after restart %+v, want %d succeeded and %d errored", c, n-n/invalidEvery, n/invalidEvery)
			}
			res := results(t, p2.URL, b.ID)
			if len(res) != n {
				t.Errorf("%d results, want %d", len(res), n)
			}
			for id, types := range res {
				if len(types) != 1 {
					t.Errorf("%s has results %v, want exactly one", id, types)
				}
			}
		})
	}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
