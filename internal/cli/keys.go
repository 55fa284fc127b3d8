package cli

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/storeopen"
)

// defaultDataDir is the --data-dir default of serve and keys alike, so that
// keys made without the flag are the ones the server reads.
const defaultDataDir = "./batchd-data"

// absPath is path made absolute for messages, or path itself.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

func newKeysCommand() *cobra.Command {
	var dataDir, databaseURL string
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Create, list and revoke API keys (on the server's data dir)",
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", defaultDataDir, "directory of the SQLite database (the server's --data-dir)")
	cmd.PersistentFlags().StringVar(&databaseURL, "database-url", "",
		"the server's --database-url: sqlite:PATH, a file path, or postgres://… (default $"+storeopen.EnvURL+", else SQLite in --data-dir)")
	// open opens the server's database. Only create may make a new SQLite
	// one: listing or revoking in a dir the server never used would
	// otherwise leave behind an empty database that looks like the real one.
	open := func(cmd *cobra.Command, mayCreate bool) (store.Store, error) {
		databaseURL := cmp.Or(databaseURL, os.Getenv(storeopen.EnvURL)) // the flag wins
		target, err := storeopen.Parse(databaseURL, dataDir)
		if err != nil {
			return nil, err
		}
		if target.Driver != storeopen.SQLite {
			return storeopen.Open(cmd.Context(), target, storeopen.Options{})
		}
		dbPath := target.Path
		if databaseURL != "" {
			dataDir = filepath.Dir(dbPath)
		}
		if _, err := os.Stat(dbPath); err != nil {
			if !os.IsNotExist(err) {
				return nil, fmt.Errorf("open data dir: %w", err)
			}
			if !mayCreate {
				return nil, fmt.Errorf("no batchd database in %s: pass the --data-dir the server uses", absPath(dataDir))
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "creating a new data dir %s\n", absPath(dataDir))
		}
		if err := prepareDataDir(dataDir, func(msg string) { fmt.Fprintln(cmd.ErrOrStderr(), "warning: "+msg) }); err != nil {
			return nil, err
		}
		return storeopen.Open(cmd.Context(), target, storeopen.Options{})
	}

	var workspace string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a key for a workspace; prints the key, the only time it is shown",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if workspace == "" {
				return fmt.Errorf("--workspace is required")
			}
			st, err := open(cmd, true)
			if err != nil {
				return err
			}
			defer st.Close()
			key, hash, prefix := batch.NewAPIKey()
			if _, err := st.KeyCreate(cmd.Context(), store.KeyCreateParams{
				ID: batch.NewID("key_"), Workspace: workspace, Hash: hash, Prefix: prefix, CreatedAt: time.Now(),
			}); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), key)
			// stderr, so that `KEY=$(batchd keys create ...)` stays clean.
			fmt.Fprintf(cmd.ErrOrStderr(), "key %s for workspace %s stored in %s; the server using that --data-dir accepts it at once\n", prefix, workspace, absPath(dataDir))
			return nil
		},
	}
	create.Flags().StringVar(&workspace, "workspace", "", "workspace the key's batches belong to")

	list := &cobra.Command{
		Use:   "list",
		Short: "List keys (id, prefix, workspace, created, revoked)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := open(cmd, false)
			if err != nil {
				return err
			}
			defer st.Close()
			keys, err := st.KeyList(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tPREFIX\tWORKSPACE\tCREATED\tREVOKED")
			for _, k := range keys {
				revoked := "-"
				if k.RevokedAt != nil {
					revoked = k.RevokedAt.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.ID, k.Prefix, k.Workspace, k.CreatedAt.Format(time.RFC3339), revoked)
			}
			return tw.Flush()
		},
	}

	revoke := &cobra.Command{
		Use:   "revoke ID|PREFIX",
		Short: "Revoke a key; requests with it get 401 at once",
		Args:  argsNamed,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open(cmd, false)
			if err != nil {
				return err
			}
			defer st.Close()
			k, err := st.KeyRevoke(cmd.Context(), args[0], time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s (%s, workspace %s)\n", k.ID, k.Prefix, k.Workspace)
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
