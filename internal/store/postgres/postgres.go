// Package postgres is batchd's PostgreSQL store, for deployments that
// outgrow one SQLite file: the same verbs, the same guarded transitions and
// the same conformance suite (storetest) as the SQLite driver, on a pgx
// connection pool.
//
// Where SQLite relies on its single writer, this driver says in SQL what it
// needs: claims lock the rows they take (FOR UPDATE SKIP LOCKED) in the
// statement that leases them, a transition locks the batch rows it settles
// before the tasks, and the few read-then-write verbs (a workspace's
// in-progress cap, an idempotency key) take a transaction-scoped advisory
// lock. Serialization failures, deadlocks and lost connections are retried
// a bounded number of times (errors.go).
//
// store.ErrFull does not apply the way it does on SQLite: there is no space
// reserve and no refusing of writes while full. A disk-full error from the
// server (53100) is reported as store.ErrFull, and the write did not happen.
//
// The SQL lives in one place per area: batches.go, requests.go,
// upstream.go, events.go (events, endpoints, deliveries) and keys.go (API
// keys and idempotency keys), each with its statements at the top.
package postgres

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/batchd/batchd/internal/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store implements store.Store on PostgreSQL.
type Store struct {
	pool *pgxpool.Pool
	// connConfig is how the pool connects, for the listener's connection
	// of its own (notify.go).
	connConfig *pgx.ConnConfig
}

var _ store.Store = (*Store)(nil)

// Open connects to the database at url (postgres://…; libpq parameters
// such as search_path pass through) and migrates it.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	return OpenConfig(ctx, cfg)
}

// OpenConfig is Open with a pool configuration the caller built (tests set
// the search_path of every connection to a schema of their own).
func OpenConfig(ctx context.Context, cfg *pgxpool.Config) (*Store, error) {
	// No JIT unless the URL asks for it: every statement here is a short
	// one over indexes, yet the estimate of the claim's generic plan
	// passes jit_above_cost once tasks holds about 100,000 rows, and
	// compiling it cost 50 ms of a claim that runs in a few.
	if _, ok := cfg.ConnConfig.RuntimeParams["jit"]; !ok {
		cfg.ConnConfig.RuntimeParams["jit"] = "off"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	s := &Store{pool: pool, connConfig: cfg.ConnConfig.Copy()}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the pool, waiting for connections in use to be returned.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// migrate applies the embedded migrations not yet recorded in
// schema_migrations, all in one transaction under an advisory lock on the
// schema, so that processes starting together migrate once.
func (s *Store) migrate(ctx context.Context) error {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	sort.Strings(names)
	return s.tx(ctx, "migrate", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('batchd.migrate'), hashtext(current_schema()))`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY)`); err != nil {
			return err
		}
		for _, name := range names {
			version := strings.TrimSuffix(strings.TrimPrefix(name, "migrations/"), ".sql")
			var done bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)`, version).Scan(&done); err != nil {
				return err
			}
			if done {
				continue
			}
			body, err := migrations.ReadFile(name)
			if err != nil {
				return err
			}
			// No arguments: pgx sends it with the simple protocol, which
			// runs a file of several statements.
			if _, err := tx.Exec(ctx, string(body)); err != nil {
				return fmt.Errorf("%s: %w", version, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, version); err != nil {
				return err
			}
		}
		return nil
	})
}

// querier is what both a pool and a transaction run statements with.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// tx runs fn in a read-committed transaction, again from the start when
// the transaction failed transiently (retry in errors.go), and wraps the
// error with action. fn must therefore set its results afresh each run.
func (s *Store) tx(ctx context.Context, action string, fn func(tx pgx.Tx) error) error {
	return s.retry(ctx, action, func() error {
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			return err
		}
		if err := fn(tx); err != nil {
			tx.Rollback(ctx)
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return commitError(err)
		}
		return nil
	})
}

// read runs fn, a read outside any transaction, retrying it like tx.
func (s *Store) read(ctx context.Context, action string, fn func(q querier) error) error {
	return s.retry(ctx, action, func() error { return fn(s.pool) })
}

// execAffected runs one statement in its own transaction and returns how
// many rows it changed.
func (s *Store) execAffected(ctx context.Context, action, q string, args ...any) (int, error) {
	n := 0
	err := s.tx(ctx, action, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, q, args...)
		n = int(tag.RowsAffected())
		return err
	})
	return n, err
}

func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(v int64) time.Time { return time.UnixMicro(v).UTC() }

func fromNullMicros(v *int64) *time.Time {
	if v == nil {
		return nil
	}
	t := fromMicros(*v)
	return &t
}

func nullMicros(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	v := micros(*t)
	return &v
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// lockBatches locks the rows of the batches a transition will settle, in
// seq order, before it touches their tasks: every transition takes batch
// rows first and in the same order, so two of them never deadlock.
func lockBatches(ctx context.Context, tx pgx.Tx, seqs []int64) error {
	if len(seqs) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `SELECT seq FROM batches WHERE seq = ANY($1) ORDER BY seq FOR NO KEY UPDATE`, seqs)
	return err
}

// querySeqs runs q and collects its single bigint column.
func querySeqs(ctx context.Context, q querier, sql string, args ...any) ([]int64, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}
