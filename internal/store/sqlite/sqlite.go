// Package sqlite is batchd's embedded store: one SQLite file in WAL mode,
// opened through a pure-Go driver so that CGO_ENABLED=0 builds work.
//
// SQLite has one writer at a time, so the driver keeps two pools: a single
// writer connection, whose transactions begin IMMEDIATE and so never fail
// with SQLITE_BUSY half way, and a few reader connections that WAL lets run
// beside it. Every hot path writes in groups, one transaction per group.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/store"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store implements store.Store on SQLite.
type Store struct {
	w     *sql.DB // the single writer
	r     *sql.DB // readers
	stmts map[string]*sql.Stmt
	// batchGet is prepared on the readers: GET of a batch is what a client
	// polls, and parsing its SELECT again each time cost more than running
	// it (the driver caches no statements).
	batchGet *sql.Stmt

	stop, stopped chan struct{} // the checkpointer's
	closeOnce     sync.Once

	space *space // the disk-space state (space.go)
}

// The hot statements that write many rows say OR FAIL, which only
// differs from the default (ABORT) in keeping the rows a failing statement
// wrote before it failed, and every such failure rolls the whole
// transaction back here anyway; with ABORT, SQLite copies every page such
// a statement touches into a statement journal first, so that it could
// undo the statement alone.
//
// Outcomes settle in chunks of these sizes, each with its own prepared
// multi-row statements: a group of 100 runs as 64+16+16+4 rows in 8
// statements instead of 200.
var chunkSizes = []int{64, 16, 4, 1}

// Requests are inserted in chunks of these sizes, for the same reason: a
// statement of 200 rows took longer to parse than to run.
var insertChunkSizes = []int{200, 40, 8, 1}

// chunkLen is the largest of sizes (in decreasing order, the last 1) that
// fits in rest.
func chunkLen(rest int, sizes []int) int {
	for _, size := range sizes {
		if rest >= size {
			return size
		}
	}
	return sizes[len(sizes)-1]
}

var hotStatements = func() []string {
	qs := []string{qOpenBatches, qClaim, qClaimParams, qClaimParamsRange, qTouchBatch, qBatchState, qRetry, qAddCounts, qEndIfDone, qBatchBySeq, qMaxRequestID, qUsageAdd}
	for _, n := range chunkSizes {
		qs = append(qs, qSettle(n), qAddResults(n))
	}
	for _, n := range insertChunkSizes {
		qs = append(qs, qInsertRequests(n), qInsertTasks(n))
	}
	return qs
}()

func (s *Store) prepare(ctx context.Context) error {
	s.stmts = make(map[string]*sql.Stmt, len(hotStatements))
	for _, q := range hotStatements {
		st, err := s.w.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		s.stmts[q] = st
	}
	var err error
	if s.batchGet, err = s.r.PrepareContext(ctx, qBatchGet); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	return nil
}

// stmt returns hot statement q bound to tx.
func (s *Store) stmt(ctx context.Context, tx *sql.Tx, q string) *sql.Stmt {
	return tx.StmtContext(ctx, s.stmts[q])
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database file at path and migrates
// it, with no space reserve.
func Open(ctx context.Context, path string) (*Store, error) {
	return OpenWith(ctx, path, Options{})
}

// OpenWith is Open with options.
func OpenWith(ctx context.Context, path string, o Options) (*Store, error) {
	dsn := func(txlock string) string {
		q := url.Values{}
		// wal_autocheckpoint(0): commits never checkpoint (and so never
		// wait on fsync); the checkpointer goroutine does it beside them.
		for _, p := range []string{"journal_mode(WAL)", "synchronous(NORMAL)", "busy_timeout(10000)", "foreign_keys(OFF)",
			"cache_size(-16000)", "wal_autocheckpoint(0)", "temp_store(MEMORY)",
			fmt.Sprintf("journal_size_limit(%d)", walLimit(o.Reserve))} {
			q.Add("_pragma", p)
		}
		q.Set("_txlock", txlock)
		q.Set("_time_format", "sqlite")
		return "file:" + escapePath(path) + "?" + q.Encode()
	}
	if err := privateFiles(path); err != nil {
		return nil, err
	}
	w, err := sql.Open("sqlite", dsn("immediate"))
	if err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	r, err := sql.Open("sqlite", dsn("deferred"))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	r.SetMaxOpenConns(4)
	r.SetMaxIdleConns(4)
	r.SetConnMaxIdleTime(0)
	s := &Store{w: w, r: r, stop: make(chan struct{}), stopped: make(chan struct{}), space: newSpace(path, o.Reserve)}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.ensureReserve(); err != nil {
		s.space.setFull() // no room for it: full until there is
	}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, err
	}
	go s.checkpointLoop()
	return s, nil
}

// privateFiles creates the database file 0600 if it is missing, and
// narrows it and its WAL and shared-memory files to 0600 if they are
// readable by others: they hold every prompt and result. SQLite gives the
// WAL and shared-memory files it creates the database file's mode.
func privateFiles(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open sqlite: %w", err)
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, 0o600); err != nil {
				return fmt.Errorf("open sqlite: make %s private: %w", p, err)
			}
		}
	}
	return nil
}

// escapePath makes a file path safe inside a file: URI, where SQLite
// would read '?' as the start of the query, '#' as a fragment and '%' as an
// escape.
func escapePath(path string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
}

// checkpointInterval is how often the WAL is copied back into the database.
const checkpointInterval = 250 * time.Millisecond

// checkpointLoop checkpoints the WAL in the background. Left to SQLite,
// the commit that crosses the auto-checkpoint size does the checkpoint and
// its fsyncs while holding the only write connection; here, writers go on
// while a reader connection checkpoints.
func (s *Store) checkpointLoop() {
	defer close(s.stopped)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	for tick := 1; ; tick++ {
		select {
		case <-s.stop:
			return
		case <-t.C:
			// PASSIVE never blocks readers or the writer. While the store
			// is full the checkpoint waits for the vacuum (space.go).
			if s.space.isFull() {
				s.recoverRoom(context.Background())
				continue
			}
			s.checkpointPassive()
			if tick%maintainEvery == 0 {
				s.maintain(context.Background())
			}
		}
	}
}

// Close checkpoints the WAL fully and closes both pools.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		if s.stmts != nil { // the checkpointer started
			<-s.stopped
			s.w.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`)
		}
	})
	for _, st := range s.stmts {
		st.Close()
	}
	if s.batchGet != nil {
		s.batchGet.Close()
	}
	return errors.Join(s.r.Close(), s.w.Close())
}

// pageSize suits rows of a few KB (a request's params): with SQLite's
// default 4 KiB pages a 2.6 KB request fills a page alone, wasting a third
// of the file and of every write.
const pageSize = 16384

func (s *Store) migrate(ctx context.Context) error {
	var tables int
	if err := s.w.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master`).Scan(&tables); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if tables == 0 {
		// A new file: the page size can only change outside WAL mode.
		for _, q := range []string{`PRAGMA journal_mode=DELETE`, fmt.Sprintf(`PRAGMA page_size=%d`, pageSize), `PRAGMA auto_vacuum=INCREMENTAL`,
			`VACUUM`, `PRAGMA journal_mode=WAL`} {
			if _, err := s.w.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("migrate: %s: %w", q, err)
			}
		}
	}
	if _, err := s.w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	sort.Strings(names)
	for _, name := range names {
		version := strings.TrimSuffix(strings.TrimPrefix(name, "migrations/"), ".sql")
		err := s.tx(ctx, func(tx *sql.Tx) error {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = ?`, version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			body, err := migrations.ReadFile(name)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, string(body)); err != nil {
				return err
			}
			_, err = tx.ExecContext(ctx, `INSERT INTO schema_migrations (version) VALUES (?)`, version)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate %s: %w", version, err)
		}
	}
	// A data dir from before auto_vacuum: convert it once (space.go).
	if err := s.convertAutoVacuum(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// execAffected runs one statement in a write transaction and returns how
// many rows it changed.
func (s *Store) execAffected(ctx context.Context, action, q string, args ...any) (int, error) {
	n := 0
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			return err
		}
		m, _ := res.RowsAffected()
		n = int(m)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("%s: %w", action, err)
	}
	return n, nil
}

// tx runs fn in a write transaction. A full disk fails it with
// store.ErrFull, and while the store is full it fails at once (space.go).
func (s *Store) tx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	if err := s.refuseWhenFull(); err != nil {
		return err
	}
	return s.write(ctx, fn)
}

// write runs fn in a write transaction, full or not (see txFreeing).
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.classify(err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return s.classify(err)
	}
	return s.classify(tx.Commit())
}

func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(v int64) time.Time { return time.UnixMicro(v).UTC() }

func fromNullMicros(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMicros(v.Int64)
	return &t
}

type scanner interface{ Scan(dest ...any) error }

func splitBetas(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func querySeqs(ctx context.Context, tx *sql.Tx, q string, args ...any) ([]int64, error) {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
