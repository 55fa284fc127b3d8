package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/spf13/cobra"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/ids"
)

const (
	// defaultBaseURL is where `batchd serve` listens by default.
	defaultBaseURL = "http://127.0.0.1:8080"
	// dummyAPIKey is sent when no key is configured: the SDK refuses to send a
	// request without a credential, and a batchd server without keys accepts any.
	dummyAPIKey = "batchd-local"
)

// addClientCommands adds the commands that talk to a server over HTTP. They
// all go through the official Anthropic Go SDK, so they work against batchd
// and api.anthropic.com alike; batchd-only endpoints (retry, partial results)
// have fallbacks or say so in their help.
func addClientCommands(root *cobra.Command) {
	root.AddCommand(
		newSubmitCommand(),
		newStatusCommand(),
		newListCommand(),
		newCancelCommand(),
		newDeleteCommand(),
		newWaitCommand(),
		newResultsCommand(),
		newRetryCommand(),
		newWebhooksCommand(),
		newListenCommand(),
		newUsageCommand(),
	)
}

// connFlags are the connection flags every client command has. They are added
// per command rather than as persistent flags on root, which serve shares.
type connFlags struct {
	baseURL string
	apiKey  string
}

func addConnFlags(cmd *cobra.Command) *connFlags {
	f := &connFlags{}
	cmd.Flags().StringVar(&f.baseURL, "base-url", "", "server URL (default $ANTHROPIC_BASE_URL, else "+defaultBaseURL+")")
	// The default is resolved at run time so that help never prints the key.
	cmd.Flags().StringVar(&f.apiKey, "api-key", "", "API key (default $ANTHROPIC_API_KEY, else a dummy key for an open server)")
	return f
}

// client builds the SDK client. Explicit options beat the SDK's own
// environment handling, and passing a key keeps the SDK from looking for
// profiles or federation credentials.
func (f *connFlags) client() anthropic.Client {
	baseURL := firstNonEmpty(f.baseURL, os.Getenv("ANTHROPIC_BASE_URL"), defaultBaseURL)
	apiKey := firstNonEmpty(f.apiKey, os.Getenv("ANTHROPIC_API_KEY"), dummyAPIKey)
	return anthropic.NewClient(option.WithBaseURL(baseURL), option.WithAPIKey(apiKey))
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// addStateDirFlag adds --state-dir to the commands that keep or read local
// copies of submitted input.
func addStateDirFlag(cmd *cobra.Command) *string {
	dir := new(string)
	cmd.Flags().StringVar(dir, "state-dir", "", "where local copies of submitted batches are kept (default $BATCHD_STATE_DIR, else <user config dir>/batchd)")
	return dir
}

// resolveStateDir returns the state dir: the flag, else $BATCHD_STATE_DIR,
// else <user config dir>/batchd.
func resolveStateDir(flag string) (string, error) {
	if dir := firstNonEmpty(flag, os.Getenv("BATCHD_STATE_DIR")); dir != "" {
		return dir, nil
	}
	cfg, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find state dir (set BATCHD_STATE_DIR): %w", err)
	}
	return filepath.Join(cfg, "batchd"), nil
}

// batchesDir returns <state dir>/batches, creating it. It is private to the
// user because the copies hold prompts.
func batchesDir(stateDir string) (string, error) {
	dir := filepath.Join(stateDir, "batches")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create state dir: %w", err)
	}
	return dir, nil
}

// localCopyPath is where submit keeps the input of batch id.
func localCopyPath(stateDir, id string) string {
	return filepath.Join(stateDir, "batches", id+".jsonl")
}

// safeBatchID reports whether id can be used as a file name as is. Server IDs
// always can; this guards the state dir against a misbehaving server.
func safeBatchID(id string) bool {
	return batchIDPattern.MatchString(id)
}

var batchIDPattern = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,200}$`)

// signalContext makes Ctrl-C cancel the command's context, so that commands
// clean up temp files instead of dying mid-write.
func signalContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(cmd.Context(), os.Interrupt)
}

// printJSON pretty-prints raw JSON as the server sent it, so that fields the
// SDK does not know survive.
func printJSON(w io.Writer, raw string, v any) error {
	var out []byte
	if raw != "" {
		var buf bytes.Buffer
		if err := json.Indent(&buf, []byte(raw), "", "  "); err == nil {
			out = buf.Bytes()
		}
	}
	if out == nil {
		var err error
		if out, err = json.MarshalIndent(v, "", "  "); err != nil {
			return fmt.Errorf("encode JSON: %w", err)
		}
	}
	out = append(out, '\n')
	_, err := w.Write(out)
	return err
}

// apiStatus returns the HTTP status of an API error, or 0.
func apiStatus(err error) int {
	var apiErr *anthropic.Error
	if errors.As(err, &apiErr) {
		return apiErr.StatusCode
	}
	return 0
}

// unsent reports whether err proves the server never processed a request: a
// 429, or a connection that could not be opened. Only then is it safe to
// resend a request that creates something.
func unsent(err error) bool {
	if apiStatus(err) == http.StatusTooManyRequests {
		return true
	}
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "dial"
}

// retryAfter is how long the server asked us to wait, if it did.
func retryAfter(err error) (time.Duration, bool) {
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) || apiErr.Response == nil {
		return 0, false
	}
	secs, perr := strconv.ParseFloat(apiErr.Response.Header.Get("Retry-After"), 64)
	if perr != nil || secs < 0 {
		return 0, false
	}
	return time.Duration(secs * float64(time.Second)), true
}

// idempotencyKey is a fresh Idempotency-Key header for one create or
// retry, sent with each of its attempts: batchd answers a resend of a
// request it did act on with the batch it made then, instead of making a
// second (a server without the extension ignores the header).
func idempotencyKey() option.RequestOption {
	return option.WithHeader("Idempotency-Key", ids.New("batchd-cli-"))
}

// createAttempts bounds resends of create-like requests: with the delays of
// sendUnique (1 s, 2 s, 4 s) a server that does not answer is given up on
// after about 7 s.
const createAttempts = 4

// noticeKey carries the writer sendUnique tells about its resends.
type noticeKey struct{}

// withNotices makes sendUnique under ctx say on w when it resends.
func withNotices(ctx context.Context, w io.Writer) context.Context {
	return context.WithValue(ctx, noticeKey{}, w)
}

// sendUnique runs send, resending only when the server cannot have acted on
// the previous attempt. The SDK cannot retry our streamed bodies itself (they
// cannot be rewound) and must not blindly retry requests that create batches,
// since a retried create makes a second batch. Each resend is announced on
// the writer of withNotices, so that a user is not left with silence.
func sendUnique(ctx context.Context, send func() error) error {
	notices, _ := ctx.Value(noticeKey{}).(io.Writer)
	delay := time.Second
	for attempt := 1; ; attempt++ {
		err := send()
		if err == nil || !unsent(err) {
			return err
		}
		if attempt == createAttempts {
			return fmt.Errorf("giving up after %d attempts: %w", attempt, concise(err))
		}
		wait := delay
		if d, ok := retryAfter(err); ok {
			wait = min(d, time.Minute)
		}
		if notices != nil {
			what := "no answer from the server"
			if apiStatus(err) == http.StatusTooManyRequests {
				what = "the server is busy"
			}
			fmt.Fprintf(notices, "%s (%v); retrying in %s (attempt %d of %d)\n", what, concise(err), wait, attempt+1, createAttempts)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		delay *= 2
	}
}

// localCopyMaxAge is how long submit keeps local copies: as long as a batch's
// results are kept (batchd's default retention, the Anthropic API's 29 days),
// after which retrying from them is no longer possible anyway.
const localCopyMaxAge = batch.DefaultRetention

// sweepLocalCopies removes local copies (<id>.jsonl in dir) last written
// before cutoff.
func sweepLocalCopies(dir string, cutoff time.Time) {
	matches, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	for _, path := range matches {
		if strings.HasPrefix(filepath.Base(path), ".") {
			continue // pending files have their own sweep
		}
		if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && fi.ModTime().Before(cutoff) {
			_ = os.Remove(path)
		}
	}
}

// apiError shortens the SDK's error, which quotes the whole URL and body,
// to status, type and message. It unwraps to the SDK's error so callers can
// still inspect it.
type apiError struct{ err *anthropic.Error }

func (e apiError) Error() string {
	msg := fmt.Sprintf("%d %s", e.err.StatusCode, http.StatusText(e.err.StatusCode))
	if t := e.err.Type(); t != "" {
		msg += " " + string(t)
	}
	if e.err.Message != "" {
		msg += ": " + e.err.Message
	}
	if e.err.RequestID != "" {
		msg += " (request " + e.err.RequestID + ")"
	}
	return msg
}

func (e apiError) Unwrap() error { return e.err }

// concise returns err with any SDK API error in it shortened by apiError.
func concise(err error) error {
	var sdkErr *anthropic.Error
	if errors.As(err, &sdkErr) && sdkErr.Message != "" {
		return apiError{sdkErr}
	}
	return err
}
