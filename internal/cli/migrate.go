package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/batchd/batchd/internal/store/migrate"
	"github.com/batchd/batchd/internal/store/storeopen"
)

// progressInterval is how often a copy that is not on a terminal prints a
// progress line.
const progressInterval = 2 * time.Second

func newMigrateCommand() *cobra.Command {
	var dataDir, databaseURL, from, to string
	var status bool
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply or report schema migrations, or copy an SQLite data dir into PostgreSQL",
		Long: `Without --from, migrate applies the schema migrations the store lacks (serve
also does at start), or with --status only lists which are applied and pending.

With --from DIR --to postgres://…, it copies the SQLite data dir DIR, whose
server must be stopped, into an empty PostgreSQL database (or schema, with
search_path in the URL): every batch, request, result, event, webhook
endpoint, delivery, API key and idempotency key, with ids and sequences, in
one transaction that is verified table by table before it commits. Leases
are copied lapsed, so the PostgreSQL processes take the work over at once.
Run again, it changes nothing when the target already holds this copy, and
refuses a target that holds other data. Webhook secrets stay sealed: start
every PostgreSQL process with DIR/webhook.key (--webhook-key-file).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from != "" {
				if status {
					return errors.New("--status does not go with --from")
				}
				return copyDataDir(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), from, cmp.Or(to, os.Getenv(storeopen.EnvURL)))
			}
			if to != "" {
				return errors.New("--to goes with --from DIR, the data dir to copy")
			}
			return migrateSchema(cmd.Context(), cmd.OutOrStdout(), dataDir, cmp.Or(databaseURL, os.Getenv(storeopen.EnvURL)), status)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", defaultDataDir, "directory of the SQLite database (the server's --data-dir)")
	f.StringVar(&databaseURL, "database-url", "",
		"the server's --database-url: sqlite:PATH, a file path, or postgres://… (default $"+storeopen.EnvURL+", else SQLite in --data-dir)")
	f.BoolVar(&status, "status", false, "only report the applied and pending migrations")
	f.StringVar(&from, "from", "", "copy this SQLite data dir (its server stopped) into the database --to names")
	f.StringVar(&to, "to", "", "with --from: the PostgreSQL database to copy into, postgres://… (default $"+storeopen.EnvURL+")")
	return cmd
}

// migrateSchema applies or reports the store's migrations.
func migrateSchema(ctx context.Context, out io.Writer, dataDir, databaseURL string, statusOnly bool) error {
	target, err := storeopen.Parse(databaseURL, dataDir)
	if err != nil {
		return err
	}
	applied, pending, unknown, err := storeopen.MigrationStatus(ctx, target)
	if err != nil {
		return err
	}
	if len(unknown) > 0 {
		fmt.Fprintf(out, "warning: %s has migrations this batchd does not know (%s): a newer batchd migrated it\n", target, strings.Join(unknown, ", "))
	}
	if statusOnly {
		fmt.Fprintf(out, "%s: %d applied, %d pending\n", target, len(applied), len(pending))
		for _, v := range applied {
			fmt.Fprintf(out, "  applied  %s\n", v)
		}
		for _, v := range pending {
			fmt.Fprintf(out, "  pending  %s\n", v)
		}
		return nil
	}
	if len(pending) == 0 {
		fmt.Fprintf(out, "%s is up to date: %d migrations applied\n", target, len(applied))
		return nil
	}
	if target.Driver == storeopen.SQLite {
		if _, err := os.Stat(target.Path); err != nil {
			return fmt.Errorf("no batchd database at %s: pass the --data-dir (or --database-url) the server uses", absPath(target.Path))
		}
		if databaseURL == "" {
			// The data dir's own database: not under a running server.
			unlock, err := lockDataDir(dataDir)
			if err != nil {
				return err
			}
			defer unlock()
		}
	}
	st, err := storeopen.Open(ctx, target, storeopen.Options{})
	if err != nil {
		return err
	}
	if err := st.Close(); err != nil {
		return err
	}
	for _, v := range pending {
		fmt.Fprintf(out, "applied %s\n", v)
	}
	fmt.Fprintf(out, "%s is up to date: %d migrations applied\n", target, len(applied)+len(pending))
	return nil
}

// copyDataDir copies the SQLite data dir from into the PostgreSQL database
// at to, holding the data dir's lock so that its server cannot start
// meanwhile (and refusing while it runs).
func copyDataDir(ctx context.Context, out, errOut io.Writer, from, to string) error {
	if to == "" {
		return fmt.Errorf("--from needs --to postgres://… (or $%s): the database to copy into", storeopen.EnvURL)
	}
	dst, err := storeopen.Parse(to, "")
	if err != nil {
		return fmt.Errorf("--to: %w", err)
	}
	if dst.Driver != storeopen.Postgres {
		return fmt.Errorf("--to: want a postgres:// URL, not %s", dst)
	}
	dbPath := filepath.Join(from, "batchd.db")
	if _, err := os.Stat(dbPath); err != nil {
		return fmt.Errorf("--from: no batchd database in %s (%w)", absPath(from), err)
	}
	unlock, err := lockDataDir(from)
	if err != nil {
		return fmt.Errorf("%w: stop it before copying its data dir", err)
	}
	defer unlock()
	srcStore, err := storeopen.Open(ctx, storeopen.Target{Driver: storeopen.SQLite, Path: dbPath}, storeopen.Options{})
	if err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	defer srcStore.Close()
	src, ok := srcStore.(migrate.Source)
	if !ok {
		return fmt.Errorf("--from: the %s store cannot be copied out", storeopen.SQLite)
	}
	dstStore, err := storeopen.Open(ctx, dst, storeopen.Options{})
	if err != nil {
		return fmt.Errorf("--to: %w", err)
	}
	defer dstStore.Close()
	tgt, ok := dstStore.(migrate.Target)
	if !ok {
		return fmt.Errorf("--to: the %s store cannot be copied into", dst.Driver)
	}

	fmt.Fprintf(out, "copying %s into %s\n", absPath(from), dst)
	prog := newCopyProgress(errOut)
	rep, err := migrate.Copy(ctx, src, tgt, migrate.Options{Progress: prog.report})
	prog.finish()
	if err != nil {
		return fmt.Errorf("migrate: %w; nothing was written to %s", err, dst)
	}
	if rep.AlreadyCopied {
		fmt.Fprintf(out, "%s already holds a copy of %s (every table's rows match): nothing changed\n", dst, absPath(from))
	} else {
		fmt.Fprintf(out, "copied %d rows, each table verified against the source:\n", rep.Rows)
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
		for _, t := range rep.Tables {
			fmt.Fprintf(tw, "  %s\t%d\t\n", t.Name, t.Rows)
		}
		tw.Flush()
	}
	keyPath := absPath(filepath.Join(from, "webhook.key"))
	if _, err := os.Stat(keyPath); errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(out, "no webhook key in %s; give every process one key with --webhook-key-file PATH or BATCHD_WEBHOOK_KEY\n", absPath(from))
	} else {
		fmt.Fprintf(out, "webhook secrets were copied sealed; only the data dir's key opens them: start every process with\n"+
			"  --webhook-key-file %s   (copy the file to each host, mode 0600)\n"+
			"  or BATCHD_WEBHOOK_KEY=\"$(cat %s)\"\n", keyPath, keyPath)
	}
	fmt.Fprintf(out, "%s keeps its data; keep it until the PostgreSQL servers run well\n", absPath(from))
	return nil
}

// copyProgress shows a copy's progress: a bar on a terminal, else a line
// every progressInterval and at the end of each table.
type copyProgress struct {
	w    io.Writer
	tty  bool
	bar  *progressbar.ProgressBar
	last time.Time
	// printed is the last line's progress, not printed twice.
	printed migrate.Progress
}

func newCopyProgress(w io.Writer) *copyProgress {
	f, ok := w.(*os.File)
	return &copyProgress{w: w, tty: ok && term.IsTerminal(int(f.Fd())), last: time.Now()}
}

func (c *copyProgress) report(p migrate.Progress) {
	if c.tty {
		if c.bar == nil {
			c.bar = progressbar.NewOptions64(p.Total, progressbar.OptionSetWriter(c.w), progressbar.OptionShowCount(),
				progressbar.OptionSetWidth(30), progressbar.OptionThrottle(100*time.Millisecond))
		}
		c.bar.Describe(p.Table)
		_ = c.bar.Set64(p.Done)
		return
	}
	if p.TableDone == 0 || p == c.printed {
		return
	}
	if now := time.Now(); p.TableDone == p.TableTotal || now.Sub(c.last) >= progressInterval {
		c.last, c.printed = now, p
		fmt.Fprintf(c.w, "copied %d/%d rows (%s %d/%d)\n", p.Done, p.Total, p.Table, p.TableDone, p.TableTotal)
	}
}

func (c *copyProgress) finish() {
	if c.bar != nil {
		_ = c.bar.Finish()
		fmt.Fprintln(c.w)
	}
}
