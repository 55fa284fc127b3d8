package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// browserTestDir holds the dashboard's browser test script and its
// node_modules (npm ci there installs playwright-core, which downloads no
// browser: it drives Debian's chromium).
const browserTestDir = "../../web/browsertest"

// TestDashboardBrowser runs the dashboard in headless Chromium against a
// real `batchd serve`: sign in, watch a batch created through the API
// progress to ended, open a result, upload a JSONL file as a new batch,
// cancel another from its page, and save a screenshot. It skips when
// chromium, node or the script's node_modules are missing, unless
// BATCHD_BROWSER_TEST=1 (CI), where that fails it.
//
// BATCHD_BROWSER_HEAVY=1 first loads 1,000 batches and a 100,000-request
// batch and times the pages with them (a minute or two more);
// BATCHD_SCREENSHOT=path saves the screenshot there, a relative path
// being from the repository's root (docs/dashboard.png for the README).
func TestDashboardBrowser(t *testing.T) {
	t.Parallel()
	chromium := os.Getenv("BATCHD_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	var missing []string
	if _, err := os.Stat(chromium); err != nil {
		missing = append(missing, chromium+" (apt-get install chromium)")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing = append(missing, "node (apt-get install nodejs npm)")
	}
	if _, err := os.Stat(filepath.Join(browserTestDir, "node_modules", "playwright-core")); err != nil {
		missing = append(missing, "web/browsertest/node_modules (npm ci in web/browsertest)")
	}
	if len(missing) > 0 {
		msg := "browser test needs " + strings.Join(missing, ", ")
		if os.Getenv("BATCHD_BROWSER_TEST") == "1" {
			t.Fatal(msg + "; BATCHD_BROWSER_TEST=1 asks for it")
		}
		t.Skip(msg + "; set BATCHD_BROWSER_TEST=1 to fail instead")
	}

	dir := t.TempDir()
	key, _, err := runBatchd(t, "keys", "create", "--workspace", "dash", "--data-dir", dir)
	if err != nil {
		t.Fatalf("keys create: %v", err)
	}
	key = strings.TrimSpace(key)
	// A low concurrency, so that the batch the page watches takes a few
	// seconds and the one it cancels has requests still waiting.
	p := startServe(t, dir, "--concurrency", "4")

	heavy := ""
	if os.Getenv("BATCHD_BROWSER_HEAVY") == "1" {
		heavy = loadHeavy(t, p.URL, key)
	}

	shot := os.Getenv("BATCHD_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(dir, "dashboard.png")
	} else if !filepath.IsAbs(shot) {
		shot = filepath.Join("..", "..", shot) // from the repository's root
		if shot, err = filepath.Abs(shot); err != nil {
			t.Fatal(err)
		}
	}
	work := t.TempDir()
	cmd := exec.Command(node, "dashboard.mjs")
	cmd.Dir = browserTestDir
	cmd.Env = append(os.Environ(), "BATCHD_URL="+p.URL, "BATCHD_KEY="+key, "CHROMIUM="+chromium,
		"SCREENSHOT="+shot, "WORKDIR="+work, "HEAVY_BATCH="+heavy)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	done := make(chan struct{})
	var out []byte
	go func() { out, err = cmd.Output(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the browser test did not finish in 10 minutes:\n%s", stderr.String())
	}
	if err != nil {
		t.Fatalf("browser test: %v\n%s\nserver log:\n%s", err, stderr.String(), p.Logs())
	}
	line := ""
	for _, l := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(l, "RESULT "); ok {
			line = rest
		}
	}
	var figures struct {
		FirstPaint map[string]*float64 `json:"first_paint_ms"`
		Ready      map[string]float64  `json:"ready_ms"`
		API        map[string]struct {
			Calls int
			Max   float64 `json:"max"`
		} `json:"api_server_ms"`
	}
	if err := json.Unmarshal([]byte(line), &figures); err != nil {
		t.Fatalf("browser test printed no RESULT line (%v):\n%s\n%s", err, out, stderr.String())
	}
	// Figures, not assertions (speed is never asserted in a test): the
	// target is every page interactive within 1 s.
	// Painted: the later of the first contentful paint and the view's
	// data in the DOM.
	for name, ms := range figures.Ready {
		fp := "-"
		if v := figures.FirstPaint[name]; v != nil {
			fp = fmt.Sprintf("%.0f ms", *v)
			ms = max(ms, *v)
		}
		t.Logf("%-24s painted %5.0f ms (%.2f × the 1 s target; first paint %s)", name, ms, ms/1000, fp)
	}
	for path, a := range figures.API {
		t.Logf("server time %-60s max %6.1f ms over %d calls", path, a.Max, a.Calls)
	}
	t.Logf("screenshot: %s", shot)
}

// loadHeavy makes a 100,000-request batch and 1,000 small ones and waits
// for all of them to end; it returns the big batch's id.
func loadHeavy(t *testing.T, url, key string) string {
	t.Helper()
	start := time.Now()
	post := func(body io.Reader) string { return createBatchKey(t, url, key, body).ID }
	// Every 50th request errs, so the errored filter has work to do.
	big := post(bodyReader(100_000, func(i int) string {
		if i%50 == 49 {
			return "[[sim error=invalid_request_error]] no"
		}
		return fmt.Sprintf("document %d", i)
	}))
	var small []string
	for i := range 1000 {
		small = append(small, post(strings.NewReader(fmt.Sprintf(
			`{"requests":[{"custom_id":"s-%d","params":{"model":"claude-sim","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}}]}`, i))))
		if len(small)%90 == 0 {
			// Stay under --max-in-progress (100).
			for _, id := range small[len(small)-90:] {
				waitEndedEvery(t, url, key, id, 5*time.Minute, 50*time.Millisecond)
			}
		}
	}
	for _, id := range append(small, big) {
		waitEndedEvery(t, url, key, id, 10*time.Minute, 50*time.Millisecond)
	}
	t.Logf("loaded 1,000 batches and a 100,000-request batch in %s", time.Since(start).Round(time.Second))
	return big
}
