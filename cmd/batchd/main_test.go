package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binPath is the batchd binary built once for every test of this package:
// these tests run the real `batchd serve` process, as users do.
var binPath string

func TestMain(m *testing.M) {
	if os.Getenv("BATCHD_FAKE_UPSTREAM") != "" {
		// Re-executed by a benchmark as a zero-latency upstream in a
		// process of its own, so its CPU is not counted as batchd's.
		serveFakeUpstream()
		return
	}
	dir, err := os.MkdirTemp("", "batchd-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "batchd")
	build := exec.Command("go", "build", "-o", binPath, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build batchd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running `batchd serve`.
type proc struct {
	cmd  *exec.Cmd
	URL  string
	mu   sync.Mutex // guards logs, written by the reading goroutine
	logs *strings.Builder
	done chan struct{}
}

var listenRE = regexp.MustCompile(`batchd listening.*url=(http://\S+)`)

// startServe runs `batchd serve` on a free port with extra flags and waits
// until it is listening.
func startServe(tb testing.TB, dataDir string, flags ...string) *proc {
	tb.Helper()
	return startServeEnv(tb, dataDir, nil, flags...)
}

// startServeEnv is startServe with variables (KEY=value) added to the
// environment the process inherits.
func startServeEnv(tb testing.TB, dataDir string, env []string, flags ...string) *proc {
	tb.Helper()
	args := append([]string{"serve", "--addr", "127.0.0.1:0", "--data-dir", dataDir}, flags...)
	cmd := exec.Command(binPath, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &proc{cmd: cmd, logs: &strings.Builder{}, done: make(chan struct{})}
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logs.WriteString(line + "\n")
			p.mu.Unlock()
			if m := listenRE.FindStringSubmatch(line); m != nil {
				urlc <- m[1]
			}
		}
		cmd.Wait()
		close(p.done)
	}()
	select {
	case p.URL = <-urlc:
	case <-p.done:
		tb.Fatalf("batchd serve exited before listening:\n%s", p.Logs())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		tb.Fatal("batchd serve did not start listening")
	}
	tb.Cleanup(func() { p.kill(syscall.SIGKILL) })
	return p
}

// Logs is what the process has written to stderr so far.
func (p *proc) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

func (p *proc) kill(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(sig)
	<-p.done
}

// batchJSON is the part of a MessageBatch these tests read.
type batchJSON struct {
	ID               string    `json:"id"`
	ProcessingStatus string    `json:"processing_status"`
	CreatedAt        time.Time `json:"created_at"`
	EndedAt          time.Time `json:"ended_at"`
	RequestCounts    struct {
		Processing, Succeeded, Errored, Canceled, Expired int64
	} `json:"request_counts"`
}

func getBatch(tb testing.TB, url, id string) batchJSON {
	tb.Helper()
	return getBatchKey(tb, url, "", id)
}

// apiRequest is a request to the server with key as its x-api-key (none
// when empty, for a server in open mode).
func apiRequest(tb testing.TB, method, url, key string, body io.Reader) *http.Response {
	tb.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		tb.Fatal(err)
	}
	if key != "" {
		req.Header.Set("x-api-key", key)
	}
	if body != nil {
		req.Header.Set("content-type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	return res
}

func getBatchKey(tb testing.TB, url, key, id string) batchJSON {
	tb.Helper()
	res := apiRequest(tb, "GET", url+"/v1/messages/batches/"+id, key, nil)
	defer res.Body.Close()
	var b batchJSON
	if err := json.NewDecoder(res.Body).Decode(&b); err != nil {
		tb.Fatal(err)
	}
	return b
}

func createBatch(tb testing.TB, url string, body io.Reader) batchJSON {
	tb.Helper()
	return createBatchKey(tb, url, "", body)
}

func createBatchKey(tb testing.TB, url, key string, body io.Reader) batchJSON {
	tb.Helper()
	res := apiRequest(tb, "POST", url+"/v1/messages/batches", key, body)
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		tb.Fatalf("create: %d %s", res.StatusCode, raw)
	}
	var b batchJSON
	if err := json.Unmarshal(raw, &b); err != nil {
		tb.Fatal(err)
	}
	return b
}

// waitEnded polls until the batch ends.
func waitEnded(tb testing.TB, url, id string, timeout time.Duration) batchJSON {
	tb.Helper()
	return waitEndedEvery(tb, url, "", id, timeout, 5*time.Millisecond)
}

// waitEndedEvery polls every interval, as key, until the batch ends: a
// benchmark of the server's CPU per request polls seldom, so that its own
// GETs are not what it measures.
func waitEndedEvery(tb testing.TB, url, key, id string, timeout, every time.Duration) batchJSON {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b := getBatchKey(tb, url, key, id)
		if b.ProcessingStatus == "ended" {
			return b
		}
		if time.Now().After(deadline) {
			tb.Fatalf("batch %s not ended after %s: %+v", id, timeout, b)
		}
		time.Sleep(every)
	}
}

// bodyReader generates a create body of n requests lazily, so a 256 MiB
// body never sits in the test's memory either. text(i) is the user message
// of request i; pad adds filler to the message.
func bodyReader(n int, text func(i int) string) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriterSize(pw, 1<<20)
		bw.WriteString(`{"requests":[`)
		for i := range n {
			if i > 0 {
				bw.WriteByte(',')
			}
			msg, _ := json.Marshal(text(i))
			fmt.Fprintf(bw, `{"custom_id":"req-%d","params":{"model":"claude-sim","max_tokens":32,"messages":[{"role":"user","content":%s}]}}`, i, msg)
		}
		bw.WriteString(`]}`)
		pw.CloseWithError(bw.Flush())
	}()
	return pr
}

// results fetches a batch's results, returning custom_id → result types.
func results(tb testing.TB, url, id string) map[string][]string {
	tb.Helper()
	res, err := http.Get(url + "/v1/messages/batches/" + id + "/results")
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		raw, _ := io.ReadAll(res.Body)
		tb.Fatalf("results: %d %s", res.StatusCode, raw)
	}
	out := map[string][]string{}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var line struct {
			CustomID string `json:"custom_id"`
			Result   struct {
				Type string `json:"type"`
			} `json:"result"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			tb.Fatalf("results line %q: %v", sc.Text(), err)
		}
		out[line.CustomID] = append(out[line.CustomID], line.Result.Type)
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

var _ = context.Background
