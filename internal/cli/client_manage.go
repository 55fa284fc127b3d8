package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/spf13/cobra"
)

// maxListPage is the API's largest list page.
const maxListPage = 1000

func newStatusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status ID",
		Short: "Print a batch as JSON",
		Args:  argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		client := conn.client()
		batch, err := client.Messages.Batches.Get(cmd.Context(), args[0], anthropic.MessageBatchGetParams{})
		if err != nil {
			return fmt.Errorf("get batch: %w", concise(err))
		}
		return printJSON(cmd.OutOrStdout(), batch.RawJSON(), batch)
	}
	return cmd
}

func newCancelCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a batch; prints it as JSON",
		Args:  argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		client := conn.client()
		batch, err := client.Messages.Batches.Cancel(cmd.Context(), args[0], anthropic.MessageBatchCancelParams{})
		if err != nil {
			return fmt.Errorf("cancel batch: %w", concise(err))
		}
		return printJSON(cmd.OutOrStdout(), batch.RawJSON(), batch)
	}
	return cmd
}

func newDeleteCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete an ended batch and its local copy",
		Args:  argsNamed,
	}
	conn := addConnFlags(cmd)
	stateDir := addStateDirFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		client := conn.client()
		deleted, err := client.Messages.Batches.Delete(cmd.Context(), args[0], anthropic.MessageBatchDeleteParams{})
		if err != nil {
			return fmt.Errorf("delete batch: %w", concise(err))
		}
		// The local copy only serves retry, which needs the batch.
		if dir, err := resolveStateDir(*stateDir); err == nil && safeBatchID(args[0]) {
			if err := os.Remove(localCopyPath(dir, args[0])); err != nil && !errors.Is(err, os.ErrNotExist) {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: remove local copy: %v\n", err)
			}
		}
		return printJSON(cmd.OutOrStdout(), deleted.RawJSON(), deleted)
	}
	return cmd
}

func newListCommand() *cobra.Command {
	var (
		limit   int
		all     bool
		asJSONL bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List batches, newest first",
		Args:  cobra.NoArgs,
	}
	conn := addConnFlags(cmd)
	cmd.Flags().IntVar(&limit, "limit", 20, "how many batches to show")
	cmd.Flags().BoolVar(&all, "all", false, "show every batch, ignoring --limit")
	cmd.Flags().BoolVar(&asJSONL, "json", false, "print each batch as a JSON line")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if limit < 1 && !all {
			return errors.New("--limit must be at least 1")
		}
		client := conn.client()
		pageSize := maxListPage
		if !all {
			pageSize = min(limit, maxListPage)
		}
		w := cmd.OutOrStdout()
		if !asJSONL {
			fmt.Fprintln(w, listHeader())
		}
		iter := client.Messages.Batches.ListAutoPaging(cmd.Context(), anthropic.MessageBatchListParams{Limit: anthropic.Int(int64(pageSize))})
		for n := 0; (all || n < limit) && iter.Next(); n++ {
			b := iter.Current()
			if err := writeListItem(w, &b, asJSONL); err != nil {
				return err
			}
		}
		if err := iter.Err(); err != nil {
			return fmt.Errorf("list batches: %w", concise(err))
		}
		return nil
	}
	return cmd
}

// The table has fixed-width columns, rather than a tabwriter, so that rows
// stream out as pages arrive instead of all being held for alignment.
const listRowFormat = "%-34s %-11s %8v %10v %9v %8v %8v %8v  %s"

func listHeader() string {
	return fmt.Sprintf(listRowFormat, "ID", "STATUS", "TOTAL", "PROCESSING", "SUCCEEDED", "ERRORED", "CANCELED", "EXPIRED", "CREATED_AT")
}

func writeListItem(w io.Writer, b *anthropic.MessageBatch, asJSONL bool) error {
	if asJSONL {
		var buf bytes.Buffer
		if err := json.Compact(&buf, []byte(b.RawJSON())); err != nil {
			return fmt.Errorf("compact batch %s: %w", b.ID, err)
		}
		buf.WriteByte('\n')
		_, err := w.Write(buf.Bytes())
		return err
	}
	c := countsOf(b)
	_, err := fmt.Fprintf(w, listRowFormat+"\n", b.ID, b.ProcessingStatus, c.total(), c.processing, c.succeeded, c.errored, c.canceled, c.expired,
		b.CreatedAt.UTC().Format(time.RFC3339))
	return err
}
