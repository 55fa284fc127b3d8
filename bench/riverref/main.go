// Command riverref measures River (github.com/riverqueue/river) working
// no-op jobs on PostgreSQL on this machine, as a same-machine reference for
// batchd's PostgreSQL throughput figure (see README.md).
//
// It prints three phases, one line each:
//
//	insert: N jobs inserted with InsertManyFast in batches, no client working
//	work:   from Client.Start until those N jobs are completed
//	e2e:    client already running; N jobs inserted from another goroutine;
//	        from the first insert until the last completion
//
// Each line has jobs/s, the program's CPU and PostgreSQL's CPU per job.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
)

// noopArgs is the job: one small field, so each row carries some args.
type noopArgs struct {
	Num int `json:"num"`
}

func (noopArgs) Kind() string { return "riverref_noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
}

func (*noopWorker) Work(context.Context, *river.Job[noopArgs]) error { return nil }

type options struct {
	databaseURL   string
	n             int
	workers       int
	schema        string
	batch         int
	fetchCooldown time.Duration
	fetchPoll     time.Duration
	insertMany    bool
}

func main() {
	var o options
	flag.StringVar(&o.databaseURL, "database-url", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL URL")
	flag.IntVar(&o.n, "n", 100000, "jobs per phase")
	flag.IntVar(&o.workers, "workers", 100, "MaxWorkers of the one queue")
	flag.StringVar(&o.schema, "schema", "riverref", "schema to drop, recreate and migrate River into")
	flag.IntVar(&o.batch, "batch", 5000, "jobs per insert call")
	// River's own bench (cmd/river bench) sets 2 ms and 20 ms instead of
	// the client defaults (100 ms, 1 s); its figures are with these.
	flag.DurationVar(&o.fetchCooldown, "fetch-cooldown", 2*time.Millisecond, "Config.FetchCooldown")
	flag.DurationVar(&o.fetchPoll, "fetch-poll-interval", 20*time.Millisecond, "Config.FetchPollInterval")
	flag.BoolVar(&o.insertMany, "insert-many", false, "insert with InsertMany (as River's bench) instead of InsertManyFast")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "riverref:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if o.n <= 0 || o.workers <= 0 || o.batch <= 0 {
		return errors.New("--n, --workers and --batch must be positive")
	}
	ident := pgx.Identifier{o.schema}.Sanitize()
	app := "riverref_" + strconv.Itoa(os.Getpid())
	u, err := url.Parse(o.databaseURL)
	if err != nil {
		return err
	}
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()

	cfg, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		return err
	}
	// Enough connections for the producer, completer, notifier, inserter
	// and the maintenance services; River's default would be pgxpool's
	// max(4, cores).
	cfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()

	if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+ident+" CASCADE"); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+ident); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	driver := riverpgxv5.New(pool)
	migrator, err := rivermigrate.New(driver, &rivermigrate.Config{Schema: o.schema, Logger: logger})
	if err != nil {
		return err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}

	var pgVersion string
	if err := pool.QueryRow(ctx, "SHOW server_version").Scan(&pgVersion); err != nil {
		return err
	}
	fmt.Printf("riverref: river v0.51.2, PostgreSQL %s, %s, GOMAXPROCS %d, n %d, workers %d, batch %d, fetch cooldown %s, poll %s, insert %s\n",
		pgVersion, runtime.Version(), runtime.GOMAXPROCS(0), o.n, o.workers, o.batch, o.fetchCooldown, o.fetchPoll, insertName(o))

	newClient := func() (*river.Client[pgx.Tx], error) {
		workers := river.NewWorkers()
		river.AddWorker(workers, &noopWorker{})
		return river.NewClient(driver, &river.Config{
			FetchCooldown:     o.fetchCooldown,
			FetchPollInterval: o.fetchPoll,
			Logger:            logger,
			Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: o.workers}},
			Schema:            o.schema,
			Workers:           workers,
		})
	}
	m := &meter{pool: pool, app: app, n: o.n}
	truncate := func() error {
		_, err := pool.Exec(ctx, "TRUNCATE "+ident+".river_job")
		return err
	}

	// 1. insert, no client working. The client is made (not started) to
	// insert through it.
	if err := truncate(); err != nil {
		return err
	}
	client, err := newClient()
	if err != nil {
		return err
	}
	s := m.start(ctx)
	if err := insertAll(ctx, client, o); err != nil {
		return err
	}
	m.print(ctx, "insert", s, "")

	// 2. work the N jobs just inserted: from Start to the Nth completion.
	done, stopCount := countCompleted(client, o.n)
	s = m.start(ctx)
	if err := client.Start(ctx); err != nil {
		return err
	}
	if err := waitDone(ctx, done, pool, ident, o.n); err != nil {
		return err
	}
	m.print(ctx, "work", s, "")
	stopCount()
	if err := client.Stop(ctx); err != nil {
		return err
	}
	if err := checkCompleted(ctx, pool, ident, o.n); err != nil {
		return err
	}

	// 3. end to end: a fresh client running and idle, then N jobs inserted
	// from another goroutine; from the first insert to the Nth completion.
	if err := truncate(); err != nil {
		return err
	}
	client, err = newClient()
	if err != nil {
		return err
	}
	done, stopCount = countCompleted(client, o.n)
	if err := client.Start(ctx); err != nil {
		return err
	}
	// Let the client settle (leader election, first fetches) so that the
	// phase measures work, not start-up.
	time.Sleep(2 * time.Second)
	s = m.start(ctx)
	inserted := make(chan error, 1)
	var insertTime time.Duration
	go func() {
		err := insertAll(ctx, client, o)
		insertTime = time.Since(s.at)
		inserted <- err
	}()
	if err := waitDone(ctx, done, pool, ident, o.n); err != nil {
		return err
	}
	if err := <-inserted; err != nil {
		return err
	}
	m.print(ctx, "e2e", s, fmt.Sprintf(" (inserts ended at %.2fs)", insertTime.Seconds()))
	stopCount()
	if err := client.Stop(ctx); err != nil {
		return err
	}
	if err := checkCompleted(ctx, pool, ident, o.n); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, "DROP SCHEMA "+ident+" CASCADE"); err != nil {
		return err
	}
	return nil
}

func insertName(o options) string {
	if o.insertMany {
		return "InsertMany"
	}
	return "InsertManyFast"
}

// insertAll inserts o.n no-op jobs, o.batch per call.
func insertAll(ctx context.Context, client *river.Client[pgx.Tx], o options) error {
	params := make([]river.InsertManyParams, 0, o.batch)
	for i := 0; i < o.n; {
		params = params[:0]
		for ; len(params) < o.batch && i < o.n; i++ {
			params = append(params, river.InsertManyParams{Args: noopArgs{Num: i}})
		}
		var err error
		if o.insertMany {
			_, err = client.InsertMany(ctx, params)
		} else {
			_, err = client.InsertManyFast(ctx, params)
		}
		if err != nil {
			return fmt.Errorf("insert: %w", err)
		}
	}
	return nil
}

// countCompleted subscribes to completions; done closes at the nth. The
// channel is sized so that no event is dropped even if counting lags.
func countCompleted(client *river.Client[pgx.Tx], n int) (<-chan struct{}, func()) {
	events, cancel := client.SubscribeConfig(&river.SubscribeConfig{
		ChanSize: n + 1000,
		Kinds:    []river.EventKind{river.EventKindJobCompleted, river.EventKindJobFailed, river.EventKindJobCancelled},
	})
	done := make(chan struct{})
	go func() {
		seen := 0
		for ev := range events {
			if ev.Kind != river.EventKindJobCompleted {
				fmt.Fprintf(os.Stderr, "riverref: unexpected event %s for job %d\n", ev.Kind, ev.Job.ID)
				continue
			}
			seen++
			if seen == n {
				close(done)
			}
		}
	}()
	return done, cancel
}

// waitDone waits for done, or fails if the jobs stop progressing (e.g. an
// event was dropped after all).
func waitDone(ctx context.Context, done <-chan struct{}, pool *pgxpool.Pool, ident string, n int) error {
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	last := -1
	for {
		select {
		case <-done:
			return nil
		case <-tick.C:
			var completed int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+ident+".river_job WHERE state = $1", string(rivertype.JobStateCompleted)).Scan(&completed); err != nil {
				return err
			}
			if completed == last {
				return fmt.Errorf("no progress: %d of %d jobs completed", completed, n)
			}
			last = completed
		}
	}
}

func checkCompleted(ctx context.Context, pool *pgxpool.Pool, ident string, n int) error {
	var completed, total int
	if err := pool.QueryRow(ctx, "SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FROM "+ident+".river_job").Scan(&completed, &total); err != nil {
		return err
	}
	if completed != n || total != n {
		return fmt.Errorf("river_job has %d rows, %d completed; want %d", total, completed, n)
	}
	return nil
}

// meter measures one phase: wall time, this process's CPU, the CPU of the
// PostgreSQL backends serving this program (by application_name), the CPU
// of every postgres process on the machine, and how busy the machine was.
type meter struct {
	pool *pgxpool.Pool
	app  string
	n    int
}

type sample struct {
	at        time.Time
	self      time.Duration
	own       map[int]time.Duration
	all       time.Duration
	busy, tot int64
}

func (m *meter) start(ctx context.Context) sample {
	s := sample{own: m.ownBackends(ctx), all: allPostgresCPU(), self: procCPU(os.Getpid(), false)}
	s.busy, s.tot = machineBusy()
	s.at = time.Now()
	return s
}

func (m *meter) print(ctx context.Context, name string, s sample, extra string) {
	elapsed := time.Since(s.at)
	self := procCPU(os.Getpid(), false) - s.self
	own := m.ownBackends(ctx)
	all := allPostgresCPU() - s.all
	busy, tot := machineBusy()
	var ownCPU time.Duration
	for pid, t := range own {
		ownCPU += t - s.own[pid]
	}
	perJob := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(m.n) }
	// Everything else the machine ran meanwhile (other users' work), in
	// cores: its busy time less this program and its backends.
	others := (time.Duration(busy-s.busy)*clockTick - self - ownCPU).Seconds() / elapsed.Seconds()
	fmt.Printf("%-6s %7d jobs in %6.2fs = %8.0f jobs/s | cpu µs/job: river %5.1f, pg backends %5.1f, all postgres %5.1f | machine busy %.2f, others %.2f cores%s\n",
		name+":", m.n, elapsed.Seconds(), float64(m.n)/elapsed.Seconds(),
		perJob(self), perJob(ownCPU), perJob(all), float64(busy-s.busy)/float64(max(tot-s.tot, 1)), max(others, 0), extra)
}

// ownBackends is the CPU so far of the backends whose application_name is
// this program's, by pid.
func (m *meter) ownBackends(ctx context.Context) map[int]time.Duration {
	out := map[int]time.Duration{}
	rows, err := m.pool.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE application_name = $1", m.app)
	if err != nil {
		return out
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return out
	}
	for _, pid := range pids {
		out[int(pid)] = procCPU(int(pid), false)
	}
	return out
}

// allPostgresCPU sums the CPU of every process named postgres, with the
// reaped children's CPU that each holds (the postmaster's covers backends
// that exited).
func allPostgresCPU() time.Duration {
	paths, _ := filepath.Glob("/proc/[0-9]*/comm")
	var sum time.Duration
	for _, p := range paths {
		comm, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		sum += procCPU(pid, true)
	}
	return sum
}

// clockTick is USER_HZ, 100 on Linux.
const clockTick = 10 * time.Millisecond

// procCPU reads utime+stime of /proc/PID/stat (and cutime+cstime with
// children); 0 if the process is gone.
func procCPU(pid int, children bool) time.Duration {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name, which may hold spaces.
	i := strings.LastIndexByte(string(raw), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(raw[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime 15, cutime 16, cstime 17.
	if len(f) < 15 {
		return 0
	}
	var ticks int64
	last := 13
	if children {
		last = 15
	}
	for k := 11; k <= last; k++ {
		v, _ := strconv.ParseInt(f[k], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * clockTick
}

// machineBusy reads the machine's busy and total CPU ticks from /proc/stat.
func machineBusy() (busy, total int64) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
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
