package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/spf13/cobra"
)

// errNothingToRetry says a batch has no failed requests.
var errNothingToRetry = errors.New("every request succeeded; nothing to retry")

func newRetryCommand() *cobra.Command {
	var (
		wait     bool
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "retry ID",
		Short: "Resubmit the requests of an ended batch that did not succeed; print the new batch ID",
		Long: `Create a new batch with exactly the requests of an ended batch that did not
succeed (errored, canceled or expired), and print its ID.

batchd does this server-side. Servers without the retry endpoint (the
Anthropic API) get the same from the local copy 'batchd submit' kept: the
results are streamed, and the input lines of the failed custom_ids are
submitted again.`,
		Args: argsNamed,
	}
	conn := addConnFlags(cmd)
	stateDir := addStateDirFlag(cmd)
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for the new batch to end, like 'batchd wait'")
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "poll interval for --wait")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, stop := signalContext(cmd)
		defer stop()
		ctx = withNotices(ctx, cmd.ErrOrStderr())
		client := conn.client()
		ids, err := retryBatch(ctx, &client, args[0], *stateDir, cmd.OutOrStdout(), cmd.ErrOrStderr())
		if errors.Is(err, errNothingToRetry) {
			// Not a failure: the batch is already as good as it gets.
			fmt.Fprintf(cmd.ErrOrStderr(), "batch %s: %v\n", args[0], errNothingToRetry)
			return nil
		}
		if err != nil || !wait {
			return err
		}
		return waitAll(ctx, &client, ids, interval, cmd.ErrOrStderr())
	}
	return cmd
}

// retryBatch asks the server to retry batch id and falls back to the local
// copy when the server has no retry endpoint. It prints the new IDs on out.
func retryBatch(ctx context.Context, client *anthropic.Client, id, stateDirFlag string, out, errOut io.Writer) ([]string, error) {
	var batch anthropic.MessageBatch
	path := "v1/messages/batches/" + url.PathEscape(id) + "/retry"
	key := idempotencyKey()
	err := sendUnique(ctx, func() error {
		// No SDK retries: a retried POST could create two batches.
		return client.Post(ctx, path, nil, &batch, option.WithMaxRetries(0), key)
	})
	if err == nil {
		if _, err := fmt.Fprintln(out, batch.ID); err != nil {
			return nil, err
		}
		return []string{batch.ID}, nil
	}
	if apiStatus(err) == http.StatusBadRequest {
		// The batch may have nothing to retry; its counts say so without
		// matching the server's message.
		if orig, getErr := client.Messages.Batches.Get(ctx, id, anthropic.MessageBatchGetParams{}); getErr == nil &&
			orig.ProcessingStatus == anthropic.MessageBatchProcessingStatusEnded && countsOf(orig).failed() == 0 {
			return nil, errNothingToRetry
		}
	}
	if s := apiStatus(err); s != http.StatusNotFound && s != http.StatusMethodNotAllowed {
		return nil, fmt.Errorf("retry batch: %w", concise(err))
	}
	// A 404 means an unknown batch or a server without the endpoint. Asking
	// for the batch tells them apart without matching error messages.
	orig, err := client.Messages.Batches.Get(ctx, id, anthropic.MessageBatchGetParams{})
	if err != nil {
		return nil, fmt.Errorf("retry batch: %w", concise(err))
	}
	fmt.Fprintf(errOut, "server has no retry endpoint; resubmitting from the local copy\n")
	stateDir, err := resolveStateDir(stateDirFlag)
	if err != nil {
		return nil, err
	}
	return retryFromLocalCopy(ctx, client, orig, stateDir, out, errOut)
}

// retryFromLocalCopy collects the custom_ids that did not succeed from the
// results, then submits their lines of the local copy as a new batch.
// Memory is bounded by the number of failed requests of one batch.
func retryFromLocalCopy(ctx context.Context, client *anthropic.Client, orig *anthropic.MessageBatch, stateDir string, out, errOut io.Writer) ([]string, error) {
	if orig.ProcessingStatus != anthropic.MessageBatchProcessingStatusEnded {
		return nil, fmt.Errorf("retry batch: %s is %s; only an ended batch can be retried", orig.ID, orig.ProcessingStatus)
	}
	local, err := os.Open(localCopyPath(stateDir, orig.ID))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("retry batch: the server has no retry endpoint and there is no local copy of %s in %s (it was submitted elsewhere)", orig.ID, stateDir)
	}
	if err != nil {
		return nil, fmt.Errorf("retry batch: %w", err)
	}
	defer local.Close()

	failed := map[string]struct{}{}
	_, err = eachResult(ctx, client, orig.ID, func(r *anthropic.MessageBatchIndividualResponse) error {
		if r.Result.Type != "succeeded" {
			failed[r.CustomID] = struct{}{}
		}
		return nil
	}, func() error { return nil })
	if err != nil {
		return nil, fmt.Errorf("retry batch: %w", err)
	}
	if len(failed) == 0 {
		return nil, errNothingToRetry
	}

	dir, err := batchesDir(stateDir)
	if err != nil {
		return nil, err
	}
	sp := newSplitter(dir, defaultMaxRequests, defaultMaxBytes)
	defer sp.cleanup()
	err = readLines(local, defaultMaxBytes, func(lineNo int, line []byte) error {
		var req struct {
			CustomID string `json:"custom_id"`
		}
		if err := json.Unmarshal(line, &req); err != nil {
			return fmt.Errorf("read local copy, line %d: %w", lineNo, err)
		}
		if _, ok := failed[req.CustomID]; !ok {
			return nil
		}
		delete(failed, req.CustomID)
		return sp.add(lineNo, req.CustomID, line)
	})
	if err != nil {
		return nil, err
	}
	pending, err := sp.finish()
	if err != nil {
		return nil, err
	}
	if len(failed) > 0 {
		fmt.Fprintf(errOut, "warning: %d failed custom_ids are not in the local copy and are left out\n", len(failed))
	}
	if len(pending) == 0 {
		return nil, fmt.Errorf("retry batch %s: none of its failed requests are in the local copy", orig.ID)
	}
	return submitPending(ctx, client, stateDir, pending, out, errOut)
}
