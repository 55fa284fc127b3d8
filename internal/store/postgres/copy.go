package postgres

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/store/migrate"
)

// The SQL of copying into the store (migrate.Target) and of reporting
// migrations.
const (
	// The copy holds the migration lock, so a server starting meanwhile
	// waits for it to commit instead of migrating or writing beside it.
	qCopyLock    = `SELECT pg_advisory_xact_lock(hashtext('batchd.migrate'), hashtext(current_schema()))`
	qCopyColumns = `SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
		WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position`
	// Every id drawn from an identity or a sequence.
	qCopySequenced = `SELECT table_name::text, column_name::text FROM information_schema.columns
		WHERE table_schema = current_schema() AND (is_identity = 'YES' OR column_default LIKE 'nextval(%')`
	// What a server writes when it starts on an empty database; a live
	// leader lease means one runs on it now.
	qCopyLiveLeader = `SELECT owner FROM leaders WHERE expires > $1 LIMIT 1`
	qCopyReset      = `DELETE FROM leaders; DELETE FROM webhook_key_check`
	// setval(seq, n) makes the next id n+1.
	qCopySetval = `SELECT setval(pg_get_serial_sequence($1, $2), $3)`

	qMigrationsExist   = `SELECT to_regclass('schema_migrations') IS NOT NULL`
	qMigrationsApplied = `SELECT version FROM schema_migrations ORDER BY version`
)

var _ migrate.Target = (*Store)(nil)

// CopyIn implements migrate.Target: fn runs in one transaction, not
// retried (a copy is run again by hand), holding the migration lock.
func (s *Store) CopyIn(ctx context.Context, fn func(w migrate.Writer) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("copy in: %w", classify(err))
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, qCopyLock); err != nil {
		return fmt.Errorf("copy in: %w", classify(err))
	}
	w := &copyWriter{tx: tx, types: map[string]map[string]string{}}
	if err := fn(w); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("copy in: commit: %w", classify(err))
	}
	return nil
}

type copyWriter struct {
	tx     pgx.Tx
	types  map[string]map[string]string // table → column → data_type
	tables []migrate.Table
}

// Tables implements migrate.Writer.
func (w *copyWriter) Tables(ctx context.Context) ([]migrate.Table, error) {
	if w.tables != nil {
		return w.tables, nil
	}
	rows, err := w.tx.Query(ctx, qCopyColumns)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var table, col, typ string
		if err := rows.Scan(&table, &col, &typ); err != nil {
			return nil, err
		}
		if n := len(w.tables); n == 0 || w.tables[n-1].Name != table {
			w.tables = append(w.tables, migrate.Table{Name: table})
			w.types[table] = map[string]string{}
		}
		t := &w.tables[len(w.tables)-1]
		t.Columns = append(t.Columns, col)
		w.types[table][col] = typ
	}
	return w.tables, rows.Err()
}

func (w *copyWriter) table(ctx context.Context, name string) (migrate.Table, error) {
	tables, err := w.Tables(ctx)
	if err != nil {
		return migrate.Table{}, err
	}
	for _, t := range tables {
		if t.Name == name {
			return t, nil
		}
	}
	return migrate.Table{}, fmt.Errorf("no table %s", name)
}

// Stat implements migrate.Writer: text keys are compared byte-wise, as
// SQLite does, whatever the database's collation.
func (w *copyWriter) Stat(ctx context.Context, name string) (migrate.Stat, error) {
	t, err := w.table(ctx, name)
	if err != nil {
		return migrate.Stat{}, err
	}
	key := pgx.Identifier{t.Columns[0]}.Sanitize()
	if w.types[name][t.Columns[0]] == "text" {
		key += ` COLLATE "C"`
	}
	var st migrate.Stat
	var last *string
	err = w.tx.QueryRow(ctx, `SELECT count(*), max(`+key+`)::text FROM `+pgx.Identifier{name}.Sanitize()).Scan(&st.Rows, &last)
	if last != nil {
		st.Last = *last
	}
	return st, err
}

// Reset implements migrate.Writer. It refuses while a server runs on the
// database (its leader lease is live): the copy would pull its state away
// under it.
func (w *copyWriter) Reset(ctx context.Context) error {
	var owner string
	switch err := w.tx.QueryRow(ctx, qCopyLiveLeader, micros(time.Now())).Scan(&owner); {
	case err == nil:
		return fmt.Errorf("a batchd serve runs on the target (process %s leads): stop it before copying", owner)
	case !errors.Is(err, pgx.ErrNoRows):
		return err
	}
	_, err := w.tx.Exec(ctx, qCopyReset)
	return err
}

// Copy implements migrate.Writer with the COPY protocol: rows stream from
// the source to the server without being gathered.
func (w *copyWriter) Copy(ctx context.Context, t migrate.Table, rows migrate.Rows) (int64, error) {
	if _, err := w.table(ctx, t.Name); err != nil {
		return 0, err
	}
	kinds := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		kinds[i] = w.types[t.Name][c]
	}
	return w.tx.CopyFrom(ctx, pgx.Identifier{t.Name}, t.Columns, &convertRows{Rows: rows, kinds: kinds})
}

// SetSequences implements migrate.Writer.
func (w *copyWriter) SetSequences(ctx context.Context, floors map[string]int64) error {
	rows, err := w.tx.Query(ctx, qCopySequenced)
	if err != nil {
		return err
	}
	type col struct{ table, column string }
	var cols []col
	for rows.Next() {
		var c col
		if err := rows.Scan(&c.table, &c.column); err != nil {
			rows.Close()
			return err
		}
		cols = append(cols, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, c := range cols {
		var top int64
		if err := w.tx.QueryRow(ctx, `SELECT coalesce(max(`+pgx.Identifier{c.column}.Sanitize()+`), 0) FROM `+pgx.Identifier{c.table}.Sanitize()).Scan(&top); err != nil {
			return err
		}
		top = max(top, floors[c.table])
		if top == 0 {
			continue
		}
		if _, err := w.tx.Exec(ctx, qCopySetval, c.table, c.column, top); err != nil {
			return fmt.Errorf("%s.%s: %w", c.table, c.column, err)
		}
	}
	return nil
}

// convertRows turns SQLite's values into what the PostgreSQL columns
// take: booleans from integers, bytea from text and text from bytes.
type convertRows struct {
	migrate.Rows
	kinds []string
}

func (c *convertRows) Values() ([]any, error) {
	vals, err := c.Rows.Values()
	if err != nil {
		return nil, err
	}
	for i, v := range vals {
		switch c.kinds[i] {
		case "boolean":
			if n, ok := v.(int64); ok {
				vals[i] = n != 0
			}
		case "bytea":
			if s, ok := v.(string); ok {
				vals[i] = []byte(s)
			}
		case "text":
			if b, ok := v.([]byte); ok {
				vals[i] = string(b)
			}
		}
	}
	return vals, nil
}

// MigrationStatus reports which of this driver's migrations the database
// at url has (applied) and lacks (pending), without changing it; applied
// versions this batchd does not know are unknown.
func MigrationStatus(ctx context.Context, url string) (applied, pending, unknown []string, err error) {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, nil, nil, err
	}
	sort.Strings(names)
	for i, name := range names {
		names[i] = strings.TrimSuffix(strings.TrimPrefix(name, "migrations/"), ".sql")
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("migration status: %w", classify(err))
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, qMigrationsExist).Scan(&exists); err != nil {
		return nil, nil, nil, fmt.Errorf("migration status: %w", classify(err))
	}
	var have []string
	if exists {
		rows, err := conn.Query(ctx, qMigrationsApplied)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("migration status: %w", classify(err))
		}
		if have, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return nil, nil, nil, fmt.Errorf("migration status: %w", classify(err))
		}
	}
	have2 := map[string]bool{}
	for _, v := range have {
		have2[v] = true
	}
	for _, v := range names {
		if have2[v] {
			applied = append(applied, v)
			delete(have2, v)
		} else {
			pending = append(pending, v)
		}
	}
	for _, v := range have {
		if have2[v] {
			unknown = append(unknown, v)
		}
	}
	return applied, pending, unknown, nil
}
