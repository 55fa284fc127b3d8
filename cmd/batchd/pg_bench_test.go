package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/store/postgres/pgtest"
)

// Benchmarks of real `batchd serve` processes sharing one PostgreSQL
// database (issue 8, "Done when"). They skip without
// BATCHD_TEST_DATABASE_URL; each run has a schema of its own. Run them with
//
//	BATCHD_TEST_DATABASE_URL='postgres://postgres@127.0.0.1:5432/test?sslmode=disable' \
//	  go test ./cmd/batchd -run '^$' -bench PG -benchtime 1x
//
// BATCHD_BENCH_CPUPROFILE=PREFIX writes each process's CPU profile to
// PREFIX.procsN.I.

// pgCluster is n `batchd serve` processes on one fresh schema, with one
// webhook key, as a cluster is run.
type pgCluster struct {
	url   string // the database URL every process is given
	app   string // the application name of their connections
	procs []*proc
}

func startPGCluster(b *testing.B, n int, name string, flags ...string) *pgCluster {
	b.Helper()
	schema := pgtest.Schema(b)
	// The application name finds the processes' server backends, whose
	// CPU is the other half of what a request costs.
	url := pgtest.URL(b) + "&search_path=" + schema + "&application_name=" + schema
	dir := b.TempDir()
	keyFile := filepath.Join(dir, "webhook.key")
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{'k'}, 32))
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		b.Fatal(err)
	}
	c := &pgCluster{url: url, app: schema}
	prof := os.Getenv("BATCHD_BENCH_CPUPROFILE")
	for i := range n {
		f := append([]string{"--database-url", url, "--webhook-key-file", keyFile}, flags...)
		if prof != "" {
			f = append(f, "--cpu-profile", fmt.Sprintf("%s.%s.%d", prof, name, i))
		}
		c.procs = append(c.procs, startServe(b, filepath.Join(dir, strconv.Itoa(i)), f...))
	}
	return c
}

// waitShares waits until every process holds its fair share of the
// simulator's concurrency (the shares are renewed about every second), so
// that a figure does not include the processes joining.
func (c *pgCluster) waitShares(b *testing.B, limit int) {
	b.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	fair := limit / len(c.procs)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var owners, least int
		err := conn.QueryRow(ctx, `SELECT count(*), coalesce(min(concurrency), 0) FROM limit_shares
			WHERE expires > (extract(epoch FROM clock_timestamp()) * 1e6)::bigint`).Scan(&owners, &least)
		if err != nil {
			b.Fatal(err)
		}
		if owners == len(c.procs) && least >= fair {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("shares not settled after 60s: %d owners, least share %d (fair %d)", owners, least, fair)
		}
	}
}

// cpu is the CPU time of all the cluster's processes so far.
func (c *pgCluster) cpu(b *testing.B) time.Duration {
	var sum time.Duration
	for _, p := range c.procs {
		sum += procCPU(b, p.cmd.Process.Pid)
	}
	return sum
}

// serverCPU is the CPU time so far of the PostgreSQL backends serving the
// cluster's connections, by pid (/proc/PID/stat is readable by all).
func (c *pgCluster) serverCPU(b *testing.B) map[int]time.Duration {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid != pg_backend_pid()`, c.app)
	if err != nil {
		b.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		b.Fatal(err)
	}
	out := map[int]time.Duration{}
	for _, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			out[int(pid)] = procCPU(b, int(pid))
		}
	}
	return out
}

// cpuSince is the CPU the backends of now spent since then (a backend
// absent from then started meanwhile).
func cpuSince(then, now map[int]time.Duration) time.Duration {
	var sum time.Duration
	for pid, t := range now {
		sum += t - then[pid]
	}
	return sum
}

// stop stops every process gracefully, so their profiles are written.
func (c *pgCluster) stop() {
	for _, p := range c.procs {
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range c.procs {
		<-p.done
	}
}

// machineBusy reads the machine's busy and total CPU ticks (/proc/stat), to
// tell a run bound by the CPU (PostgreSQL included) from one that waits.
func machineBusy(b *testing.B) (busy, total int64) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// pgOneProcRPS is the last one-process figure of BenchmarkPGEndToEnd, for
// the three-process run's ratio to it.
var pgOneProcRPS float64

// BenchmarkPGEndToEnd: create → every result stored, 100,000 requests
// (BATCHD_BENCH_N), simulator at zero latency, on PostgreSQL with one and
// with three processes; the batch is created through the first, and all
// of them run it. Targets: ≥ 20,000 requests/s with one process; three at
// least 0.9 × one (x_one; x_target is against 0.9 × 20,000).
func BenchmarkPGEndToEnd(b *testing.B) {
	n, _ := strconv.Atoi(benchEnv("BATCHD_BENCH_N", "100000"))
	conc, _ := strconv.Atoi(benchEnv("BATCHD_BENCH_CONCURRENCY", "64"))
	for _, procs := range []int{1, 3} {
		b.Run(fmt.Sprintf("procs=%d", procs), func(b *testing.B) {
			pgtest.URL(b)
			for range b.N {
				// The simulator without limits has no limiter: each
				// process runs conc calls at once.
				c := startPGCluster(b, procs, fmt.Sprintf("procs%d", procs), "--concurrency", strconv.Itoa(conc))
				cpu0, pg0 := c.cpu(b), c.serverCPU(b)
				busy0, total0 := machineBusy(b)
				start := time.Now()
				bt := createBatch(b, c.procs[0].URL, bodyReader(n, func(i int) string { return "Summarize document " + strconv.Itoa(i) }))
				created := time.Since(start)
				end := waitEnded(b, c.procs[0].URL, bt.ID, 20*time.Minute)
				elapsed := time.Since(start)
				busy1, total1 := machineBusy(b)
				pgCPU := cpuSince(pg0, c.serverCPU(b))
				if end.RequestCounts.Succeeded != int64(n) {
					b.Fatalf("counts %+v", end.RequestCounts)
				}
				rps := float64(n) / elapsed.Seconds()
				b.ReportMetric(rps, "req/s")
				target := 20_000.0
				if procs > 1 {
					target *= 0.9
					if pgOneProcRPS > 0 {
						b.ReportMetric(rps/pgOneProcRPS, "x_one")
					}
				} else {
					pgOneProcRPS = rps
				}
				b.ReportMetric(rps/target, "x_target")
				b.ReportMetric(float64((c.cpu(b)-cpu0).Microseconds())/float64(n), "batchd_cpu_us/req")
				b.ReportMetric(float64(pgCPU.Microseconds())/float64(n), "pg_cpu_us/req")
				b.ReportMetric(float64(busy1-busy0)/float64(total1-total0), "machine_busy")
				// The create (upload, COPY) is part of every figure; its
				// share tells the two halves' costs apart.
				b.ReportMetric(created.Seconds()/elapsed.Seconds(), "create_share")
				c.stop()
			}
		})
	}
}

// BenchmarkPGLatencyRatio: 10,000 requests at simulator latency L = 100 ms
// (BATCHD_BENCH_LATENCY) and concurrency C = 64 across the cluster
// (BATCHD_BENCH_CONCURRENCY) on three processes take T; reports
// T / (N·L/C). Target ≤ 1.05 (x_limit ≤ 1).
func BenchmarkPGLatencyRatio(b *testing.B) {
	n, _ := strconv.Atoi(benchEnv("BATCHD_BENCH_N", "10000"))
	lat, _ := time.ParseDuration(benchEnv("BATCHD_BENCH_LATENCY", "100ms"))
	conc, _ := strconv.Atoi(benchEnv("BATCHD_BENCH_CONCURRENCY", "64"))
	procs, _ := strconv.Atoi(benchEnv("BATCHD_BENCH_PROCS", "3"))
	pgtest.URL(b)
	// A fixed concurrency limit makes the simulator's limit one of the
	// cluster, shared among the processes.
	cfg := filepath.Join(b.TempDir(), "batchd.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("[[backends]]\nname = \"sim\"\nkind = \"sim\"\nlatency = %q\n"+
		"concurrency = %d\nmax_concurrency = %d\nfixed_concurrency = true\n[[routes]]\nmodel = \"*\"\nbackend = \"sim\"\n",
		lat.String(), conc, conc)), 0o600); err != nil {
		b.Fatal(err)
	}
	for range b.N {
		c := startPGCluster(b, procs, "latency", "--config", cfg)
		c.waitShares(b, conc)
		start := time.Now()
		bt := createBatch(b, c.procs[0].URL, bodyReader(n, func(i int) string { return "q " + strconv.Itoa(i) }))
		end := waitEnded(b, c.procs[0].URL, bt.ID, 20*time.Minute)
		took := time.Since(start)
		ideal := time.Duration(float64(n) * float64(lat) / float64(conc))
		b.ReportMetric(took.Seconds(), "s")
		b.ReportMetric(ideal.Seconds(), "ideal_s")
		b.ReportMetric(took.Seconds()/ideal.Seconds(), "ratio")
		b.ReportMetric(took.Seconds()/ideal.Seconds()/1.05, "x_limit")
		b.ReportMetric(end.EndedAt.Sub(end.CreatedAt).Seconds()/ideal.Seconds(), "ratio_after_create")
		c.stop()
	}
}
