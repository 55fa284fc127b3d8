// Package migrate copies one store into another: an SQLite data dir into
// PostgreSQL (`batchd migrate --from DIR --to postgres://…`). It holds no
// SQL: the source driver streams its tables out of one read snapshot
// (Source), the target driver streams them in within one transaction
// (Target), and Copy checks that both name the same tables and columns,
// moves the rows, carries the id sequences over and verifies every table
// before it commits.
//
// The copy is all or nothing: a failure or a mismatch leaves the target as
// it was. Run again, it changes nothing when the target already holds a
// copy of the same source (every table's row count and highest key agree),
// and refuses a target that holds anything else.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Table is one table as both drivers see it: its name and its columns in
// the order rows are streamed.
type Table struct {
	Name    string
	Columns []string
}

// Stat fingerprints a table's contents: its row count and its highest
// key (the first column, as text, compared byte-wise).
type Stat struct {
	Rows int64
	Last string
}

// Rows streams one table's rows; it is pgx.CopyFromSource plus Close.
type Rows interface {
	Next() bool
	// Values are the current row's values, in Table.Columns order.
	Values() ([]any, error)
	Err() error
	Close() error
}

// Source is a store that can be copied out.
type Source interface {
	// CopyOut runs fn on one consistent read snapshot of the store.
	CopyOut(ctx context.Context, fn func(r Reader) error) error
}

// Reader reads a source snapshot.
type Reader interface {
	// Tables are the tables to copy. Tables that only hold leases of
	// live processes (the leader lease) are left out: a copy's processes
	// start without them.
	Tables(ctx context.Context) ([]Table, error)
	Stat(ctx context.Context, table string) (Stat, error)
	// Rows streams a table. Leases are copied lapsed, so that the
	// target's processes take over the work at once instead of waiting
	// for a process that is gone.
	Rows(ctx context.Context, t Table) (Rows, error)
	// Sequences are, per table, the highest id the source ever handed
	// out (deleted rows included), so that the target never hands one out
	// again.
	Sequences(ctx context.Context) (map[string]int64, error)
}

// Target is a store that can be copied into.
type Target interface {
	// CopyIn runs fn in one transaction, committed only if fn succeeds.
	CopyIn(ctx context.Context, fn func(w Writer) error) error
}

// Writer writes into a target within its transaction.
type Writer interface {
	Tables(ctx context.Context) ([]Table, error)
	Stat(ctx context.Context, table string) (Stat, error)
	// Reset deletes what a server writes into an empty database when it
	// starts (leader leases, the webhook key check), which a copy
	// replaces.
	Reset(ctx context.Context) error
	// Copy streams rows into table t and returns how many it wrote.
	Copy(ctx context.Context, t Table, rows Rows) (int64, error)
	// SetSequences moves every id sequence past floors[table] and past
	// the table's highest id.
	SetSequences(ctx context.Context, floors map[string]int64) error
}

// Progress is reported while rows are copied.
type Progress struct {
	Table       string
	TableDone   int64
	TableTotal  int64
	Done, Total int64
}

// Options tune a copy.
type Options struct {
	// Progress, if set, is called every ProgressEvery rows and at the end
	// of every table.
	Progress func(Progress)
	// ProgressEvery is the number of rows between Progress calls (default
	// 1000).
	ProgressEvery int64
}

// TableReport is one table's outcome.
type TableReport struct {
	Name string
	Rows int64
}

// Report is what a copy did.
type Report struct {
	// AlreadyCopied means the target already held a copy of the source:
	// nothing was written.
	AlreadyCopied bool
	Tables        []TableReport
	Rows          int64
}

// ErrNotEmpty means the target holds data that is not a copy of the
// source; nothing was written.
var ErrNotEmpty = errors.New("the target already holds other batchd data")

// Copy copies every table of src into dst, as described in the package
// comment.
func Copy(ctx context.Context, src Source, dst Target, o Options) (*Report, error) {
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 1000
	}
	var rep *Report
	err := src.CopyOut(ctx, func(r Reader) error {
		return dst.CopyIn(ctx, func(w Writer) error {
			var err error
			rep, err = copyTables(ctx, r, w, o)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("copy: %w", err)
	}
	return rep, nil
}

func copyTables(ctx context.Context, r Reader, w Writer, o Options) (*Report, error) {
	tables, err := r.Tables(ctx)
	if err != nil {
		return nil, fmt.Errorf("source tables: %w", err)
	}
	targetTables, err := w.Tables(ctx)
	if err != nil {
		return nil, fmt.Errorf("target tables: %w", err)
	}
	if err := sameSchema(tables, targetTables); err != nil {
		return nil, err
	}
	want := make(map[string]Stat, len(tables))
	var total int64
	for _, t := range tables {
		st, err := r.Stat(ctx, t.Name)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", t.Name, err)
		}
		want[t.Name] = st
		total += st.Rows
	}
	// A copy of this source already: nothing to do.
	if same, _, err := compare(ctx, w, tables, want); err != nil || same {
		if err != nil {
			return nil, err
		}
		rep := &Report{AlreadyCopied: true}
		for _, t := range tables {
			rep.Tables = append(rep.Tables, TableReport{Name: t.Name, Rows: want[t.Name].Rows})
			rep.Rows += want[t.Name].Rows
		}
		return rep, nil
	}
	// Anything but what a server writes when it starts on an empty
	// database is someone's data: refuse (the reset is rolled back).
	if err := w.Reset(ctx); err != nil {
		return nil, fmt.Errorf("reset target: %w", err)
	}
	var held []string
	for _, t := range tables {
		st, err := w.Stat(ctx, t.Name)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", t.Name, err)
		}
		if st.Rows > 0 {
			held = append(held, fmt.Sprintf("%s: %d rows", t.Name, st.Rows))
		}
	}
	if len(held) > 0 {
		return nil, fmt.Errorf("%w (%s), and it is not a copy of this source; copy into an empty database or schema", ErrNotEmpty, strings.Join(held, ", "))
	}

	rep := &Report{}
	for _, t := range tables {
		rows, err := r.Rows(ctx, t)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", t.Name, err)
		}
		cr := &countingRows{Rows: rows, every: o.ProgressEvery, report: o.Progress,
			p: Progress{Table: t.Name, TableTotal: want[t.Name].Rows, Done: rep.Rows, Total: total}}
		n, err := w.Copy(ctx, t, cr)
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("write %s: %w", t.Name, err)
		}
		if o.Progress != nil {
			o.Progress(cr.p)
		}
		rep.Tables = append(rep.Tables, TableReport{Name: t.Name, Rows: n})
		rep.Rows += n
	}
	floors, err := r.Sequences(ctx)
	if err != nil {
		return nil, fmt.Errorf("source sequences: %w", err)
	}
	if err := w.SetSequences(ctx, floors); err != nil {
		return nil, fmt.Errorf("set sequences: %w", err)
	}
	same, diff, err := compare(ctx, w, tables, want)
	if err != nil {
		return nil, err
	}
	if !same {
		return nil, fmt.Errorf("verify: the copy differs from the source (%s); nothing was written", diff)
	}
	return rep, nil
}

// compare reports whether every table of the target has the stat the
// source's has, and if not, how the first differing one differs.
func compare(ctx context.Context, w Writer, tables []Table, want map[string]Stat) (bool, string, error) {
	for _, t := range tables {
		got, err := w.Stat(ctx, t.Name)
		if err != nil {
			return false, "", fmt.Errorf("target %s: %w", t.Name, err)
		}
		if got != want[t.Name] {
			return false, fmt.Sprintf("%s: %d rows up to %q, source %d up to %q", t.Name, got.Rows, got.Last, want[t.Name].Rows, want[t.Name].Last), nil
		}
	}
	return true, "", nil
}

// sameSchema checks that every source table exists in the target with
// the same columns: a column one driver's migrations added and the
// other's did not would otherwise be lost or fail half way.
func sameSchema(src, dst []Table) error {
	byName := make(map[string]Table, len(dst))
	for _, t := range dst {
		byName[t.Name] = t
	}
	for _, t := range src {
		d, ok := byName[t.Name]
		if !ok {
			return fmt.Errorf("the target has no table %s: are both at the same batchd version?", t.Name)
		}
		a, b := slices.Clone(t.Columns), slices.Clone(d.Columns)
		slices.Sort(a)
		slices.Sort(b)
		if !slices.Equal(a, b) {
			return fmt.Errorf("table %s: source columns %v, target columns %v: are both at the same batchd version?", t.Name, a, b)
		}
	}
	return nil
}

// countingRows counts the rows a writer pulls and reports progress.
type countingRows struct {
	Rows
	every  int64
	report func(Progress)
	p      Progress
}

func (c *countingRows) Next() bool {
	if !c.Rows.Next() {
		return false
	}
	c.p.TableDone++
	c.p.Done++
	if c.report != nil && c.p.TableDone%c.every == 0 {
		c.report(c.p)
	}
	return true
}
