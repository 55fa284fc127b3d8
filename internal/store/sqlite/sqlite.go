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
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/ids"
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

// Hot statements, prepared once at Open so that the claim and complete paths
// never pay for parsing SQL.
const (
	qOpenBatches = `SELECT seq, id, expires_at, betas FROM batches
		WHERE status != 'ended' AND status = 'in_progress' AND expires_at > ?
		ORDER BY last_claimed_at, seq`
	// The LIMIT is "? + 0", not a bare "?": SQLite plans a bare LIMIT
	// parameter with its bound value and so re-prepares the statement
	// whenever the next claim asks for another number of requests, which
	// the dispatcher's do nearly every time (BenchmarkClaimComplete, vary).
	qClaim = `UPDATE OR FAIL tasks SET state = 1, lease_owner = ?, lease_expires = ?, attempts = attempts + 1
		WHERE id IN (SELECT id FROM tasks WHERE batch_seq = ? AND backend = ? AND state = 0 AND next_at <= ? ORDER BY next_at, id LIMIT ? + 0)
		RETURNING id, attempts`
	qClaimParams = `SELECT id, custom_id, params FROM requests WHERE id IN (SELECT value FROM json_each(?))`
	// qClaimParamsRange is qClaimParams for a claim of consecutive ids.
	qClaimParamsRange = `SELECT id, custom_id, params FROM requests WHERE id >= ? AND id <= ?`
	qTouchBatch       = `UPDATE batches SET last_claimed_at = ? WHERE seq = ?`
	qBatchState       = `SELECT status, expires_at FROM batches WHERE seq = ?`
	qRetry            = `UPDATE tasks SET state = 0, next_at = ?, last_error = ?, lease_owner = NULL, lease_expires = NULL, upstream = NULL
		WHERE id = ? AND state = 1 AND lease_owner = ? AND attempts = ?`
	qAddCounts = `UPDATE batches SET n_succeeded = n_succeeded + ?, n_errored = n_errored + ?,
		n_canceled = n_canceled + ?, n_expired = n_expired + ? WHERE seq = ?`
	qEndIfDone = `UPDATE batches SET status = 'ended', ended_at = ?
		WHERE seq = ? AND status IN ('in_progress', 'canceling')
		AND n_succeeded + n_errored + n_canceled + n_expired >= total RETURNING ` + batchCols
	qBatchBySeq = `SELECT ` + batchCols + ` FROM batches WHERE seq = ?`
	qBatchGet   = `SELECT ` + batchCols + ` FROM batches WHERE id = ? AND workspace = ? AND status != 'creating'`
)

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

// qSettle is the guard: only the current attempt of the lease holder, and
// only while the request is still running, settles it. It returns the
// attempt with the id: one call may hold a stale attempt of the same
// request beside the current one (see settleOutcomes).
func qSettle(n int) string {
	return `DELETE FROM tasks WHERE state = 1 AND lease_owner = ? AND (id, attempts) IN (VALUES ` +
		strings.TrimSuffix(strings.Repeat("(?,?),", n), ",") + `) RETURNING id, attempts`
}

func qAddResults(n int) string {
	return `INSERT OR FAIL INTO results (id, batch_seq, custom_id, result_type, result) VALUES ` +
		strings.TrimSuffix(strings.Repeat("(?,?,?,?,?),", n), ",")
}

// Requests are inserted in chunks of these sizes, for the same reason: a
// statement of 200 rows took longer to parse than to run.
var insertChunkSizes = []int{200, 40, 8, 1}

const qMaxRequestID = `SELECT coalesce(max(id), 0) FROM requests`

func qInsertRequests(n int) string {
	return `INSERT OR FAIL INTO requests (batch_seq, custom_id, model, params) VALUES ` +
		strings.TrimSuffix(strings.Repeat("(?,?,?,?),", n), ",")
}

func qInsertTasks(n int) string {
	return `INSERT OR FAIL INTO tasks (id, batch_seq, backend) VALUES ` + strings.TrimSuffix(strings.Repeat("(?,?,?),", n), ",")
}

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

const batchCols = `seq, id, workspace, status, total, n_succeeded, n_errored, n_canceled, n_expired,
	created_at, expires_at, ended_at, cancel_initiated_at, archived_at, betas`

type scanner interface{ Scan(dest ...any) error }

func splitBetas(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func scanBatch(row scanner) (*store.Batch, error) {
	var (
		b                         store.Batch
		created, expires          int64
		ended, cancelInit, archiv sql.NullInt64
		betas                     string
	)
	err := row.Scan(&b.Seq, &b.ID, &b.Workspace, &b.Status, &b.Total, &b.Counts.Succeeded, &b.Counts.Errored,
		&b.Counts.Canceled, &b.Counts.Expired, &created, &expires, &ended, &cancelInit, &archiv, &betas)
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, store.ErrNotFound
		}
		return nil, err
	}
	b.CreatedAt = fromMicros(created)
	b.ExpiresAt = fromMicros(expires)
	b.EndedAt = fromNullMicros(ended)
	b.CancelInitiatedAt = fromNullMicros(cancelInit)
	b.ArchivedAt = fromNullMicros(archiv)
	b.Betas = splitBetas(betas)
	b.Counts.Processing = b.Total - b.Counts.Succeeded - b.Counts.Errored - b.Counts.Canceled - b.Counts.Expired
	return &b, nil
}

// BatchInsert implements store.Store.
func (s *Store) BatchInsert(ctx context.Context, p store.BatchInsertParams) (*store.Batch, error) {
	var b *store.Batch
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if p.MaxInProgress > 0 {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM batches WHERE workspace = ? AND status != 'ended'`, p.Workspace).Scan(&n); err != nil {
				return err
			}
			if n >= p.MaxInProgress {
				return store.ErrTooManyBatches
			}
		}
		var err error
		upload := p.UploadUntil
		if upload.IsZero() {
			upload = p.CreatedAt
		}
		b, err = scanBatch(tx.QueryRowContext(ctx, `INSERT INTO batches (id, workspace, status, created_at, expires_at, betas, upload_expires)
			VALUES (?, ?, 'creating', ?, ?, ?, ?) RETURNING `+batchCols, p.ID, p.Workspace, micros(p.CreatedAt), micros(p.ExpiresAt),
			strings.Join(p.Betas, ","), micros(upload)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("insert batch: %w", err)
	}
	return b, nil
}

// RequestsInsert implements store.Store.
func (s *Store) RequestsInsert(ctx context.Context, p store.RequestsInsertParams) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var before int64
		if err := s.stmt(ctx, tx, qMaxRequestID).QueryRowContext(ctx).Scan(&before); err != nil {
			return err
		}
		// One multi-row INSERT per chunk: far fewer trips through the driver
		// than a statement per row.
		args := make([]any, 0, insertChunkSizes[0]*4)
		for start := 0; start < len(p.Requests); {
			n := chunkLen(len(p.Requests)-start, insertChunkSizes)
			args = args[:0]
			for _, r := range p.Requests[start : start+n] {
				args = append(args, p.BatchSeq, r.CustomID, r.Model, []byte(r.Params))
			}
			if _, err := s.stmt(ctx, tx, qInsertRequests(n)).ExecContext(ctx, args...); err != nil {
				return err
			}
			start += n
		}
		// This transaction is the only writer, so the group's ids follow the
		// old maximum in order; the tasks take their backends in that order.
		var after int64
		if err := s.stmt(ctx, tx, qMaxRequestID).QueryRowContext(ctx).Scan(&after); err != nil {
			return err
		}
		if after-before != int64(len(p.Requests)) {
			return fmt.Errorf("request ids not contiguous: %d new ids for %d requests", after-before, len(p.Requests))
		}
		for start := 0; start < len(p.Requests); {
			n := chunkLen(len(p.Requests)-start, insertChunkSizes)
			args = args[:0]
			for i, r := range p.Requests[start : start+n] {
				args = append(args, before+int64(start+i)+1, p.BatchSeq, r.Backend)
			}
			if _, err := s.stmt(ctx, tx, qInsertTasks(n)).ExecContext(ctx, args...); err != nil {
				return err
			}
			start += n
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("insert requests: %w", err)
	}
	return nil
}

// BatchPublish implements store.Store.
func (s *Store) BatchPublish(ctx context.Context, p store.BatchPublishParams) (*store.Batch, error) {
	var b *store.Batch
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var cost any // NULL: no budget holds it
		if bg := p.Budget; bg != nil {
			// The write transaction is the only writer: the sum holds
			// until it commits.
			var reserved float64
			if err := tx.QueryRowContext(ctx, qBudgetReserved, p.BatchSeq, p.BatchSeq).Scan(&reserved); err != nil {
				return err
			}
			if bg.Exceeded(reserved) {
				return &store.BudgetError{Budget: *bg, ReservedUSD: reserved}
			}
			cost = bg.CostUSD
		}
		var err error
		b, err = scanBatch(tx.QueryRowContext(ctx, `UPDATE batches SET status = 'in_progress', total = ?, max_cost_usd = ?
			WHERE seq = ? AND status = 'creating' RETURNING `+batchCols, p.Total, cost, p.BatchSeq))
		if err != nil {
			return err
		}
		return recordEvent(ctx, tx, b, store.EventBatchCreated, b.CreatedAt)
	})
	if err != nil {
		return nil, fmt.Errorf("publish batch: %w", err)
	}
	return b, nil
}

// qBudgetReserved sums what the other batches in progress of batch ?'s
// workspace may still cost.
const qBudgetReserved = `SELECT coalesce(sum(max_cost_usd), 0) FROM batches
	WHERE workspace = (SELECT workspace FROM batches WHERE seq = ?) AND status IN ('in_progress', 'canceling') AND seq != ?`

// BatchDiscard implements store.Store.
func (s *Store) BatchDiscard(ctx context.Context, batchSeq int64) error {
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		return deleteBatch(ctx, tx, batchSeq)
	})
	if err != nil {
		return fmt.Errorf("discard batch: %w", err)
	}
	return nil
}

func deleteBatch(ctx context.Context, tx *sql.Tx, seq int64) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM batches WHERE seq = ?`, seq); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO purges (batch_seq) VALUES (?)`, seq)
	return err
}

// BatchUploadRenew implements store.Store.
func (s *Store) BatchUploadRenew(ctx context.Context, p store.BatchUploadRenewParams) error {
	n, err := s.execAffected(ctx, "renew upload", `UPDATE batches SET upload_expires = ? WHERE seq = ? AND status = 'creating'`,
		micros(p.Until), p.BatchSeq)
	if err == nil && n == 0 {
		err = fmt.Errorf("renew upload: %w", store.ErrNotFound)
	}
	return err
}

// BatchesDiscardStale implements store.Store.
func (s *Store) BatchesDiscardStale(ctx context.Context, p store.BatchesDiscardStaleParams) (int, error) {
	n := 0
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		if err := checkLead(ctx, tx, p.Lead, p.Now); err != nil {
			return err
		}
		seqs, err := querySeqs(ctx, tx, `SELECT seq FROM batches WHERE status = 'creating' AND upload_expires < ?`, micros(p.Now))
		if err != nil {
			return err
		}
		for _, seq := range seqs {
			if err := deleteBatch(ctx, tx, seq); err != nil {
				return err
			}
		}
		n = len(seqs)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("discard stale batches: %w", err)
	}
	return n, nil
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

// BatchGet implements store.Store.
func (s *Store) BatchGet(ctx context.Context, p store.BatchGetParams) (*store.Batch, error) {
	b, err := scanBatch(s.batchGet.QueryRowContext(ctx, p.ID, p.Workspace))
	if err != nil {
		return nil, fmt.Errorf("get batch: %w", err)
	}
	return b, nil
}

// BatchList implements store.Store.
func (s *Store) BatchList(ctx context.Context, p store.BatchListParams) (*store.BatchPage, error) {
	cursor, backwards := p.AfterID, false
	if p.BeforeID != "" {
		cursor, backwards = p.BeforeID, true
	}
	q := `SELECT ` + batchCols + ` FROM batches WHERE workspace = ? AND status != 'creating'`
	args := []any{p.Workspace}
	if cursor != "" {
		var seq int64
		err := s.r.QueryRowContext(ctx, `SELECT seq FROM batches WHERE id = ? AND workspace = ? AND status != 'creating'`,
			cursor, p.Workspace).Scan(&seq)
		if err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return nil, fmt.Errorf("list batches: cursor: %w", store.ErrNotFound)
			}
			return nil, fmt.Errorf("list batches: %w", err)
		}
		if backwards {
			q += ` AND seq > ?`
		} else {
			q += ` AND seq < ?`
		}
		args = append(args, seq)
	}
	if backwards {
		q += ` ORDER BY seq ASC LIMIT ?`
	} else {
		q += ` ORDER BY seq DESC LIMIT ?`
	}
	args = append(args, p.Limit+1)
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	defer rows.Close()
	page := &store.BatchPage{}
	for rows.Next() {
		b, err := scanBatch(rows)
		if err != nil {
			return nil, fmt.Errorf("list batches: %w", err)
		}
		page.Batches = append(page.Batches, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	if len(page.Batches) > p.Limit {
		page.HasMore = true
		page.Batches = page.Batches[:p.Limit]
	}
	if backwards {
		// Fetched oldest-first to take the ones nearest the cursor; the page
		// itself is still newest-first.
		for i, j := 0, len(page.Batches)-1; i < j; i, j = i+1, j-1 {
			page.Batches[i], page.Batches[j] = page.Batches[j], page.Batches[i]
		}
	}
	return page, nil
}

// settle applies a count delta and ends the batch if every request is now
// settled. The end is guarded by status, so it happens exactly once.
func (s *Store) settle(ctx context.Context, tx *sql.Tx, seq int64, d store.Counts, now time.Time) (*store.BatchChange, error) {
	if d != (store.Counts{}) {
		_, err := s.stmt(ctx, tx, qAddCounts).ExecContext(ctx, d.Succeeded, d.Errored, d.Canceled, d.Expired, seq)
		if err != nil {
			return nil, err
		}
	}
	b, err := scanBatch(s.stmt(ctx, tx, qEndIfDone).QueryRowContext(ctx, micros(now), seq))
	if err == nil {
		if err := recordEvent(ctx, tx, b, store.EventBatchEnded, now); err != nil {
			return nil, err
		}
		return &store.BatchChange{Batch: b, Ended: true}, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	b, err = scanBatch(s.stmt(ctx, tx, qBatchBySeq).QueryRowContext(ctx, seq))
	if err != nil {
		return nil, err
	}
	return &store.BatchChange{Batch: b}, nil
}

// BatchCancel implements store.Store.
func (s *Store) BatchCancel(ctx context.Context, p store.BatchCancelParams) (*store.BatchChange, error) {
	var ch *store.BatchChange
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		b, err := scanBatch(tx.QueryRowContext(ctx, `SELECT `+batchCols+` FROM batches
			WHERE id = ? AND workspace = ? AND status != 'creating'`, p.ID, p.Workspace))
		if err != nil {
			return err
		}
		switch b.Status {
		case store.StatusEnded:
			return store.ErrConflict
		case store.StatusCanceling:
			ch = &store.BatchChange{Batch: b}
			return nil
		}
		canceling, err := scanBatch(tx.QueryRowContext(ctx, `UPDATE batches SET status = 'canceling', cancel_initiated_at = ?
			WHERE seq = ? RETURNING `+batchCols, micros(p.Now), b.Seq))
		if err != nil {
			return err
		}
		if err := recordEvent(ctx, tx, canceling, store.EventBatchCanceling, p.Now); err != nil {
			return err
		}
		n, err := settlePending(ctx, tx, b.Seq, `'canceled'`, `NULL`, "")
		if err != nil {
			return err
		}
		ch, err = s.settle(ctx, tx, b.Seq, store.Counts{Canceled: n}, p.Now)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cancel batch: %w", err)
	}
	return ch, nil
}

// settlePending moves a batch's pending tasks matching cond to results of
// the given type and result expressions, returning how many it moved.
func settlePending(ctx context.Context, tx *sql.Tx, seq int64, typeExpr, resultExpr, cond string) (int64, error) {
	res, err := tx.ExecContext(ctx, `INSERT INTO results (id, batch_seq, custom_id, result_type, result)
		SELECT t.id, t.batch_seq, r.custom_id, `+typeExpr+`, `+resultExpr+` FROM tasks t JOIN requests r ON r.id = t.id
		WHERE t.batch_seq = ? AND t.state = 0`+cond, seq)
	if err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	if _, err := tx.ExecContext(ctx, `DELETE FROM tasks WHERE batch_seq = ? AND state = 0`+strings.ReplaceAll(cond, "t.", ""), seq); err != nil {
		return 0, err
	}
	return n, nil
}

// recordEvent writes the event of a batch change to the outbox, with one
// delivery per enabled endpoint of the workspace that wants its type, in
// the transaction of the change itself: the change and its notification
// commit together or not at all. The (batch, type) key makes a replayed
// transition write nothing.
func recordEvent(ctx context.Context, tx *sql.Tx, b *store.Batch, typ string, now time.Time) error {
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO events (id, workspace, batch_id, type, created_at, data) VALUES (?, ?, ?, ?, ?, ?)`,
		ids.New("evt_"), b.Workspace, b.ID, typ, micros(now), data)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO deliveries (event_seq, endpoint_id, next_at)
		SELECT ?, id, ? FROM webhook_endpoints WHERE workspace = ? AND enabled = 1
		AND (event_types = '' OR instr(',' || event_types || ',', ',' || ? || ',') > 0)`, seq, micros(now), b.Workspace, typ)
	return err
}

// EventsList implements store.Store.
func (s *Store) EventsList(ctx context.Context, p store.EventsListParams) ([]*store.Event, error) {
	q := `SELECT seq, id, workspace, batch_id, type, created_at, data FROM events WHERE seq > ?`
	args := []any{p.AfterSeq}
	if !p.AllWorkspaces {
		q += ` AND workspace = ?`
		args = append(args, p.Workspace)
	}
	if p.BatchID != "" {
		q += ` AND batch_id = ?`
		args = append(args, p.BatchID)
	}
	if !p.Since.IsZero() {
		q += ` AND created_at >= ?`
		args = append(args, micros(p.Since))
	}
	rows, err := s.r.QueryContext(ctx, q+` ORDER BY seq LIMIT ?`, append(args, p.Limit)...)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	defer rows.Close()
	var out []*store.Event
	for rows.Next() {
		var e store.Event
		var created int64
		var data []byte
		if err := rows.Scan(&e.Seq, &e.ID, &e.Workspace, &e.BatchID, &e.Type, &created, &data); err != nil {
			return nil, fmt.Errorf("list events: %w", err)
		}
		e.CreatedAt = fromMicros(created)
		if err := json.Unmarshal(data, &e.Batch); err != nil {
			return nil, fmt.Errorf("list events: %s: %w", e.ID, err)
		}
		out = append(out, &e)
	}
	return out, rows.Err()
}

// EventsLast implements store.Store.
func (s *Store) EventsLast(ctx context.Context, workspace string) (int64, error) {
	var v sql.NullInt64
	q, args := `SELECT max(seq) FROM events WHERE workspace = ?`, []any{workspace}
	if workspace == "" {
		q, args = `SELECT max(seq) FROM events`, nil
	}
	if err := s.r.QueryRowContext(ctx, q, args...).Scan(&v); err != nil {
		return 0, fmt.Errorf("last event: %w", err)
	}
	return v.Int64, nil
}

// EventTestInsert implements store.Store.
func (s *Store) EventTestInsert(ctx context.Context, workspace, endpointID string, now time.Time) (string, int64, error) {
	evID := ids.New("evt_")
	var deliveryID int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM webhook_endpoints WHERE id = ? AND workspace = ?`, endpointID, workspace).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return store.ErrNotFound
		}
		// A test event belongs to no batch; its batch_id is its own id,
		// which keeps the (batch, type) key unique.
		res, err := tx.ExecContext(ctx, `INSERT INTO events (id, workspace, batch_id, type, created_at, data) VALUES (?, ?, ?, ?, ?, 'null')`,
			evID, workspace, evID, store.EventTest, micros(now))
		if err != nil {
			return err
		}
		seq, err := res.LastInsertId()
		if err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `INSERT INTO deliveries (event_seq, endpoint_id, next_at) VALUES (?, ?, ?) RETURNING id`,
			seq, endpointID, micros(now)).Scan(&deliveryID)
	})
	if err != nil {
		return "", 0, fmt.Errorf("insert test event: %w", err)
	}
	return evID, deliveryID, nil
}

const endpointCols = `id, workspace, url, description, event_types, secret, coalesce(previous_secret, ''), previous_expires_at,
	enabled, disabled_reason, failing_since, created_at, updated_at`

func scanEndpoint(row scanner) (*store.WebhookEndpoint, error) {
	var (
		e                store.WebhookEndpoint
		types            string
		prevExp, failing sql.NullInt64
		created, updated int64
		enabled          int
	)
	err := row.Scan(&e.ID, &e.Workspace, &e.URL, &e.Description, &types, &e.Secret, &e.PreviousSecret, &prevExp,
		&enabled, &e.DisabledReason, &failing, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	e.EventTypes = splitBetas(types)
	e.PreviousExpiresAt, e.FailingSince = fromNullMicros(prevExp), fromNullMicros(failing)
	e.Enabled = enabled == 1
	e.CreatedAt, e.UpdatedAt = fromMicros(created), fromMicros(updated)
	return &e, nil
}

// WebhookEndpointCreate implements store.Store.
func (s *Store) WebhookEndpointCreate(ctx context.Context, e *store.WebhookEndpoint) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO webhook_endpoints (id, workspace, url, description, event_types, secret, enabled, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)`, e.ID, e.Workspace, e.URL, e.Description, strings.Join(e.EventTypes, ","), e.Secret,
			micros(e.CreatedAt), micros(e.CreatedAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("create webhook endpoint: %w", err)
	}
	e.Enabled, e.UpdatedAt = true, e.CreatedAt
	return nil
}

// WebhookEndpointGet implements store.Store.
func (s *Store) WebhookEndpointGet(ctx context.Context, workspace, id string) (*store.WebhookEndpoint, error) {
	e, err := scanEndpoint(s.r.QueryRowContext(ctx, `SELECT `+endpointCols+` FROM webhook_endpoints WHERE id = ? AND workspace = ?`, id, workspace))
	if err != nil {
		return nil, fmt.Errorf("get webhook endpoint: %w", err)
	}
	return e, nil
}

// WebhookEndpointList implements store.Store.
func (s *Store) WebhookEndpointList(ctx context.Context, workspace string) ([]*store.WebhookEndpoint, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+endpointCols+` FROM webhook_endpoints WHERE workspace = ? ORDER BY created_at, id`, workspace)
	if err != nil {
		return nil, fmt.Errorf("list webhook endpoints: %w", err)
	}
	defer rows.Close()
	var out []*store.WebhookEndpoint
	for rows.Next() {
		e, err := scanEndpoint(rows)
		if err != nil {
			return nil, fmt.Errorf("list webhook endpoints: %w", err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// WebhookEndpointUpdate implements store.Store.
func (s *Store) WebhookEndpointUpdate(ctx context.Context, p store.WebhookEndpointUpdateParams) (*store.WebhookEndpoint, error) {
	var e *store.WebhookEndpoint
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if e, err = scanEndpoint(tx.QueryRowContext(ctx, `SELECT `+endpointCols+` FROM webhook_endpoints WHERE id = ? AND workspace = ?`, p.ID, p.Workspace)); err != nil {
			return err
		}
		p.Apply(e)
		var prevExp any
		if e.PreviousExpiresAt != nil {
			prevExp = micros(*e.PreviousExpiresAt)
		}
		var failing any
		if e.FailingSince != nil {
			failing = micros(*e.FailingSince)
		}
		enabled := 0
		if e.Enabled {
			enabled = 1
		}
		_, err = tx.ExecContext(ctx, `UPDATE webhook_endpoints SET url = ?, description = ?, event_types = ?, secret = ?,
			previous_secret = nullif(?, ''), previous_expires_at = ?, enabled = ?, disabled_reason = ?, failing_since = ?, updated_at = ?
			WHERE id = ?`, e.URL, e.Description, strings.Join(e.EventTypes, ","), e.Secret, e.PreviousSecret, prevExp, enabled,
			e.DisabledReason, failing, micros(p.Now), e.ID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("update webhook endpoint: %w", err)
	}
	return e, nil
}

// WebhookEndpointDelete implements store.Store. Its pending deliveries go
// with it.
func (s *Store) WebhookEndpointDelete(ctx context.Context, workspace, id string) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM webhook_endpoints WHERE id = ? AND workspace = ?`, id, workspace)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrNotFound
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM deliveries WHERE endpoint_id = ? AND state IN (0, 1)`, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete webhook endpoint: %w", err)
	}
	return nil
}

// DeliveriesPending implements store.Store.
func (s *Store) DeliveriesPending(ctx context.Context, endpointID string) (int, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM deliveries WHERE endpoint_id = ? AND state IN (0, 1)`, endpointID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count deliveries: %w", err)
	}
	return n, nil
}

var deliveryStates = []string{store.DeliveryPending, store.DeliveryInFlight, store.DeliverySucceeded, store.DeliveryFailed}

func deliveryState(name string) int {
	for i, s := range deliveryStates {
		if s == name {
			return i
		}
	}
	return -1
}

// DeliveriesClaim implements store.Store.
func (s *Store) DeliveriesClaim(ctx context.Context, p store.DeliveriesClaimParams) ([]*store.Delivery, error) {
	var out []*store.Delivery
	err := s.tx(ctx, func(tx *sql.Tx) error {
		out = nil
		per := p.PerEndpoint
		if per <= 0 {
			per = p.Limit
		}
		rows, err := tx.QueryContext(ctx, `UPDATE deliveries SET state = 1, lease_owner = ?, lease_expires = ?
			WHERE id IN (
				SELECT id FROM (
					SELECT d.id, d.next_at,
						row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_at, d.id) AS rn,
						(SELECT count(*) FROM deliveries x WHERE x.endpoint_id = d.endpoint_id AND x.state = 1 AND x.lease_expires >= ?) AS busy
					FROM deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.enabled = 1
					WHERE (d.state = 0 AND d.next_at <= ?) OR (d.state = 1 AND d.lease_expires < ?))
				WHERE rn + busy <= ? ORDER BY next_at LIMIT ?)
			RETURNING id, attempts, event_seq, endpoint_id`, p.Owner, micros(p.LeaseUntil), micros(p.Now), micros(p.Now), micros(p.Now), per, p.Limit)
		if err != nil {
			return err
		}
		type claimed struct {
			d        *store.Delivery
			eventSeq int64
			endpoint string
		}
		var cs []claimed
		for rows.Next() {
			c := claimed{d: &store.Delivery{State: store.DeliveryInFlight}}
			if err := rows.Scan(&c.d.ID, &c.d.Attempt, &c.eventSeq, &c.endpoint); err != nil {
				rows.Close()
				return err
			}
			c.d.Attempt++
			cs = append(cs, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, c := range cs {
			var e store.Event
			var created int64
			var data []byte
			err := tx.QueryRowContext(ctx, `SELECT seq, id, workspace, batch_id, type, created_at, data FROM events WHERE seq = ?`, c.eventSeq).
				Scan(&e.Seq, &e.ID, &e.Workspace, &e.BatchID, &e.Type, &created, &data)
			if err != nil {
				return err
			}
			e.CreatedAt = fromMicros(created)
			if err := json.Unmarshal(data, &e.Batch); err != nil {
				return err
			}
			ep, err := scanEndpoint(tx.QueryRowContext(ctx, `SELECT `+endpointCols+` FROM webhook_endpoints WHERE id = ?`, c.endpoint))
			if err != nil {
				return err
			}
			c.d.Event, c.d.Endpoint = &e, ep
			out = append(out, c.d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim deliveries: %w", err)
	}
	return out, nil
}

// DeliveriesHeartbeat implements store.Store.
func (s *Store) DeliveriesHeartbeat(ctx context.Context, p store.DeliveriesHeartbeatParams) error {
	_, err := s.execAffected(ctx, "heartbeat deliveries", `UPDATE deliveries SET lease_expires = ? WHERE state = 1 AND lease_owner = ?`,
		micros(p.LeaseUntil), p.Owner)
	return err
}

// DeliveryRecord implements store.Store.
func (s *Store) DeliveryRecord(ctx context.Context, p store.DeliveryRecordParams) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		state := deliveryState(p.State)
		if state < 0 || state == 1 {
			return fmt.Errorf("bad delivery state %q", p.State)
		}
		var endpoint string
		err := tx.QueryRowContext(ctx, `UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, lease_owner = NULL, lease_expires = NULL
			WHERE id = ? AND state = 1 AND lease_owner = ? AND attempts = ? RETURNING endpoint_id`,
			state, p.Attempt, micros(p.RetryAt), p.ID, p.Owner, p.Attempt-1).Scan(&endpoint)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrConflict // no longer ours: the lease lapsed and another took it
		}
		if err != nil {
			return err
		}
		r := p.Record
		if _, err := tx.ExecContext(ctx, `INSERT INTO delivery_attempts (delivery_id, endpoint_id, attempt, at, status, error_class, duration_us, response, error, truncated)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, p.ID, endpoint, p.Attempt, micros(p.Now), r.Status, r.ErrorClass, r.Duration.Microseconds(), r.Response, r.Error, r.Truncated); err != nil {
			return err
		}
		// The endpoint's health: failing since the first failure after a
		// success, disabled when asked.
		if p.State == store.DeliverySucceeded {
			_, err = tx.ExecContext(ctx, `UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ?`, endpoint)
		} else {
			_, err = tx.ExecContext(ctx, `UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, ?) WHERE id = ?`, micros(p.Now), endpoint)
		}
		if err != nil {
			return err
		}
		if p.Disable != "" {
			_, err = tx.ExecContext(ctx, `UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ? WHERE id = ?`, p.Disable, micros(p.Now), endpoint)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("record delivery: %w", err)
	}
	return nil
}

// DeliveryNextDue implements store.Store.
func (s *Store) DeliveryNextDue(ctx context.Context) (time.Time, error) {
	var v sql.NullInt64
	// A disabled endpoint's pending deliveries wait, so they are never due.
	if err := s.r.QueryRowContext(ctx, `SELECT min(next_at) FROM (SELECT d.next_at FROM deliveries d WHERE d.state = 0
		AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.id = d.endpoint_id AND w.enabled = 1) ORDER BY d.next_at LIMIT 1)`).Scan(&v); err != nil {
		return time.Time{}, fmt.Errorf("next delivery: %w", err)
	}
	if !v.Valid {
		return time.Time{}, nil
	}
	return fromMicros(v.Int64), nil
}

// DeliveryAttempts implements store.Store.
func (s *Store) DeliveryAttempts(ctx context.Context, workspace, endpointID string, limit int) ([]*store.Attempt, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT a.id, a.delivery_id, e.id, a.attempt, a.at, a.status, a.error_class, a.duration_us, a.response, a.error, a.truncated
		FROM delivery_attempts a JOIN webhook_endpoints w ON w.id = a.endpoint_id AND w.workspace = ?
		JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.seq = d.event_seq
		WHERE a.endpoint_id = ? ORDER BY a.id DESC LIMIT ?`, workspace, endpointID, limit)
	if err != nil {
		return nil, fmt.Errorf("list attempts: %w", err)
	}
	defer rows.Close()
	var out []*store.Attempt
	for rows.Next() {
		var a store.Attempt
		var at, dur int64
		if err := rows.Scan(&a.ID, &a.DeliveryID, &a.EventID, &a.Attempt, &at, &a.Status, &a.ErrorClass, &dur, &a.Response, &a.Error, &a.Truncated); err != nil {
			return nil, fmt.Errorf("list attempts: %w", err)
		}
		a.At, a.Duration = fromMicros(at), time.Duration(dur)*time.Microsecond
		out = append(out, &a)
	}
	return out, rows.Err()
}

// DeliveryResend implements store.Store.
func (s *Store) DeliveryResend(ctx context.Context, workspace string, deliveryID int64, now time.Time) error {
	n, err := s.execAffected(ctx, "resend delivery", `UPDATE deliveries SET state = 0, next_at = ?, lease_owner = NULL, lease_expires = NULL
		WHERE id = ? AND state != 1 AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE workspace = ?)`, micros(now), deliveryID, workspace)
	if err == nil && n == 0 {
		err = fmt.Errorf("resend delivery: %w", store.ErrNotFound)
	}
	return err
}

// DeliveriesRecover implements store.Store.
func (s *Store) DeliveriesRecover(ctx context.Context, workspace, endpointID string, since, now time.Time) (int, error) {
	n := 0
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var owned int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM webhook_endpoints WHERE id = ? AND workspace = ?`, endpointID, workspace).Scan(&owned); err != nil {
			return err
		}
		if owned == 0 {
			return store.ErrNotFound
		}
		res, err := tx.ExecContext(ctx, `UPDATE deliveries SET state = 0, next_at = ? WHERE endpoint_id = ? AND state = 3
			AND event_seq IN (SELECT seq FROM events WHERE created_at >= ?)`, micros(now), endpointID, micros(since))
		if err != nil {
			return err
		}
		m, _ := res.RowsAffected()
		n = int(m)
		// Replay what it missed: every event since then (and since the
		// endpoint exists) of a type it subscribes to that has no delivery
		// for it, because the endpoint was disabled when it happened. The
		// unique (event_seq, endpoint_id) keeps it to one delivery each;
		// webhook.test events belong to the endpoint they were sent to.
		res, err = tx.ExecContext(ctx, `INSERT INTO deliveries (event_seq, endpoint_id, next_at)
			SELECT e.seq, ep.id, ? FROM webhook_endpoints ep JOIN events e ON e.workspace = ep.workspace
			WHERE ep.id = ? AND e.created_at >= max(?, ep.created_at) AND e.type != ?
			AND (ep.event_types = '' OR instr(',' || ep.event_types || ',', ',' || e.type || ',') > 0)
			AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.endpoint_id = ep.id)
			ORDER BY e.seq`, micros(now), endpointID, micros(since), store.EventTest)
		if err != nil {
			return err
		}
		m, _ = res.RowsAffected()
		n += int(m)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("recover deliveries: %w", err)
	}
	return n, nil
}

// BatchDelete implements store.Store.
func (s *Store) BatchDelete(ctx context.Context, p store.BatchGetParams) error {
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		var seq int64
		var status string
		err := tx.QueryRowContext(ctx, `SELECT seq, status FROM batches WHERE id = ? AND workspace = ? AND status != 'creating'`,
			p.ID, p.Workspace).Scan(&seq, &status)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		if status != store.StatusEnded {
			return store.ErrConflict
		}
		return deleteBatch(ctx, tx, seq)
	})
	if err != nil {
		return fmt.Errorf("delete batch: %w", err)
	}
	return nil
}

// BatchesExpire implements store.Store.
func (s *Store) BatchesExpire(ctx context.Context, p store.BatchesExpireParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		out = nil
		if err := checkLead(ctx, tx, p.Lead, p.Now); err != nil {
			return err
		}
		seqs, err := querySeqs(ctx, tx, `SELECT seq FROM batches WHERE status IN ('in_progress', 'canceling') AND expires_at <= ?`, micros(p.Now))
		if err != nil {
			return err
		}
		for _, seq := range seqs {
			// No answer before the expiry (never sent, or rescued from a
			// process that died with it): expired. Failed and waiting to
			// retry: errored with the last error.
			expired, err := settlePending(ctx, tx, seq, `'expired'`, `NULL`, ` AND t.last_error IS NULL`)
			if err != nil {
				return err
			}
			errored, err := settlePending(ctx, tx, seq, `'errored'`, `t.last_error`, ` AND t.last_error IS NOT NULL`)
			if err != nil {
				return err
			}
			ch, err := s.settle(ctx, tx, seq, store.Counts{Expired: expired, Errored: errored}, p.Now)
			if err != nil {
				return err
			}
			if expired+errored > 0 || ch.Ended {
				out = append(out, ch)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("expire batches: %w", err)
	}
	return out, nil
}

// BatchesArchive implements store.Store.
func (s *Store) BatchesArchive(ctx context.Context, p store.BatchesArchiveParams) (int, error) {
	n := 0
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		if err := checkLead(ctx, tx, p.Lead, p.Now); err != nil {
			return err
		}
		seqs, err := querySeqs(ctx, tx, `UPDATE batches SET archived_at = ?
			WHERE status = 'ended' AND archived_at IS NULL AND created_at <= ? RETURNING seq`,
			micros(p.Now), micros(p.CreatedBefore))
		if err != nil {
			return err
		}
		for _, seq := range seqs {
			if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO purges (batch_seq) VALUES (?)`, seq); err != nil {
				return err
			}
		}
		n = len(seqs)
		return pruneEvents(ctx, tx, p.CreatedBefore)
	})
	if err != nil {
		return 0, fmt.Errorf("archive batches: %w", err)
	}
	return n, nil
}

// pruneEvents deletes events older than the retention, with their
// deliveries and attempts, a bounded chunk per sweep.
func pruneEvents(ctx context.Context, tx *sql.Tx, before time.Time) error {
	seqs, err := querySeqs(ctx, tx, `SELECT seq FROM events WHERE created_at <= ? ORDER BY created_at LIMIT 1000`, micros(before))
	if err != nil || len(seqs) == 0 {
		return err
	}
	list := make([]byte, 0, 8*len(seqs))
	list = append(list, '[')
	for i, seq := range seqs {
		if i > 0 {
			list = append(list, ',')
		}
		list = strconv.AppendInt(list, seq, 10)
	}
	list = append(list, ']')
	for _, q := range []string{
		`DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_seq IN (SELECT value FROM json_each(?)))`,
		`DELETE FROM deliveries WHERE event_seq IN (SELECT value FROM json_each(?))`,
		`DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))`,
	} {
		if _, err := tx.ExecContext(ctx, q, string(list)); err != nil {
			return err
		}
	}
	return nil
}

// BatchNextExpiry implements store.Store.
func (s *Store) BatchNextExpiry(ctx context.Context) (time.Time, error) {
	var v sql.NullInt64
	if err := s.r.QueryRowContext(ctx, `SELECT min(expires_at) FROM batches WHERE status IN ('in_progress', 'canceling')`).Scan(&v); err != nil {
		return time.Time{}, fmt.Errorf("next expiry: %w", err)
	}
	if !v.Valid {
		return time.Time{}, nil
	}
	return fromMicros(v.Int64), nil
}

// RequestsClaim implements store.Store. Claims go batch by batch, least
// recently served first, each batch getting an equal share of the limit and
// leftovers going round again: a small batch behind a huge one is served in
// the very next claim instead of after the huge one drains.
func (s *Store) RequestsClaim(ctx context.Context, p store.RequestsClaimParams) ([]store.ClaimedRequest, error) {
	var out []store.ClaimedRequest
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = s.claimTx(ctx, tx, p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("claim requests: %w", err)
	}
	return out, nil
}

func (s *Store) claimTx(ctx context.Context, tx *sql.Tx, p store.RequestsClaimParams) ([]store.ClaimedRequest, error) {
	var out []store.ClaimedRequest
	type open struct {
		seq     int64
		id      string
		expires int64
		betas   []string
	}
	rows, err := s.stmt(ctx, tx, qOpenBatches).QueryContext(ctx, micros(p.Now))
	if err != nil {
		return nil, err
	}
	var batches []open
	for rows.Next() {
		var b open
		var betas string
		if err := rows.Scan(&b.seq, &b.id, &b.expires, &betas); err != nil {
			rows.Close()
			return nil, err
		}
		b.betas = splitBetas(betas)
		batches = append(batches, b)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	claim := s.stmt(ctx, tx, qClaim)
	var id int64
	var attempt int
	remaining := p.Limit
	served := map[int64]bool{}
	for remaining > 0 && len(batches) > 0 {
		share := max(1, remaining/len(batches))
		next := batches[:0]
		for _, b := range batches {
			if remaining == 0 {
				break
			}
			want := min(share, remaining)
			rows, err := claim.QueryContext(ctx, p.Owner, micros(p.LeaseUntil), b.seq, p.Backend, micros(p.Now), want)
			if err != nil {
				return nil, err
			}
			got := 0
			for rows.Next() {
				// Scanned into id and attempt, not into the request: what
				// Scan points into escapes, once per claim, not per row.
				if err := rows.Scan(&id, &attempt); err != nil {
					rows.Close()
					return nil, err
				}
				out = append(out, store.ClaimedRequest{ID: id, Attempt: attempt, BatchID: b.id, BatchSeq: b.seq, Betas: b.betas, ExpiresAt: fromMicros(b.expires)})
				got++
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return nil, err
			}
			remaining -= got
			if got > 0 {
				served[b.seq] = true
			}
			if got == want {
				next = append(next, b)
			}
		}
		batches = next
	}
	for seq := range served {
		if _, err := s.stmt(ctx, tx, qTouchBatch).ExecContext(ctx, micros(p.Now), seq); err != nil {
			return nil, err
		}
	}
	return out, s.fillParams(ctx, tx, out)
}

// fillParams reads the custom_id and params of claimed requests in one
// statement. Claimed ids are most often one run of consecutive ids (a
// batch's requests, claimed in order), read as a range of rowids: the
// list of ids, parsed by json_each into a temporary index, cost more than
// reading the rows.
func (s *Store) fillParams(ctx context.Context, tx *sql.Tx, claimed []store.ClaimedRequest) error {
	if len(claimed) == 0 {
		return nil
	}
	lo, hi := claimed[0].ID, claimed[0].ID
	for _, c := range claimed[1:] {
		lo, hi = min(lo, c.ID), max(hi, c.ID)
	}
	// A claim holds each id once, so a span as long as the claim is
	// exactly its ids.
	var rows *sql.Rows
	var err error
	var at func(id int64) int
	if hi-lo+1 == int64(len(claimed)) {
		pos := make([]int32, len(claimed))
		for i, c := range claimed {
			pos[c.ID-lo] = int32(i)
		}
		at = func(id int64) int { return int(pos[id-lo]) }
		rows, err = s.stmt(ctx, tx, qClaimParamsRange).QueryContext(ctx, lo, hi)
	} else {
		idx := make(map[int64]int, len(claimed))
		ids := make([]byte, 0, len(claimed)*8)
		ids = append(ids, '[')
		for i, c := range claimed {
			if i > 0 {
				ids = append(ids, ',')
			}
			ids = strconv.AppendInt(ids, c.ID, 10)
			idx[c.ID] = i
		}
		ids = append(ids, ']')
		at = func(id int64) int { return idx[id] }
		rows, err = s.stmt(ctx, tx, qClaimParams).QueryContext(ctx, string(ids))
	}
	if err != nil {
		return err
	}
	defer rows.Close()
	var id int64
	var customID string
	var params []byte
	for rows.Next() {
		if err := rows.Scan(&id, &customID, &params); err != nil {
			return err
		}
		c := &claimed[at(id)]
		c.CustomID, c.Params = customID, params
	}
	return rows.Err()
}

// RequestsComplete implements store.Store.
func (s *Store) RequestsComplete(ctx context.Context, p store.RequestsCompleteParams) ([]*store.BatchChange, error) {
	// Outcomes are written even while the store is full, with the reserve
	// if need be: a canceled batch ends only once its claimed requests
	// are written, and only an ended batch can be deleted to free space.
	var out []*store.BatchChange
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = s.completeTx(ctx, tx, p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("complete requests: %w", err)
	}
	return out, nil
}

// RequestsCompleteAndClaim implements store.Store: one transaction writes
// both, and the pages both touch (the tasks, the batch rows) once.
func (s *Store) RequestsCompleteAndClaim(ctx context.Context, c store.RequestsCompleteParams, p store.RequestsClaimParams) ([]*store.BatchChange, []store.ClaimedRequest, error) {
	var changes []*store.BatchChange
	var claimed []store.ClaimedRequest
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if changes, err = s.completeTx(ctx, tx, c); err != nil {
			return err
		}
		claimed, err = s.claimTx(ctx, tx, p)
		return err
	})
	if errors.Is(err, store.ErrFull) {
		// No claims on a full disk, but the outcomes are written.
		changes, err := s.RequestsComplete(ctx, c)
		return changes, nil, err
	}
	if err != nil {
		return nil, nil, fmt.Errorf("complete and claim requests: %w", err)
	}
	return changes, claimed, nil
}

func (s *Store) completeTx(ctx context.Context, tx *sql.Tx, p store.RequestsCompleteParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	// Whether each touched batch can still retry: only in_progress and
	// unexpired ones can; read inside the write transaction, so no
	// cancel can slip between the check and the write.
	type batchState struct {
		retryable bool
		expires   int64
	}
	states := map[int64]batchState{}
	for _, o := range p.Outcomes {
		if _, ok := states[o.BatchSeq]; ok {
			continue
		}
		var status string
		var expires int64
		err := s.stmt(ctx, tx, qBatchState).QueryRowContext(ctx, o.BatchSeq).Scan(&status, &expires)
		if errors.Is(err, sql.ErrNoRows) {
			states[o.BatchSeq] = batchState{}
			continue
		}
		if err != nil {
			return nil, err
		}
		states[o.BatchSeq] = batchState{retryable: status == store.StatusInProgress, expires: expires}
	}
	retryStmt := s.stmt(ctx, tx, qRetry)
	settling := make([]store.Outcome, 0, len(p.Outcomes))
	for _, o := range p.Outcomes {
		st := states[o.BatchSeq]
		if o.Retry && st.retryable && micros(o.RetryAt) < st.expires {
			if _, err := retryStmt.ExecContext(ctx, micros(o.RetryAt), []byte(o.Result), o.RequestID, p.Owner, o.Attempt); err != nil {
				return nil, err
			}
			continue
		}
		settling = append(settling, o)
	}
	settled, err := s.settleOutcomes(ctx, tx, p.Owner, settling)
	if err != nil {
		return nil, err
	}
	if err := s.addUsage(ctx, tx, store.UsageDeltas(settled, p.Now)); err != nil {
		return nil, err
	}
	deltas := map[int64]*store.Counts{}
	var order []int64
	for _, o := range settled {
		d := deltas[o.BatchSeq]
		if d == nil {
			d = &store.Counts{}
			deltas[o.BatchSeq] = d
			order = append(order, o.BatchSeq)
		}
		d.Add(o.ResultType, 1)
	}
	for _, seq := range order {
		ch, err := s.settle(ctx, tx, seq, *deltas[seq], p.Now)
		if err != nil {
			return nil, err
		}
		out = append(out, ch)
	}
	return out, nil
}

// settleOutcomes deletes the tasks of outcomes that still hold their lease
// and writes their results, returning the outcomes that did.
func (s *Store) settleOutcomes(ctx context.Context, tx *sql.Tx, owner string, os []store.Outcome) ([]store.Outcome, error) {
	// Keyed by attempt, not by request: a dispatcher whose lease lapsed
	// and which claimed a request again may settle both attempts in one
	// call (a cancel settles every claimed-ahead copy at once), and only
	// the current one may write a result; the stale one's duplicate
	// result failed the whole call, every time it was retried.
	type attempt struct {
		id int64
		n  int
	}
	won := make(map[attempt]bool, len(os))
	var a attempt // scanned into; declared once, as what Scan points into escapes
	args := make([]any, 0, 1+2*chunkSizes[0])
	for rest := os; len(rest) > 0; {
		n := chunkSizes[len(chunkSizes)-1]
		for _, size := range chunkSizes {
			if len(rest) >= size {
				n = size
				break
			}
		}
		chunk := rest[:n]
		rest = rest[n:]
		args = append(args[:0], owner)
		for _, o := range chunk {
			args = append(args, o.RequestID, o.Attempt)
		}
		rows, err := s.stmt(ctx, tx, qSettle(n)).QueryContext(ctx, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			if err := rows.Scan(&a.id, &a.n); err != nil {
				rows.Close()
				return nil, err
			}
			won[a] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	settled := make([]store.Outcome, 0, len(won))
	for _, o := range os {
		if a := (attempt{o.RequestID, o.Attempt}); won[a] {
			settled = append(settled, o)
			delete(won, a) // the same attempt twice writes once
		}
	}
	args = make([]any, 0, 5*chunkSizes[0])
	for rest := settled; len(rest) > 0; {
		n := chunkSizes[len(chunkSizes)-1]
		for _, size := range chunkSizes {
			if len(rest) >= size {
				n = size
				break
			}
		}
		args = args[:0]
		for _, o := range rest[:n] {
			var result []byte
			if len(o.Result) > 0 {
				result = o.Result
			}
			args = append(args, o.RequestID, o.BatchSeq, o.CustomID, resultTypeArg(o.ResultType), result)
		}
		rest = rest[n:]
		if _, err := s.stmt(ctx, tx, qAddResults(n)).ExecContext(ctx, args...); err != nil {
			return nil, err
		}
	}
	return settled, nil
}

// resultTypeArg is a result type as a statement argument: the known ones
// boxed once, as boxing a string in an interface allocates, and this runs
// for every row written.
func resultTypeArg(typ string) any {
	switch typ {
	case store.ResultSucceeded:
		return argSucceeded
	case store.ResultErrored:
		return argErrored
	case store.ResultCanceled:
		return argCanceled
	case store.ResultExpired:
		return argExpired
	}
	return typ
}

var argSucceeded, argErrored, argCanceled, argExpired any = store.ResultSucceeded, store.ResultErrored, store.ResultCanceled, store.ResultExpired

// RequestsHeartbeat implements store.Store.
func (s *Store) RequestsHeartbeat(ctx context.Context, p store.RequestsHeartbeatParams) error {
	// Even on a full disk: a lapsed lease sends the running requests again.
	// Requests in an upstream batch are held by its row's lease instead.
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE tasks SET lease_expires = ? WHERE state = 1 AND lease_owner = ? AND upstream IS NULL AND lease_expires > ?`,
			micros(p.LeaseUntil), p.Owner, micros(p.Now))
		return err
	})
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

// RequestsRescue implements store.Store.
func (s *Store) RequestsRescue(ctx context.Context, p store.RequestsRescueParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		out = nil
		// Requests handed to an upstream batch are not lost when a lease
		// lapses: the upstream holds them and the delegator resumes polling.
		cond := `t.state = 1 AND t.upstream IS NULL AND t.lease_expires < ?`
		args := []any{micros(p.Now)}
		// A lost request of a canceling batch will never be sent again, so
		// it settles as canceled; every other one goes back to pending.
		canceling := ` AND t.batch_seq IN (SELECT seq FROM batches WHERE status = 'canceling')`
		seqs, err := querySeqs(ctx, tx, `INSERT INTO results (id, batch_seq, custom_id, result_type, result)
			SELECT t.id, t.batch_seq, r.custom_id, 'canceled', NULL FROM tasks t JOIN requests r ON r.id = t.id
			WHERE `+cond+canceling+` RETURNING batch_seq`, args...)
		if err != nil {
			return err
		}
		plain := strings.ReplaceAll(cond+canceling, "t.", "")
		if _, err := tx.ExecContext(ctx, `DELETE FROM tasks WHERE `+plain, args...); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE tasks SET state = 0, lease_owner = NULL, lease_expires = NULL WHERE `+
			strings.ReplaceAll(cond, "t.", ""), args...); err != nil {
			return err
		}
		deltas := map[int64]int64{}
		for _, seq := range seqs {
			deltas[seq]++
		}
		for seq, n := range deltas {
			ch, err := s.settle(ctx, tx, seq, store.Counts{Canceled: n}, p.Now)
			if err != nil {
				return err
			}
			out = append(out, ch)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rescue requests: %w", err)
	}
	return out, nil
}

// BatchesCancelingHeld implements store.Store. Canceling batches are few;
// each is looked up in its own tasks.
func (s *Store) BatchesCancelingHeld(ctx context.Context, p store.BatchesCancelingHeldParams) ([]int64, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT b.seq FROM batches b WHERE b.status = 'canceling'
		AND EXISTS (SELECT 1 FROM tasks t WHERE t.batch_seq = b.seq AND t.state = 1 AND t.lease_owner = ?)
		ORDER BY b.seq`, p.Owner)
	if err != nil {
		return nil, fmt.Errorf("list canceling batches: %w", err)
	}
	defer rows.Close()
	var seqs []int64
	for rows.Next() {
		var seq int64
		if err := rows.Scan(&seq); err != nil {
			return nil, fmt.Errorf("list canceling batches: %w", err)
		}
		seqs = append(seqs, seq)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list canceling batches: %w", err)
	}
	return seqs, nil
}

// RequestNextDue implements store.Store. The inner min per batch is one
// index seek on tasks_pending; a join would scan every pending request.
func (s *Store) RequestNextDue(ctx context.Context, backend string) (time.Time, error) {
	var v sql.NullInt64
	err := s.r.QueryRowContext(ctx, `SELECT min((SELECT min(t.next_at) FROM tasks t WHERE t.batch_seq = b.seq AND t.backend = ? AND t.state = 0))
		FROM batches b WHERE b.status != 'ended' AND b.status = 'in_progress'`, backend).Scan(&v)
	if err != nil {
		return time.Time{}, fmt.Errorf("next due: %w", err)
	}
	if !v.Valid {
		return time.Time{}, nil
	}
	return fromMicros(v.Int64), nil
}

// RequestsReroute implements store.Store.
func (s *Store) RequestsReroute(ctx context.Context, route func(model string) string) (int, error) {
	moved := 0
	err := s.tx(ctx, func(tx *sql.Tx) error {
		moved = 0
		rows, err := tx.QueryContext(ctx, `SELECT DISTINCT r.model, t.backend FROM tasks t JOIN requests r ON r.id = t.id WHERE t.state = 0`)
		if err != nil {
			return err
		}
		type pair struct{ model, backend string }
		var pairs []pair
		for rows.Next() {
			var p pair
			if err := rows.Scan(&p.model, &p.backend); err != nil {
				rows.Close()
				return err
			}
			pairs = append(pairs, p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, p := range pairs {
			to := route(p.model)
			if to == p.backend {
				continue
			}
			res, err := tx.ExecContext(ctx, `UPDATE tasks SET backend = ? WHERE state = 0 AND backend = ?
				AND (SELECT model FROM requests r WHERE r.id = tasks.id) = ?`, to, p.backend, p.model)
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			moved += int(n)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("reroute requests: %w", err)
	}
	return moved, nil
}

// RequestsPurge implements store.Store.
func (s *Store) RequestsPurge(ctx context.Context, p store.RequestsPurgeParams) (int, error) {
	n, limit := 0, p.Limit
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		n = 0
		if err := checkLead(ctx, tx, p.Lead, p.Now); err != nil {
			return err
		}
		var seq int64
		err := tx.QueryRowContext(ctx, `SELECT batch_seq FROM purges LIMIT 1`).Scan(&seq)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		left := limit
		for _, q := range []string{
			`DELETE FROM results WHERE id IN (SELECT id FROM results WHERE batch_seq = ? LIMIT ?)`,
			`DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE batch_seq = ? AND state = 0 LIMIT ?)`,
			`DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE batch_seq = ? LIMIT ?)`,
		} {
			res, err := tx.ExecContext(ctx, q, seq, left)
			if err != nil {
				return err
			}
			deleted, _ := res.RowsAffected()
			left -= int(deleted)
			if left == 0 {
				break
			}
		}
		n = limit - left
		if left > 0 {
			_, err = tx.ExecContext(ctx, `DELETE FROM purges WHERE batch_seq = ?`, seq)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("purge requests: %w", err)
	}
	return n, nil
}

// ResultsList implements store.Store.
func (s *Store) ResultsList(ctx context.Context, p store.ResultsListParams) ([]store.Result, error) {
	q := `SELECT res.id, res.custom_id, res.result_type, res.result FROM results res`
	if p.WithParams {
		q = `SELECT res.id, res.custom_id, res.result_type, res.result, req.params FROM results res JOIN requests req ON req.id = res.id`
	}
	q += ` WHERE res.batch_seq = ? AND res.id > ?`
	args := []any{p.BatchSeq, p.AfterID}
	if p.SkipSucceeded {
		q += ` AND res.result_type != 'succeeded'`
	}
	if p.ResultType != "" {
		q += ` AND res.result_type = ?`
		args = append(args, p.ResultType)
	}
	if p.CustomIDPrefix != "" {
		// substr, not LIKE: LIKE is case-insensitive here and '_' is a
		// wildcard, and a custom_id may hold '_'.
		q += ` AND substr(res.custom_id, 1, ?) = ?`
		args = append(args, len(p.CustomIDPrefix), p.CustomIDPrefix)
	}
	q += ` ORDER BY res.id LIMIT ?`
	rows, err := s.r.QueryContext(ctx, q, append(args, p.Limit)...)
	if err != nil {
		return nil, fmt.Errorf("list results: %w", err)
	}
	defer rows.Close()
	out := make([]store.Result, 0, min(p.Limit, 1000))
	var size int64
	for rows.Next() {
		var r store.Result
		var result, params []byte
		dest := []any{&r.ID, &r.CustomID, &r.ResultType, &result}
		if p.WithParams {
			dest = append(dest, &params)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("list results: %w", err)
		}
		r.Result, r.Params = result, params
		out = append(out, r)
		if size += int64(len(result) + len(params)); p.MaxBytes > 0 && size >= p.MaxBytes {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list results: %w", err)
	}
	return out, nil
}

// IdempotencyReserve implements store.Store.
func (s *Store) IdempotencyReserve(ctx context.Context, p store.IdempotencyReserveParams) (*store.Idempotency, error) {
	var held *store.Idempotency
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM idempotency_keys WHERE created_at < ?`, micros(p.Now.Add(-p.TTL))); err != nil {
			return err
		}
		var hash string
		var batchID sql.NullString
		var created int64
		err := tx.QueryRowContext(ctx, `SELECT body_hash, batch_id, created_at FROM idempotency_keys WHERE workspace = ? AND key = ?`,
			p.Workspace, p.Key).Scan(&hash, &batchID, &created)
		switch {
		case err == nil && (batchID.Valid || created >= micros(p.Now.Add(-p.StaleAfter))):
			held = &store.Idempotency{BodyHash: hash, BatchID: batchID.String, CreatedAt: fromMicros(created)}
			return nil
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO idempotency_keys (workspace, key, created_at) VALUES (?, ?, ?)
			ON CONFLICT (workspace, key) DO UPDATE SET body_hash = '', batch_id = NULL, created_at = excluded.created_at`,
			p.Workspace, p.Key, micros(p.Now))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reserve idempotency key: %w", err)
	}
	return held, nil
}

// IdempotencyRecord implements store.Store.
func (s *Store) IdempotencyRecord(ctx context.Context, p store.IdempotencyRecordParams) error {
	n, err := s.execAffected(ctx, "record idempotency key", `UPDATE idempotency_keys SET body_hash = ?, batch_id = ?
		WHERE workspace = ? AND key = ? AND batch_id IS NULL`, p.BodyHash, p.BatchID, p.Workspace, p.Key)
	if err == nil && n == 0 {
		err = fmt.Errorf("record idempotency key: %w", store.ErrConflict)
	}
	return err
}

// IdempotencyRelease implements store.Store.
func (s *Store) IdempotencyRelease(ctx context.Context, workspace, key string) error {
	_, err := s.execAffected(ctx, "release idempotency key", `DELETE FROM idempotency_keys WHERE workspace = ? AND key = ? AND batch_id IS NULL`, workspace, key)
	return err
}

// KeyCreate implements store.Store.
func (s *Store) KeyCreate(ctx context.Context, p store.KeyCreateParams) (*store.Key, error) {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO api_keys (id, workspace, hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)`,
			p.ID, p.Workspace, p.Hash, p.Prefix, micros(p.CreatedAt))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	return &store.Key{ID: p.ID, Workspace: p.Workspace, Prefix: p.Prefix, CreatedAt: p.CreatedAt.UTC()}, nil
}

// KeyList implements store.Store.
func (s *Store) KeyList(ctx context.Context) ([]*store.Key, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT id, workspace, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	defer rows.Close()
	var out []*store.Key
	for rows.Next() {
		var k store.Key
		var created int64
		var revoked sql.NullInt64
		if err := rows.Scan(&k.ID, &k.Workspace, &k.Prefix, &created, &revoked); err != nil {
			return nil, fmt.Errorf("list keys: %w", err)
		}
		k.CreatedAt, k.RevokedAt = fromMicros(created), fromNullMicros(revoked)
		out = append(out, &k)
	}
	return out, rows.Err()
}

// KeyRevoke implements store.Store.
func (s *Store) KeyRevoke(ctx context.Context, idOrPrefix string, now time.Time) (*store.Key, error) {
	var k store.Key
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var created int64
		var revoked sql.NullInt64
		err := tx.QueryRowContext(ctx, `UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? OR prefix = ?
			RETURNING id, workspace, prefix, created_at, revoked_at`, micros(now), idOrPrefix, idOrPrefix).
			Scan(&k.ID, &k.Workspace, &k.Prefix, &created, &revoked)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		k.CreatedAt, k.RevokedAt = fromMicros(created), fromNullMicros(revoked)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("revoke key: %w", err)
	}
	return &k, nil
}

// KeyLookup implements store.Store.
func (s *Store) KeyLookup(ctx context.Context, hash string) (string, error) {
	var ws string
	err := s.r.QueryRowContext(ctx, `SELECT workspace FROM api_keys WHERE hash = ? AND revoked_at IS NULL`, hash).Scan(&ws)
	if errors.Is(err, sql.ErrNoRows) {
		return "", store.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("look up key: %w", err)
	}
	return ws, nil
}

// KeysActive implements store.Store.
func (s *Store) KeysActive(ctx context.Context) (bool, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)`).Scan(&n); err != nil {
		return false, fmt.Errorf("check keys: %w", err)
	}
	return n > 0, nil
}

// UpstreamBatchInsert implements store.Store.
func (s *Store) UpstreamBatchInsert(ctx context.Context, p store.UpstreamBatchInsertParams) (*store.UpstreamBatch, error) {
	ub := &store.UpstreamBatch{Backend: p.Backend, Owner: p.Owner, BatchSeq: p.BatchSeq, CreatedAt: p.Now.UTC(),
		LeaseExpires: p.LeaseUntil.UTC(), BatchStatus: store.StatusInProgress}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `INSERT INTO upstream_batches (backend, owner, batch_seq, created_at, lease_expires) VALUES (?, ?, ?, ?, ?) RETURNING id`,
			p.Backend, p.Owner, p.BatchSeq, micros(p.Now), micros(p.LeaseUntil)).Scan(&ub.ID); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE tasks SET upstream = ? WHERE id IN (SELECT value FROM json_each(?))
			AND batch_seq = ? AND state = 1 AND lease_owner = ? AND upstream IS NULL`, ub.ID, idsJSON(p.RequestIDs), p.BatchSeq, p.Owner)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != int64(len(p.RequestIDs)) {
			return fmt.Errorf("%d of %d requests are not held by %s: %w", int64(len(p.RequestIDs))-n, len(p.RequestIDs), p.Owner, store.ErrConflict)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("insert upstream batch: %w", err)
	}
	return ub, nil
}

// idsJSON is a JSON array of ids, for json_each.
func idsJSON(ids []int64) string {
	b := make([]byte, 0, len(ids)*8+2)
	b = append(b, '[')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, id, 10)
	}
	return string(append(b, ']'))
}

// UpstreamBatchStart implements store.Store.
func (s *Store) UpstreamBatchStart(ctx context.Context, p store.UpstreamBatchStartParams) error {
	n, err := s.execAffected(ctx, "start upstream batch", `UPDATE upstream_batches SET upstream_id = ? WHERE id = ? AND upstream_id IS NULL`, p.UpstreamID, p.ID)
	if err == nil && n == 0 {
		err = fmt.Errorf("start upstream batch: %w", store.ErrConflict)
	}
	return err
}

// UpstreamBatchesHeartbeat implements store.Store.
func (s *Store) UpstreamBatchesHeartbeat(ctx context.Context, p store.UpstreamBatchesHeartbeatParams) error {
	_, err := s.execAffected(ctx, "heartbeat upstream batches", `UPDATE upstream_batches SET lease_expires = ? WHERE owner = ?`,
		micros(p.LeaseUntil), p.Owner)
	return err
}

// UpstreamBatchAdopt implements store.Store: only a lapsed lease changes
// hands, with the requests it holds.
func (s *Store) UpstreamBatchAdopt(ctx context.Context, p store.UpstreamBatchAdoptParams) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := checkLead(ctx, tx, p.Lead, p.Now); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE upstream_batches SET owner = ?, lease_expires = ? WHERE id = ? AND lease_expires < ?`,
			p.Owner, micros(p.LeaseUntil), p.ID, micros(p.Now))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrConflict // gone, or its lease is live
		}
		_, err = tx.ExecContext(ctx, `UPDATE tasks SET lease_owner = ? WHERE upstream = ? AND state = 1`, p.Owner, p.ID)
		return err
	})
	if err != nil {
		return fmt.Errorf("adopt upstream batch: %w", err)
	}
	return nil
}

// UpstreamBatchesList implements store.Store.
func (s *Store) UpstreamBatchesList(ctx context.Context, backend string) ([]*store.UpstreamBatch, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT u.id, u.backend, u.owner, u.batch_seq, coalesce(u.upstream_id, ''), u.created_at,
		u.lease_expires, coalesce(b.status, 'ended') FROM upstream_batches u LEFT JOIN batches b ON b.seq = u.batch_seq
		WHERE u.backend = ? ORDER BY u.id`, backend)
	if err != nil {
		return nil, fmt.Errorf("list upstream batches: %w", err)
	}
	defer rows.Close()
	var out []*store.UpstreamBatch
	for rows.Next() {
		var ub store.UpstreamBatch
		var created, lease int64
		if err := rows.Scan(&ub.ID, &ub.Backend, &ub.Owner, &ub.BatchSeq, &ub.UpstreamID, &created, &lease, &ub.BatchStatus); err != nil {
			return nil, fmt.Errorf("list upstream batches: %w", err)
		}
		ub.CreatedAt, ub.LeaseExpires = fromMicros(created), fromMicros(lease)
		out = append(out, &ub)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list upstream batches: %w", err)
	}
	return out, nil
}

// UpstreamBatchRequests implements store.Store.
func (s *Store) UpstreamBatchRequests(ctx context.Context, id int64) ([]store.ClaimedRequest, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT t.id, t.batch_seq, t.attempts, r.custom_id, b.id, b.expires_at
		FROM tasks t JOIN requests r ON r.id = t.id JOIN batches b ON b.seq = t.batch_seq
		WHERE t.upstream = ? AND t.state = 1 ORDER BY t.id`, id)
	if err != nil {
		return nil, fmt.Errorf("list upstream batch requests: %w", err)
	}
	defer rows.Close()
	var out []store.ClaimedRequest
	for rows.Next() {
		var c store.ClaimedRequest
		var expires int64
		if err := rows.Scan(&c.ID, &c.BatchSeq, &c.Attempt, &c.CustomID, &c.BatchID, &expires); err != nil {
			return nil, fmt.Errorf("list upstream batch requests: %w", err)
		}
		c.ExpiresAt = fromMicros(expires)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list upstream batch requests: %w", err)
	}
	return out, nil
}

// UpstreamBatchAbandon implements store.Store.
func (s *Store) UpstreamBatchAbandon(ctx context.Context, p store.UpstreamBatchAbandonParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	err := s.tx(ctx, func(tx *sql.Tx) error {
		out = nil
		var upstreamID sql.NullString
		var seq int64
		err := tx.QueryRowContext(ctx, `SELECT upstream_id, batch_seq FROM upstream_batches WHERE id = ?`, p.ID).Scan(&upstreamID, &seq)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		if upstreamID.Valid {
			return store.ErrConflict // started: the upstream has its requests
		}
		// As in RequestsRescue: a canceling batch's requests settle as
		// canceled, every other one goes back to pending.
		res, err := tx.ExecContext(ctx, `INSERT INTO results (id, batch_seq, custom_id, result_type, result)
			SELECT t.id, t.batch_seq, r.custom_id, 'canceled', NULL FROM tasks t JOIN requests r ON r.id = t.id
			WHERE t.upstream = ? AND t.state = 1 AND t.batch_seq IN (SELECT seq FROM batches WHERE status = 'canceling')`, p.ID)
		if err != nil {
			return err
		}
		canceled, _ := res.RowsAffected()
		if _, err := tx.ExecContext(ctx, `DELETE FROM tasks WHERE upstream = ? AND state = 1
			AND batch_seq IN (SELECT seq FROM batches WHERE status = 'canceling')`, p.ID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE tasks SET state = 0, upstream = NULL, lease_owner = NULL, lease_expires = NULL
			WHERE upstream = ? AND state = 1`, p.ID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM upstream_batches WHERE id = ?`, p.ID); err != nil {
			return err
		}
		if canceled > 0 {
			ch, err := s.settle(ctx, tx, seq, store.Counts{Canceled: canceled}, p.Now)
			if err != nil {
				return err
			}
			out = append(out, ch)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("abandon upstream batch: %w", err)
	}
	return out, nil
}

// UpstreamBatchDelete implements store.Store.
func (s *Store) UpstreamBatchDelete(ctx context.Context, id int64) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var left int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM tasks WHERE upstream = ?`, id).Scan(&left); err != nil {
			return err
		}
		if left > 0 {
			return fmt.Errorf("%d requests unsettled: %w", left, store.ErrConflict)
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM upstream_batches WHERE id = ?`, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete upstream batch: %w", err)
	}
	return nil
}

// LeaderAcquire implements store.Store. It writes even while the disk is
// full: the leader runs the chores that free space.
func (s *Store) LeaderAcquire(ctx context.Context, p store.LeaderAcquireParams) (*store.Leader, error) {
	l := &store.Leader{Name: p.Name}
	err := s.write(ctx, func(tx *sql.Tx) error {
		// Insert the first lease, renew the holder's live one (same term),
		// or take a lapsed one with the next term; another owner's live
		// lease stays as it is.
		if _, err := tx.ExecContext(ctx, `INSERT INTO leaders (name, owner, term, expires) VALUES (?, ?, 1, ?)
			ON CONFLICT (name) DO UPDATE SET
				term = CASE WHEN owner = excluded.owner AND expires > ? THEN term ELSE term + 1 END,
				owner = excluded.owner, expires = excluded.expires
			WHERE (owner = excluded.owner AND expires > ?) OR expires <= ?`,
			p.Name, p.Owner, micros(p.Until), micros(p.Now), micros(p.Now), micros(p.Now)); err != nil {
			return err
		}
		var expires int64
		if err := tx.QueryRowContext(ctx, `SELECT owner, term, expires FROM leaders WHERE name = ?`, p.Name).Scan(&l.Owner, &l.Term, &expires); err != nil {
			return err
		}
		l.Expires = fromMicros(expires)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("acquire leader lease: %w", err)
	}
	return l, nil
}

// LeaderRelease implements store.Store.
func (s *Store) LeaderRelease(ctx context.Context, l store.Lead) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE leaders SET expires = 0 WHERE name = ? AND owner = ? AND term = ?`, l.Name, l.Owner, l.Term)
		return err
	})
	if err != nil {
		return fmt.Errorf("release leader lease: %w", err)
	}
	return nil
}

// checkLead fails with store.ErrNotLeader unless l still holds its lease
// at now. The write transaction is the only writer, so the lease cannot
// change hands before it commits.
func checkLead(ctx context.Context, tx *sql.Tx, l store.Lead, now time.Time) error {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM leaders WHERE name = ? AND owner = ? AND term = ? AND expires > ?`,
		l.Name, l.Owner, l.Term, micros(now)).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%s in term %d: %w", l.Owner, l.Term, store.ErrNotLeader)
	}
	return nil
}
