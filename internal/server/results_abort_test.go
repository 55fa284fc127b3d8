package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// hookWriter runs hook once, synchronously, before the first body write of
// a response: the response has started, and nothing more is sent until the
// hook returns.
type hookWriter struct {
	http.ResponseWriter
	once *sync.Once
	hook func()
}

func (w hookWriter) Write(p []byte) (int, error) {
	w.once.Do(w.hook)
	return w.ResponseWriter.Write(p)
}

func (w hookWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// TestResultsDeletedMidStreamAborts deletes a batch while its
// results are being downloaded by a real HTTP client: the transfer must
// break, never end cleanly with fewer lines than the batch has results.
func TestResultsDeletedMidStreamAborts(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	// More than one store page (1,000 results), so the stream must read the
	// store again after the first page has gone out.
	const n = 1200
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", n, "hello")...))
	// Generous: the whole package runs in parallel under -race on CI.
	waitEndedRaw(t, ts.URL, b.ID, 3*time.Minute)

	// The download goes through a listener whose handler deletes the batch
	// through the API the moment the first results bytes are written.
	var once sync.Once
	var hookErr error
	deleteBatch := func() {
		req, _ := http.NewRequest("DELETE", ts.URL+"/v1/messages/batches/"+b.ID, nil)
		req.Header.Set("x-api-key", "test")
		req.Header.Set("anthropic-version", "2023-06-01")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			hookErr = err
			return
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			hookErr = fmt.Errorf("delete: status %d: %s", res.StatusCode, body)
			return
		}
		// The rows go in the background purge; run it to the end now, as
		// the sweeper would during a long download.
		for {
			lead, _ := ts.Srv.Leader.Lead(context.Background())
			n, err := ts.Srv.Store.RequestsPurge(context.Background(), store.RequestsPurgeParams{Limit: 1000, Now: time.Now(), Lead: lead})
			if err != nil {
				hookErr = err
				return
			}
			if n == 0 {
				return
			}
		}
	}
	h := ts.Srv.Handler()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/results") {
			w = hookWriter{ResponseWriter: w, once: &once, hook: deleteBatch}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", hs.URL+"/v1/messages/batches/"+b.ID+"/results", nil)
	req.Header.Set("x-api-key", "test")
	req.Header.Set("anthropic-version", "2023-06-01")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("results: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("results: status %d", res.StatusCode)
	}
	body, err := io.ReadAll(res.Body)
	if hookErr != nil {
		t.Fatalf("delete during the download: %v", hookErr)
	}
	lines := bytes.Count(body, []byte("\n"))
	if err == nil {
		t.Fatalf("download ended cleanly with %d of %d lines, want a broken transfer", lines, n)
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Logf("download broke with %v (after %d lines)", err, lines)
	}
	if lines >= n {
		t.Errorf("download broke after all %d lines; the delete came too late to test anything", lines)
	}
	// The batch is gone, and the API says so.
	wantError(t, do(t, "GET", ts.URL+"/v1/messages/batches/"+b.ID+"/results", nil), 404, "not_found_error")
}
