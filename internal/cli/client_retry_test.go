package cli

import (
	"os"
	"strings"
	"testing"
)

// submitAndEnd submits four requests, of which r2 errors and r4 expires,
// and polls the batch until it has ended. It returns the batch ID.
func submitAndEnd(t *testing.T, srv *fakeServer, state string) string {
	t.Helper()
	srv.outcome = func(id string) string {
		switch id {
		case "r2":
			return "errored"
		case "r4":
			return "expired"
		}
		return "succeeded"
	}
	var in strings.Builder
	for _, id := range []string{"r1", "r2", "r3", "r4"} {
		in.WriteString(`{"custom_id":"` + id + `","params":{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"` + id + `"}]}}` + "\n")
	}
	stdout, _, err := runCLI(t, in.String(), "submit", "-", "--base-url", srv.URL(), "--state-dir", state)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(stdout)
	_, _, err = runCLI(t, "", "wait", id, "--interval", "1ms", "--base-url", srv.URL())
	checkExitCode(t, err, 2)
	return id
}

func TestRetryUsesServerEndpoint(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	state := t.TempDir()
	id := submitAndEnd(t, srv, state)
	// Without a local copy, only the server can know the requests.
	if err := os.Remove(localCopyPath(state, id)); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := runCLI(t, "", "retry", id, "--base-url", srv.URL(), "--state-dir", state)
	if err != nil {
		t.Fatalf("retry: %v\n%s", err, stderr)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	newID := srv.order[len(srv.order)-1]
	if stdout != newID+"\n" {
		t.Errorf("stdout = %q, want %q", stdout, newID)
	}
	if reqs := srv.batches[newID].requests; len(reqs) != 2 || reqs[0].CustomID != "r2" || reqs[1].CustomID != "r4" {
		t.Errorf("retry batch = %+v", reqs)
	}
}

func TestRetryFallsBackToLocalCopy(t *testing.T) {
	t.Parallel()
	srv := newFakeServer(t)
	srv.noRetryEndpoint = true
	state := t.TempDir()
	id := submitAndEnd(t, srv, state)

	stdout, stderr, err := runCLI(t, "", "retry", id, "--base-url", srv.URL(), "--state-dir", state)
	if err != nil {
		t.Fatalf("retry: %v\n%s", err, stderr)
	}
	creates := srv.createsSnapshot()
	if len(creates) != 2 {
		t.Fatalf("%d creates, want the original and the retry", len(creates))
	}
	retry := creates[1]
	if stdout != retry.id+"\n" {
		t.Errorf("stdout = %q, want %q", stdout, retry.id)
	}
	if len(retry.requests) != 2 || retry.requests[0].CustomID != "r2" || retry.requests[1].CustomID != "r4" {
		t.Fatalf("retry requests = %+v", retry.requests)
	}
	if got := string(retry.requests[1].Params); !strings.Contains(got, `"content":"r4"`) {
		t.Errorf("params not carried over: %s", got)
	}
	if _, err := os.Stat(localCopyPath(state, retry.id)); err != nil {
		t.Errorf("no local copy of the retry batch, so it could not be retried in turn: %v", err)
	}

	// Without the local copy there is nothing to fall back to.
	other := t.TempDir()
	if _, _, err := runCLI(t, "", "retry", id, "--base-url", srv.URL(), "--state-dir", other); err == nil || !strings.Contains(err.Error(), "no local copy") {
		t.Errorf("no local copy: err = %v", err)
	}
}

func TestRetryNothingToRetry(t *testing.T) {
	t.Parallel()
	for _, noEndpoint := range []bool{false, true} {
		srv := newFakeServer(t)
		srv.noRetryEndpoint = noEndpoint
		state := t.TempDir()
		stdout, _, err := runCLI(t, `{"custom_id":"a","params":{}}`+"\n", "submit", "-", "--wait", "--interval", "1ms", "--base-url", srv.URL(), "--state-dir", state)
		if err != nil {
			t.Fatal(err)
		}
		for _, extra := range [][]string{nil, {"--wait"}} {
			args := append([]string{"retry", strings.TrimSpace(stdout), "--base-url", srv.URL(), "--state-dir", state}, extra...)
			out, stderr, err := runCLI(t, "", args...)
			if err != nil || out != "" || !strings.Contains(stderr, "nothing to retry") {
				t.Errorf("no endpoint %v, %v: err = %v, stdout %q, stderr %q; want exit 0 and \"nothing to retry\"", noEndpoint, extra, err, out, stderr)
			}
		}
	}
}

func TestRetryUnknownBatch(t *testing.T) {
	t.Parallel()
	for _, noEndpoint := range []bool{false, true} {
		srv := newFakeServer(t)
		srv.noRetryEndpoint = noEndpoint
		_, _, err := runCLI(t, "", "retry", "msgbatch_nope", "--base-url", srv.URL(), "--state-dir", t.TempDir())
		if err == nil || apiStatus(err) != 404 || !strings.Contains(err.Error(), "no batch msgbatch_nope") {
			t.Errorf("no endpoint %v: err = %v", noEndpoint, err)
		}
	}
}
