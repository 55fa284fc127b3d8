package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/batchd/batchd/internal/store/migrate"
)

// The SQL of copying the store out (migrate.Source) and of reporting
// migrations.
const (
	// Every table but the bookkeeping ones: schema_migrations (the target
	// has its own), sqlite_sequence (carried over as Sequences) and the
	// leader leases (held by processes that are gone).
	qCopyTables = `SELECT name FROM sqlite_master WHERE type = 'table'
		AND name NOT LIKE 'sqlite_%' AND name NOT IN ('schema_migrations', 'leaders') ORDER BY name`
	qCopyColumns = `SELECT name FROM pragma_table_info(?) ORDER BY cid`
	// The highest id each table ever handed out: AUTOINCREMENT tables
	// remember theirs in sqlite_sequence; a request's or an upstream
	// batch's id may survive only in the rows that name it.
	qCopySequences = `SELECT 'batches', max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'batches'), 0), coalesce((SELECT max(seq) FROM batches), 0))
		UNION ALL SELECT 'events', max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), coalesce((SELECT max(seq) FROM events), 0))
		UNION ALL SELECT 'deliveries', max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'), 0),
			coalesce((SELECT max(id) FROM deliveries), 0), coalesce((SELECT max(delivery_id) FROM delivery_attempts), 0))
		UNION ALL SELECT 'delivery_attempts', max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'delivery_attempts'), 0),
			coalesce((SELECT max(id) FROM delivery_attempts), 0))
		UNION ALL SELECT 'requests', max(coalesce((SELECT max(id) FROM requests), 0), coalesce((SELECT max(id) FROM results), 0),
			coalesce((SELECT max(id) FROM tasks), 0))
		UNION ALL SELECT 'upstream_batches', max(coalesce((SELECT max(id) FROM upstream_batches), 0), coalesce((SELECT max(upstream) FROM tasks), 0))`
	qMigrationsApplied = `SELECT version FROM schema_migrations ORDER BY version`
	qHasMigrations     = `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`
)

// leaseColumns are copied lapsed (0 where set): the processes that held
// the leases are gone, and the target's take the work over at once.
var leaseColumns = []string{"lease_expires", "upload_expires"}

var _ migrate.Source = (*Store)(nil)

// CopyOut implements migrate.Source: fn reads one snapshot (a read
// transaction), streaming each table with one query.
func (s *Store) CopyOut(ctx context.Context, fn func(r migrate.Reader) error) error {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("copy out: %w", err)
	}
	defer tx.Rollback()
	return fn(&copyReader{tx: tx})
}

type copyReader struct{ tx *sql.Tx }

func quoteIdent(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }

// Tables implements migrate.Reader.
func (r *copyReader) Tables(ctx context.Context) ([]migrate.Table, error) {
	names, err := queryStrings(ctx, r.tx, qCopyTables)
	if err != nil {
		return nil, err
	}
	tables := make([]migrate.Table, 0, len(names))
	for _, name := range names {
		cols, err := queryStrings(ctx, r.tx, qCopyColumns, name)
		if err != nil {
			return nil, err
		}
		tables = append(tables, migrate.Table{Name: name, Columns: cols})
	}
	return tables, nil
}

// Stat implements migrate.Reader.
func (r *copyReader) Stat(ctx context.Context, table string) (migrate.Stat, error) {
	cols, err := queryStrings(ctx, r.tx, qCopyColumns, table)
	if err != nil || len(cols) == 0 {
		return migrate.Stat{}, fmt.Errorf("stat %s: no such table (%v)", table, err)
	}
	var st migrate.Stat
	var last sql.NullString
	err = r.tx.QueryRowContext(ctx, `SELECT count(*), CAST(max(`+quoteIdent(cols[0])+`) AS TEXT) FROM `+quoteIdent(table)).Scan(&st.Rows, &last)
	st.Last = last.String
	return st, err
}

// Rows implements migrate.Reader.
func (r *copyReader) Rows(ctx context.Context, t migrate.Table) (migrate.Rows, error) {
	exprs := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		exprs[i] = quoteIdent(c)
		if slices.Contains(leaseColumns, c) {
			exprs[i] = `CASE WHEN ` + quoteIdent(c) + ` IS NULL THEN NULL ELSE 0 END`
		}
	}
	rows, err := r.tx.QueryContext(ctx, `SELECT `+strings.Join(exprs, ", ")+` FROM `+quoteIdent(t.Name))
	if err != nil {
		return nil, err
	}
	return &copyRows{rows: rows, vals: make([]any, len(t.Columns))}, nil
}

// Sequences implements migrate.Reader.
func (r *copyReader) Sequences(ctx context.Context) (map[string]int64, error) {
	rows, err := r.tx.QueryContext(ctx, qCopySequences)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var name string
		var v int64
		if err := rows.Scan(&name, &v); err != nil {
			return nil, err
		}
		out[name] = v
	}
	return out, rows.Err()
}

// copyRows adapts sql.Rows to migrate.Rows. Values are int64, float64,
// string, []byte (a copy: database/sql clones into *any) or nil.
type copyRows struct {
	rows *sql.Rows
	vals []any
	err  error
}

func (c *copyRows) Next() bool { return c.err == nil && c.rows.Next() }

func (c *copyRows) Values() ([]any, error) {
	ptrs := make([]any, len(c.vals))
	for i := range c.vals {
		ptrs[i] = &c.vals[i]
	}
	if err := c.rows.Scan(ptrs...); err != nil {
		c.err = err
		return nil, err
	}
	return c.vals, nil
}

func (c *copyRows) Err() error {
	if c.err != nil {
		return c.err
	}
	return c.rows.Err()
}

func (c *copyRows) Close() error { return c.rows.Close() }

func queryStrings(ctx context.Context, tx *sql.Tx, q string, args ...any) ([]string, error) {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// MigrationStatus reports which of this driver's migrations the database
// at path has (applied) and lacks (pending), without changing it: a
// missing file has them all pending and is not created. Applied versions
// this batchd does not know (a newer one migrated the file) are unknown.
func MigrationStatus(ctx context.Context, path string) (applied, pending, unknown []string, err error) {
	known, err := migrationVersions()
	if err != nil {
		return nil, nil, nil, err
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, known, nil, nil
	}
	db, err := sql.Open("sqlite", "file:"+escapePath(path)+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("migration status: %w", err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, qHasMigrations).Scan(&n); err != nil {
		return nil, nil, nil, fmt.Errorf("migration status: %w", err)
	}
	var have []string
	if n > 0 {
		rows, err := db.QueryContext(ctx, qMigrationsApplied)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("migration status: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var v string
			if err := rows.Scan(&v); err != nil {
				return nil, nil, nil, fmt.Errorf("migration status: %w", err)
			}
			have = append(have, v)
		}
		if err := rows.Err(); err != nil {
			return nil, nil, nil, fmt.Errorf("migration status: %w", err)
		}
	}
	applied, pending, unknown = splitVersions(known, have)
	return applied, pending, unknown, nil
}

func migrationVersions() ([]string, error) {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	for i, name := range names {
		names[i] = strings.TrimSuffix(strings.TrimPrefix(name, "migrations/"), ".sql")
	}
	return names, nil
}

func splitVersions(known, have []string) (applied, pending, unknown []string) {
	for _, v := range known {
		if slices.Contains(have, v) {
			applied = append(applied, v)
		} else {
			pending = append(pending, v)
		}
	}
	for _, v := range have {
		if !slices.Contains(known, v) {
			unknown = append(unknown, v)
		}
	}
	return applied, pending, unknown
}
