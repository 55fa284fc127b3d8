package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/batchd/batchd/internal/store/postgres/pgtest"
)

// sdkClient is the official Go SDK pointed at a batchd with an API key.
func sdkClient(url, key string) anthropic.Client {
	return anthropic.NewClient(option.WithoutEnvironmentDefaults(), option.WithBaseURL(url), option.WithAPIKey(key), option.WithMaxRetries(0))
}

func sdkReq(customID, prompt string) anthropic.MessageBatchNewParamsRequest {
	return anthropic.MessageBatchNewParamsRequest{
		CustomID: customID,
		Params: anthropic.MessageBatchNewParamsRequestParams{
			Model: "claude-sim", MaxTokens: 32,
			Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(prompt))},
		},
	}
}

// Prompts that put a request in each state on the simulator.
const (
	promptOK        = "hello"
	promptErrored   = "[[sim error=invalid_request_error]]"
	promptRetrying  = "[[sim fail=100]]" // transient (overloaded): retried after --retry-backoff (1h)
	promptInFlight  = "[[sim latency=1h]]"
	migrateBackoff  = "1h"
	migrateShutdown = "1s" // in-flight requests are abandoned to their leases
)

// keyed sends an API request with the key, returning status and body.
func keyed(t *testing.T, method, url, key, body string, header ...string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("x-api-key", key)
	req.Header.Set("content-type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	return res.StatusCode, raw
}

// snapshot is what a server shows of every batch: its JSON, and the
// results JSONL of the ended ones.
type snapshot struct {
	ids     []string // newest first, as listed
	batch   map[string]string
	results map[string]string
	status  map[string]string
}

func takeSnapshot(t *testing.T, c anthropic.Client, url, key string) snapshot {
	t.Helper()
	s := snapshot{batch: map[string]string{}, results: map[string]string{}, status: map[string]string{}}
	pager := c.Messages.Batches.ListAutoPaging(context.Background(), anthropic.MessageBatchListParams{Limit: anthropic.Int(2)})
	for pager.Next() {
		b := pager.Current()
		s.ids = append(s.ids, b.ID)
		got, err := c.Messages.Batches.Get(context.Background(), b.ID, anthropic.MessageBatchGetParams{})
		if err != nil {
			t.Fatal(err)
		}
		s.batch[b.ID], s.status[b.ID] = got.RawJSON(), string(got.ProcessingStatus)
		if got.ProcessingStatus == anthropic.MessageBatchProcessingStatusEnded {
			code, raw := keyed(t, "GET", url+"/v1/messages/batches/"+b.ID+"/results", key, "")
			if code != 200 {
				t.Fatalf("results of %s: %d %s", b.ID, code, raw)
			}
			s.results[b.ID] = string(raw)
			// The SDK reads them too.
			stream := c.Messages.Batches.ResultsStreaming(context.Background(), b.ID, anthropic.MessageBatchResultsParams{})
			n := 0
			for stream.Next() {
				n++
			}
			if err := stream.Err(); err != nil || n != int(got.RequestCounts.Succeeded+got.RequestCounts.Errored+got.RequestCounts.Canceled+got.RequestCounts.Expired) {
				t.Fatalf("SDK results of %s: %d lines, %v", b.ID, n, err)
			}
		}
	}
	if err := pager.Err(); err != nil {
		t.Fatal(err)
	}
	return s
}

func waitStatus(t *testing.T, c anthropic.Client, id string, ok func(*anthropic.MessageBatch) bool, what string) *anthropic.MessageBatch {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := c.Messages.Batches.Get(context.Background(), id, anthropic.MessageBatchGetParams{})
		if err != nil {
			t.Fatal(err)
		}
		if ok(b) {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch %s: %s: not after 30s: %s", id, what, b.RawJSON())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ended(b *anthropic.MessageBatch) bool {
	return b.ProcessingStatus == anthropic.MessageBatchProcessingStatusEnded
}

// TestMigrateToPostgres: a data dir holding batches in every state, made
// through the real server, is copied into PostgreSQL with `batchd migrate
// --from` (twice: the second run changes nothing), and a server on
// PostgreSQL with the data dir's webhook key then shows, through the
// official Go SDK, the same batches, counts and byte-identical results;
// the API key works, the webhook secret still signs, an idempotency key
// still answers, and a new batch gets an id never used before.
func TestMigrateToPostgres(t *testing.T) {
	t.Parallel()
	pgURL := pgtest.URL(t) + "&search_path=" + pgtest.Schema(t)
	dir := t.TempDir()
	stdout, stderr, err := runBatchd(t, "keys", "create", "--workspace", "w", "--data-dir", dir)
	if err != nil {
		t.Fatalf("keys create: %v %s", err, stderr)
	}
	key := strings.TrimSpace(stdout)
	rc := &hookReceiver{}
	recv := httptest.NewServer(rc)
	t.Cleanup(recv.Close)
	common := []string{"--webhook-allow-cidr", "127.0.0.0/8", "--public-url", "http://batchd.example", "--retry-backoff", migrateBackoff,
		"--shutdown-timeout", migrateShutdown}

	// First run: a batch that expires while its first request holds the
	// only slot, so that its second is never sent.
	p := startServe(t, dir, append(common, "--expire-after", "2s", "--concurrency", "1")...)
	c := sdkClient(p.URL, key)
	ctx := context.Background()
	code, raw := keyed(t, "POST", p.URL+"/v1/webhooks/endpoints", key, `{"url":"`+recv.URL+`","event_types":["message_batch.ended"]}`)
	if code != 200 {
		t.Fatalf("endpoint: %d %s", code, raw)
	}
	var ep struct{ ID, Secret string }
	json.Unmarshal(raw, &ep)
	expired, err := c.Messages.Batches.New(ctx, anthropic.MessageBatchNewParams{Requests: []anthropic.MessageBatchNewParamsRequest{
		sdkReq("slow", "[[sim latency=3s]]"), sdkReq("late", promptOK)}})
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, expired.ID, ended, "expire")
	p.kill(syscall.SIGTERM)

	// Second run: every other state.
	p = startServe(t, dir, common...)
	c = sdkClient(p.URL, key)
	newBatch := func(prompts ...string) *anthropic.MessageBatch {
		t.Helper()
		reqs := make([]anthropic.MessageBatchNewParamsRequest, len(prompts))
		for i, pr := range prompts {
			reqs[i] = sdkReq(fmt.Sprint("req-", i), pr)
		}
		b, err := c.Messages.Batches.New(ctx, anthropic.MessageBatchNewParams{Requests: reqs})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	inProgress := newBatch(promptInFlight, promptInFlight)
	// Canceling: canceled while its requests are in flight. The dispatcher
	// claims from older batches first, so once a batch made after it has
	// ended, its requests are in flight. A cancel that still came before
	// they were sent ends the batch at once: that one is deleted and
	// another made.
	var canceling *anthropic.MessageBatch
	for i := 0; canceling == nil; i++ {
		b := newBatch(promptInFlight, promptInFlight)
		waitStatus(t, c, newBatch(promptOK).ID, ended, "end")
		got, err := c.Messages.Batches.Cancel(ctx, b.ID, anthropic.MessageBatchCancelParams{})
		if err != nil {
			t.Fatal(err)
		}
		if got.ProcessingStatus == anthropic.MessageBatchProcessingStatusCanceling {
			canceling = got
			break
		}
		if i == 10 {
			t.Fatal("no cancel found requests in flight")
		}
		waitStatus(t, c, b.ID, ended, "end after cancel")
		if _, err := c.Messages.Batches.Delete(ctx, b.ID, anthropic.MessageBatchDeleteParams{}); err != nil {
			t.Fatal(err)
		}
	}
	code, raw = keyed(t, "POST", p.URL+"/v1/messages/batches", key,
		`{"requests":[{"custom_id":"a","params":{"model":"claude-sim","max_tokens":32,"messages":[{"role":"user","content":"hello"}]}},`+
			`{"custom_id":"b","params":{"model":"claude-sim","max_tokens":32,"messages":[{"role":"user","content":"`+promptErrored+`"}]}}]}`,
		"Idempotency-Key", "once")
	if code != 200 {
		t.Fatalf("idempotent create: %d %s", code, raw)
	}
	var mixed struct{ ID string }
	json.Unmarshal(raw, &mixed)
	waitStatus(t, c, mixed.ID, ended, "end")
	canceled := newBatch(promptOK, promptRetrying, promptRetrying)
	waitStatus(t, c, canceled.ID, func(b *anthropic.MessageBatch) bool { return b.RequestCounts.Succeeded == 1 }, "one success")
	if _, err := c.Messages.Batches.Cancel(ctx, canceled.ID, anthropic.MessageBatchCancelParams{}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, canceled.ID, ended, "end canceled")
	deleted := newBatch(promptOK)
	waitStatus(t, c, deleted.ID, ended, "end")
	if _, err := c.Messages.Batches.Delete(ctx, deleted.ID, anthropic.MessageBatchDeleteParams{}); err != nil {
		t.Fatal(err)
	}
	// Being retried: the retry of the canceled batch, whose requests fail
	// transiently and wait for their next attempt.
	code, raw = keyed(t, "POST", p.URL+"/v1/messages/batches/"+canceled.ID+"/retry", key, "")
	if code != 200 {
		t.Fatalf("retry: %d %s", code, raw)
	}
	var retried struct{ ID string }
	json.Unmarshal(raw, &retried)
	waitStatus(t, c, retried.ID, func(*anthropic.MessageBatch) bool { return true }, "")
	// Every ended batch's webhook has arrived before the server stops.
	for len(rc.received()) < 4 {
		if !waitHooks(rc, 4) {
			t.Fatalf("webhooks: %d of 4 arrived", len(rc.received()))
		}
	}
	before := takeSnapshot(t, c, p.URL, key)

	// The copy refuses while the server runs.
	if _, stderr, err := runBatchd(t, "migrate", "--from", dir, "--to", pgURL); err == nil || !strings.Contains(stderr, "another batchd serve is using it") {
		t.Fatalf("migrate beside a running server: %v %s", err, stderr)
	}
	p.kill(syscall.SIGTERM)

	stdout, stderr, err = runBatchd(t, "migrate", "--from", dir, "--to", pgURL)
	if err != nil || !strings.Contains(stdout, "each table verified") || !strings.Contains(stdout, "--webhook-key-file "+filepath.Join(dir, "webhook.key")) {
		t.Fatalf("migrate: %v\n%s\n%s", err, stdout, stderr)
	}
	stdout, stderr, err = runBatchd(t, "migrate", "--from", dir, "--to", pgURL)
	if err != nil || !strings.Contains(stdout, "nothing changed") {
		t.Fatalf("second migrate: %v\n%s\n%s", err, stdout, stderr)
	}
	if stdout, _, err := runBatchd(t, "migrate", "--status", "--database-url", pgURL); err != nil || !strings.Contains(stdout, " 0 pending") {
		t.Fatalf("migrate --status: %v %s", err, stdout)
	}

	// Without the key the PostgreSQL server refuses to start; with it, it
	// serves the copy.
	if _, stderr, err := runBatchd(t, append([]string{"serve", "--addr", "127.0.0.1:0", "--data-dir", t.TempDir(), "--database-url", pgURL}, common...)...); err == nil ||
		!strings.Contains(stderr, "--webhook-key-file") {
		t.Fatalf("serve on PostgreSQL without a key: %v %s", err, stderr)
	}
	hooksBefore := len(rc.received())
	pg := startServe(t, t.TempDir(), append(common, "--database-url", pgURL, "--webhook-key-file", filepath.Join(dir, "webhook.key"))...)
	c = sdkClient(pg.URL, key)
	after := takeSnapshot(t, c, pg.URL, key)
	if !slices.Equal(before.ids, after.ids) {
		t.Fatalf("batches listed:\n sqlite   %v\n postgres %v", before.ids, after.ids)
	}
	for _, id := range before.ids {
		if id == canceling.ID {
			continue // its requests' leases lapsed: it may end as soon as the server starts
		}
		if before.batch[id] != after.batch[id] {
			t.Errorf("batch %s:\n sqlite   %s\n postgres %s", id, before.batch[id], after.batch[id])
		}
		if before.results[id] != after.results[id] {
			t.Errorf("results of %s differ:\n sqlite   %q\n postgres %q", id, before.results[id], after.results[id])
		}
	}
	for id, want := range map[string]string{expired.ID: "ended", mixed.ID: "ended", canceled.ID: "ended", inProgress.ID: "in_progress", retried.ID: "in_progress"} {
		if after.status[id] != want {
			t.Errorf("batch %s is %s on PostgreSQL, want %s", id, after.status[id], want)
		}
	}
	if s := after.status[canceling.ID]; s != "canceling" && s != "ended" {
		t.Errorf("the canceling batch is %s", s)
	}
	for id, want := range map[string]string{expired.ID: `"expired":1`, mixed.ID: `"errored":1`, canceled.ID: `"canceled":2`} {
		if !strings.Contains(after.batch[id], want) {
			t.Errorf("batch %s has no %s: %s", id, want, after.batch[id])
		}
	}
	// The key is checked (not open mode), the idempotency key answers the
	// batch it made, and a new batch gets an id never used.
	if code, _ := keyed(t, "GET", pg.URL+"/v1/messages/batches", "sk-wrong", ""); code != 401 {
		t.Fatalf("a wrong key got %d", code)
	}
	code, raw = keyed(t, "POST", pg.URL+"/v1/messages/batches", key,
		`{"requests":[{"custom_id":"a","params":{"model":"claude-sim","max_tokens":32,"messages":[{"role":"user","content":"hello"}]}},`+
			`{"custom_id":"b","params":{"model":"claude-sim","max_tokens":32,"messages":[{"role":"user","content":"`+promptErrored+`"}]}}]}`,
		"Idempotency-Key", "once")
	if code != 200 || !strings.Contains(string(raw), mixed.ID) {
		t.Fatalf("idempotent create after the copy: %d %s, want %s", code, raw, mixed.ID)
	}
	fresh, err := c.Messages.Batches.New(ctx, anthropic.MessageBatchNewParams{Requests: []anthropic.MessageBatchNewParamsRequest{sdkReq("x", promptOK)}})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(before.ids, fresh.ID) || fresh.ID == deleted.ID {
		t.Fatalf("new batch %s reuses an id", fresh.ID)
	}
	waitStatus(t, c, fresh.ID, ended, "end")
	// The copied endpoint's secret, sealed under the data dir's key,
	// signs the new batch's webhook.
	wh, _ := standardwebhooks.NewWebhook(ep.Secret)
	signed := false
	for deadline := time.Now().Add(30 * time.Second); !signed && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, h := range rc.received()[hooksBefore:] {
			if strings.Contains(string(h.body), fresh.ID) {
				if err := wh.Verify(h.body, h.header); err != nil {
					t.Fatalf("webhook from PostgreSQL: %v %s", err, h.body)
				}
				signed = true
			}
		}
	}
	if !signed {
		t.Fatalf("no webhook of %s from the PostgreSQL server:\n%s", fresh.ID, pg.Logs())
	}
	if _, err := os.Stat(filepath.Join(dir, "batchd.db")); err != nil {
		t.Fatalf("the source was touched: %v", err)
	}
}

// waitHooks waits until rc has received n webhooks.
func waitHooks(rc *hookReceiver, n int) bool {
	deadline := time.Now().Add(30 * time.Second)
	for len(rc.received()) < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// TestServeWebhookKeyEnv: BATCHD_WEBHOOK_KEY gives serve its key; a key
// that cannot open the secrets already stored, or one that is not a key,
// is refused at start with a message naming the flag and the variable.
func TestServeWebhookKeyEnv(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	run := func(key string) (string, error) {
		cmd := exec.Command(binPath, "serve", "--addr", "127.0.0.1:0", "--data-dir", dir, "--shutdown-timeout", "1s")
		cmd.Env = append(os.Environ(), "BATCHD_WEBHOOK_KEY="+key)
		var logs syncBuffer
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			select {
			case err := <-done:
				return logs.String(), err
			default:
			}
			if strings.Contains(logs.String(), "batchd listening") {
				cmd.Process.Signal(syscall.SIGTERM)
				return logs.String(), <-done
			}
		}
		cmd.Process.Kill()
		t.Fatalf("serve neither listened nor exited:\n%s", logs.String())
		return "", nil
	}
	keyA := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{'a'}, 32))
	keyB := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{'b'}, 32))
	if logs, err := run(keyA); err != nil {
		t.Fatalf("first start with a key: %v\n%s", err, logs)
	}
	if logs, err := run(keyB); err == nil || !strings.Contains(logs, "cannot open the webhook secrets already stored") || !strings.Contains(logs, "--webhook-key-file") {
		t.Fatalf("another key: %v\n%s", err, logs)
	}
	if logs, err := run("not a key"); err == nil || !strings.Contains(logs, "BATCHD_WEBHOOK_KEY: parse key") {
		t.Fatalf("a bad key: %v\n%s", err, logs)
	}
	if logs, err := run(keyA); err != nil {
		t.Fatalf("the right key again: %v\n%s", err, logs)
	}
}

// syncBuffer is a bytes.Buffer safe for a process's writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMigrateSchemaCommand: `batchd migrate` applies a store's pending
// migrations and says so, reports them with --status without applying,
// and never creates an SQLite database that is not there.
func TestMigrateSchemaCommand(t *testing.T) {
	t.Parallel()
	pgURL := pgtest.URL(t) + "&search_path=" + pgtest.Schema(t)
	if stdout, _, err := runBatchd(t, "migrate", "--status", "--database-url", pgURL); err != nil || !strings.Contains(stdout, ": 0 applied") {
		t.Fatalf("status of an empty database: %v %s", err, stdout)
	}
	if stdout, _, err := runBatchd(t, "migrate", "--database-url", pgURL); err != nil || !strings.Contains(stdout, "applied 0001_init") || !strings.Contains(stdout, "is up to date") {
		t.Fatalf("migrate: %v %s", err, stdout)
	}
	if stdout, _, err := runBatchd(t, "migrate", "--database-url", pgURL); err != nil || strings.Contains(stdout, "applied 0") || !strings.Contains(stdout, "is up to date") {
		t.Fatalf("migrate again: %v %s", err, stdout)
	}
	dir := t.TempDir()
	if _, stderr, err := runBatchd(t, "migrate", "--data-dir", dir); err == nil || !strings.Contains(stderr, "no batchd database") {
		t.Fatalf("migrate of a missing SQLite database: %v %s", err, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "batchd.db")); err == nil {
		t.Fatal("migrate created a database")
	}
	if _, _, err := runBatchd(t, "keys", "create", "--workspace", "w", "--data-dir", dir); err != nil {
		t.Fatal(err)
	}
	if stdout, _, err := runBatchd(t, "migrate", "--status", "--data-dir", dir); err != nil || !strings.Contains(stdout, " 0 pending") {
		t.Fatalf("status of a data dir: %v %s", err, stdout)
	}
}
