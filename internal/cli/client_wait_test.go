package cli

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
)

func endedBatch(succeeded, errored, canceled, expired int64) *anthropic.MessageBatch {
	b := &anthropic.MessageBatch{ID: "msgbatch_x", ProcessingStatus: anthropic.MessageBatchProcessingStatusEnded}
	b.RequestCounts.Succeeded = succeeded
	b.RequestCounts.Errored = errored
	b.RequestCounts.Canceled = canceled
	b.RequestCounts.Expired = expired
	return b
}

func TestBatchOutcome(t *testing.T) {
	t.Parallel()
	if err := batchOutcome(endedBatch(5, 0, 0, 0)); err != nil {
		t.Errorf("all succeeded: %v", err)
	}
	if err := batchOutcome(endedBatch(0, 0, 0, 0)); err != nil {
		t.Errorf("empty: %v", err)
	}
	for _, b := range []*anthropic.MessageBatch{endedBatch(4, 1, 0, 0), endedBatch(4, 0, 1, 0), endedBatch(4, 0, 0, 1)} {
		err := batchOutcome(b)
		if err == nil || !strings.Contains(err.Error(), "1 of 5 requests did not succeed") {
			t.Errorf("%+v: err = %v", b.RequestCounts, err)
		}
	}
}

func TestRateMeter(t *testing.T) {
	t.Parallel()
	var m rateMeter
	t0 := time.Unix(1000, 0)
	// Requests done before we started watching do not count towards the rate.
	if rate, _ := m.observe(t0, batchCounts{processing: 100, succeeded: 900}); rate != 0 {
		t.Errorf("first observation rate = %v", rate)
	}
	rate, eta := m.observe(t0.Add(10*time.Second), batchCounts{processing: 50, succeeded: 940, errored: 10})
	if rate != 5 || eta != 10*time.Second {
		t.Errorf("rate %v, eta %v; want 5/s, 10s", rate, eta)
	}
	// A minute later the provider slowed down: only the last minute counts.
	for i := 1; i <= 6; i++ {
		rate, _ = m.observe(t0.Add(10*time.Second+time.Duration(i)*10*time.Second), batchCounts{processing: 50 - int64(i), succeeded: 950 + int64(i)})
	}
	if rate != 0.1 {
		t.Errorf("rate after slowing down = %v, want 0.1/s", rate)
	}
}

func TestLineReporterThrottles(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	now := time.Unix(1000, 0)
	r := &lineReporter{w: &out, label: "msgbatch_x", now: func() time.Time { return now }}
	b := &anthropic.MessageBatch{ID: "msgbatch_x", ProcessingStatus: anthropic.MessageBatchProcessingStatusInProgress}
	step := func(d time.Duration, done int64) {
		now = now.Add(d)
		b.RequestCounts.Succeeded, b.RequestCounts.Processing = done, 100-done
		r.update(b)
	}
	step(0, 0)               // first: printed
	step(time.Second, 10)    // changed, too soon
	step(5*time.Second, 20)  // changed, due
	step(9*time.Second, 20)  // unchanged
	step(10*time.Second, 20) // heartbeat
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("lines:\n%s", out.String())
	}
	if want := "msgbatch_x in_progress: 20/100 done (succeeded 20, errored 0, canceled 0, expired 0), 3.3 req/s, ETA 24s"; lines[1] != want {
		t.Errorf("line = %q\nwant   %q", lines[1], want)
	}
}

func TestWaitExitCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		outcome  func(string) string
		wantCode int
	}{
		{name: "AllSucceeded", wantCode: 0},
		{name: "SomeErrored", outcome: func(id string) string {
			if id == "r3" {
				return "errored"
			}
			return "succeeded"
		}, wantCode: 2},
		{name: "SomeExpired", outcome: func(id string) string {
			if id == "r1" {
				return "expired"
			}
			return "succeeded"
		}, wantCode: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newFakeServer(t)
			srv.outcome = tc.outcome
			srv.pollsToEnd = 4
			in := `{"custom_id":"r1","params":{}}` + "\n" + `{"custom_id":"r2","params":{}}` + "\n" + `{"custom_id":"r3","params":{}}` + "\n" + `{"custom_id":"r4","params":{}}` + "\n"
			stdout, _, err := runCLI(t, in, "submit", "-", "--base-url", srv.URL(), "--state-dir", t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			id := strings.TrimSpace(stdout)
			stdout, stderr, err := runCLI(t, "", "wait", id, "--interval", "1ms", "--base-url", srv.URL())
			if stdout != "" {
				t.Errorf("stdout = %q", stdout)
			}
			if !strings.Contains(stderr, id+" in_progress: 1/4 done") || !strings.Contains(stderr, id+" ended: 4 requests") {
				t.Errorf("stderr:\n%s", stderr)
			}
			checkExitCode(t, err, tc.wantCode)
		})
	}
}

func checkExitCode(t *testing.T, err error, want int) {
	t.Helper()
	if want == 0 {
		if err != nil {
			t.Fatalf("err = %v, want success", err)
		}
		return
	}
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != want || ee.Err == nil {
		t.Fatalf("err = %#v, want *ExitError with code %d", err, want)
	}
}

func TestSubmitWait(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	srv.outcome = func(id string) string {
		if id == "r2" {
			return "errored"
		}
		return "succeeded"
	}
	in := `{"custom_id":"r1","params":{}}` + "\n" + `{"custom_id":"r2","params":{}}` + "\n"
	stdout, stderr, err := runCLI(t, in, "submit", "-", "--wait", "--interval", "1ms", "--max-requests", "1",
		"--base-url", srv.URL(), "--state-dir", t.TempDir())
	checkExitCode(t, err, 2)
	if n := len(strings.Fields(stdout)); n != 2 {
		t.Errorf("stdout = %q, want two IDs", stdout)
	}
	if strings.Count(stderr, " ended: ") != 2 || !strings.Contains(stderr, "[batch 1 of 2] msgbatch_") || !strings.Contains(stderr, "[batch 2 of 2] msgbatch_") {
		t.Errorf("stderr:\n%s\nwant two summaries, each saying which batch of 2", stderr)
	}
}

func TestWaitUnknownBatch(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	_, _, err := runCLI(t, "", "wait", "msgbatch_nope", "--interval", "1ms", "--base-url", srv.URL())
	var ee *ExitError
	if err == nil || errors.As(err, &ee) || apiStatus(err) != 404 {
		t.Errorf("err = %v, want a plain 404 error", err)
	}
}

func TestWaitToleratesTransientErrors(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	stdout, _, err := runCLI(t, `{"custom_id":"a","params":{}}`+"\n", "submit", "-", "--base-url", srv.URL(), "--state-dir", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(stdout)
	srv.mu.Lock()
	srv.failGets = 2 * maxPollFailures
	srv.mu.Unlock()
	_, stderr, err := runCLI(t, "", "wait", id, "--interval", "1ms", "--base-url", srv.URL())
	if err != nil {
		t.Errorf("%d failed polls in a row: %v", 2*maxPollFailures, err)
	}
	if strings.Count(stderr, "retrying for up to 2m0s") != 1 {
		t.Errorf("stderr:\n%s\nwant one line that it is retrying", stderr)
	}

	srv.mu.Lock()
	srv.failGets = 1 << 30
	srv.mu.Unlock()
	_, _, err = runCLI(t, "", "wait", id, "--interval", "1ms", "--give-up-after", "100ms", "--base-url", srv.URL())
	if apiStatus(err) != 503 || !strings.Contains(err.Error(), "giving up: no answer from the server for 100ms") || !strings.Contains(err.Error(), "503 Service Unavailable overloaded_error: try later") {
		t.Errorf("server failing for good: err = %v", err)
	}
}

// TestWaitUnreachableServer: against a port nobody listens on, wait says at
// once that it is retrying and gives up after --give-up-after.
func TestWaitUnreachableServer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	_, stderr, err := runCLI(t, "", "wait", "msgbatch_x", "--interval", "10ms", "--give-up-after", "300ms", "--base-url", url)
	if err == nil || !strings.Contains(err.Error(), "giving up: no answer from the server for 300ms") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("err = %v", err)
	}
	if !strings.Contains(stderr, "msgbatch_x: no answer from the server") || !strings.Contains(stderr, "retrying for up to 300ms") {
		t.Errorf("stderr = %q", stderr)
	}
}

// TestLineReporterHeartbeat: without observations, a line comes at least
// every lineHeartbeat, driven by the ticks.
func TestLineReporterHeartbeat(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	out := &lockedBuffer{}
	r := &lineReporter{w: out, label: "msgbatch_x", now: clock}
	ticks := make(chan time.Time)
	stopped := make(chan struct{})
	r.run(ticks, func() { close(stopped) })
	// The second send returns only once the first tick was handled; it
	// finds the same time, so it prints nothing more.
	tick := func(d time.Duration) { advance(d); ticks <- time.Time{}; ticks <- time.Time{} }

	tick(lineHeartbeat) // nothing seen yet
	b := &anthropic.MessageBatch{ID: "msgbatch_x", ProcessingStatus: anthropic.MessageBatchProcessingStatusInProgress}
	b.RequestCounts.Processing = 10
	r.update(b)             // printed
	tick(lineHeartbeat / 2) // too soon
	tick(lineHeartbeat / 2) // due: the same counts again
	tick(lineHeartbeat - 1) // too soon
	tick(1)                 // due
	r.done(nil)
	<-stopped

	want := []string{
		"msgbatch_x: waiting for the server's first answer",
		"msgbatch_x in_progress: 0/10 done (succeeded 0, errored 0, canceled 0, expired 0)",
		"msgbatch_x in_progress: 0/10 done (succeeded 0, errored 0, canceled 0, expired 0)",
		"msgbatch_x in_progress: 0/10 done (succeeded 0, errored 0, canceled 0, expired 0)",
	}
	if got := strings.Split(strings.TrimSpace(out.String()), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("lines:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
