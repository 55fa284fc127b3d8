package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// BenchmarkResultsDownload: `batchd results -o FILE` (the real binary, JSONL)
// against a raw HTTP download of the same 20,000 results into a file, from a
// real server. Reports the ratio, best of three each; target ≤ 1.3.
func BenchmarkResultsDownload(b *testing.B) {
	const n = 20_000
	for range b.N {
		p := startServe(b, b.TempDir())
		bt := createBatch(b, p.URL, bodyReader(n, func(i int) string { return "Summarize document " + strconv.Itoa(i) }))
		waitEnded(b, p.URL, bt.ID, 10*time.Minute)
		dir := b.TempDir()

		raw := bestOf(3, func() {
			res, err := http.Get(p.URL + "/v1/messages/batches/" + bt.ID + "/results")
			if err != nil {
				b.Fatal(err)
			}
			defer res.Body.Close()
			f, err := os.Create(filepath.Join(dir, "raw.jsonl"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			if _, err := io.Copy(f, res.Body); err != nil {
				b.Fatal(err)
			}
		})
		cli := bestOf(3, func() {
			out, err := exec.Command(binPath, "results", bt.ID, "-o", filepath.Join(dir, "cli.jsonl"), "--base-url", p.URL).CombinedOutput()
			if err != nil {
				b.Fatalf("batchd results: %v\n%s", err, out)
			}
		})
		rawBytes, _ := os.ReadFile(filepath.Join(dir, "raw.jsonl"))
		cliBytes, _ := os.ReadFile(filepath.Join(dir, "cli.jsonl"))
		if string(rawBytes) != string(cliBytes) {
			b.Fatalf("results -o wrote %d bytes, the raw download %d: not the same", len(cliBytes), len(rawBytes))
		}
		b.ReportMetric(raw.Seconds(), "raw_s")
		b.ReportMetric(cli.Seconds(), "cli_s")
		b.ReportMetric(cli.Seconds()/raw.Seconds(), "ratio")
		b.ReportMetric(cli.Seconds()/raw.Seconds()/1.3, "x_target")
	}
}

// bestOf runs fn k times and returns the shortest run.
func bestOf(k int, fn func()) time.Duration {
	best := time.Duration(1<<63 - 1)
	for range k {
		start := time.Now()
		fn()
		best = min(best, time.Since(start))
	}
	return best
}
