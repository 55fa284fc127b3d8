package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/spf13/cobra"
)

// The webhooks commands manage batchd's webhook endpoints, a batchd
// extension of the API; an Anthropic API server answers them 404.

const webhookEndpointsPath = "v1/webhooks/endpoints"

func endpointPath(id string, rest ...string) string {
	return strings.Join(append([]string{webhookEndpointsPath, url.PathEscape(id)}, rest...), "/")
}

// webhookEndpoint is the part of an endpoint the tables show.
type webhookEndpoint struct {
	ID           string   `json:"id"`
	URL          string   `json:"url"`
	EventTypes   []string `json:"event_types"`
	Enabled      bool     `json:"enabled"`
	FailingSince *string  `json:"failing_since"`
	Secret       string   `json:"secret"`
}

// webhookAttempt is one logged delivery attempt.
type webhookAttempt struct {
	DeliveryID int64  `json:"delivery_id"`
	EventID    string `json:"event_id"`
	Attempt    int    `json:"attempt"`
	At         string `json:"at"`
	Status     int    `json:"status"`
	ErrorClass string `json:"error_class"`
	DurationMS int64  `json:"duration_ms"`
	Error      string `json:"error"`
	Truncated  bool   `json:"response_truncated"`
}

func newWebhooksCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "webhooks",
		Short: "Manage webhook endpoints (batchd only)",
		Long: `Manage the webhook endpoints of the workspace of the API key: batchd POSTs
message_batch.created, .canceling and .ended events to each, signed as
Standard Webhooks. These are batchd extensions of the API.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(
		newWebhooksCreateCommand(),
		newWebhooksListCommand(),
		newWebhooksGetCommand(),
		newWebhooksDeleteCommand(),
		newWebhooksRotateCommand(),
		newWebhooksEnableCommand(),
		newWebhooksTestCommand(),
		newWebhooksAttemptsCommand(),
		newWebhooksResendCommand(),
		newWebhooksRecoverCommand(),
	)
	return cmd
}

// webhookCall sends one request and returns the raw JSON answer. Requests
// that create or change something (once) are sent without the SDK's retries
// and resent only when the server cannot have seen them.
func webhookCall(ctx context.Context, conn *connFlags, method, path string, body any, once bool, opts ...option.RequestOption) ([]byte, error) {
	client := conn.client()
	if once {
		opts = append(opts, option.WithMaxRetries(0))
	}
	var raw []byte
	send := func() error {
		raw = nil
		return client.Execute(ctx, method, path, body, &raw, opts...)
	}
	var err error
	if once {
		err = sendUnique(ctx, send)
	} else {
		err = send()
	}
	if err != nil {
		return nil, concise(err)
	}
	return raw, nil
}

// printRawJSON pretty-prints an answer as the server sent it.
func printRawJSON(w io.Writer, raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("the server answered something that is not JSON: %q", truncate(string(raw), 200))
	}
	return printJSON(w, string(raw), v)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// webhookRun makes a command that sends one request and prints the answer.
func webhookRun(conn *connFlags, what string, req func(args []string) (method, path string, body any, once bool, err error), after func(cmd *cobra.Command, raw []byte)) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		method, path, body, once, err := req(args)
		if err != nil {
			return err
		}
		ctx, stop := signalContext(cmd)
		defer stop()
		raw, err := webhookCall(ctx, conn, method, path, body, once)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if err := printRawJSON(cmd.OutOrStdout(), raw); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if after != nil {
			after(cmd, raw)
		}
		return nil
	}
}

func newWebhooksCreateCommand() *cobra.Command {
	var (
		endpointURL string
		eventTypes  []string
		description string
	)
	cmd := &cobra.Command{
		Use:   "create --url URL",
		Short: "Create an endpoint; prints it as JSON, with its signing secret",
		Long: `Create a webhook endpoint and print it as JSON. The answer holds the
endpoint's signing secret, which is shown only this once (rotate issues a new
one). Without --event-types the endpoint gets every event type.`,
		Args: cobra.NoArgs,
	}
	conn := addConnFlags(cmd)
	cmd.Flags().StringVar(&endpointURL, "url", "", "receiver URL (required)")
	cmd.Flags().StringSliceVar(&eventTypes, "event-types", nil, "event types to send, comma-separated (default all): message_batch.created, message_batch.canceling, message_batch.ended")
	cmd.Flags().StringVar(&description, "description", "", "a note for humans")
	_ = cmd.MarkFlagRequired("url")
	cmd.RunE = webhookRun(conn, "create webhook endpoint", func([]string) (string, string, any, bool, error) {
		body := map[string]any{"url": endpointURL}
		if cmd.Flags().Changed("event-types") {
			body["event_types"] = nonNil(eventTypes)
		}
		if cmd.Flags().Changed("description") {
			body["description"] = description
		}
		return "POST", webhookEndpointsPath, body, true, nil
	}, func(cmd *cobra.Command, raw []byte) {
		secretNote(cmd, raw, "This is the only time the signing secret is shown: store it now (webhooks rotate issues a new one).")
	})
	return cmd
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// secretNote says on stderr that the secret in raw is shown only now.
func secretNote(cmd *cobra.Command, raw []byte, note string) {
	var e webhookEndpoint
	if json.Unmarshal(raw, &e) == nil && e.Secret != "" {
		fmt.Fprintln(cmd.ErrOrStderr(), note)
	}
}

func newWebhooksListCommand() *cobra.Command {
	var asJSONL bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the endpoints",
		Args:  cobra.NoArgs,
	}
	conn := addConnFlags(cmd)
	cmd.Flags().BoolVar(&asJSONL, "json", false, "print each endpoint as a JSON line")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, stop := signalContext(cmd)
		defer stop()
		raw, err := webhookCall(ctx, conn, "GET", webhookEndpointsPath, nil, false)
		if err != nil {
			return fmt.Errorf("list webhook endpoints: %w", err)
		}
		var page struct {
			Data []json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(raw, &page); err != nil {
			return fmt.Errorf("list webhook endpoints: decode answer: %w", err)
		}
		w := cmd.OutOrStdout()
		if asJSONL {
			return writeJSONLines(w, page.Data)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tURL\tENABLED\tEVENT_TYPES\tFAILING_SINCE")
		for _, item := range page.Data {
			var e webhookEndpoint
			if err := json.Unmarshal(item, &e); err != nil {
				return fmt.Errorf("list webhook endpoints: decode endpoint: %w", err)
			}
			types := strings.Join(e.EventTypes, ",")
			if types == "" {
				types = "all"
			}
			failing := "-"
			if e.FailingSince != nil {
				failing = *e.FailingSince
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.ID, e.URL, yesNo(e.Enabled), types, failing)
		}
		return tw.Flush()
	}
	return cmd
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func writeJSONLines(w io.Writer, items []json.RawMessage) error {
	var buf bytes.Buffer
	for _, item := range items {
		if err := json.Compact(&buf, item); err != nil {
			return fmt.Errorf("compact JSON: %w", err)
		}
		buf.WriteByte('\n')
	}
	_, err := w.Write(buf.Bytes())
	return err
}

func newWebhooksGetCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Print an endpoint as JSON",
		Args:  argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.RunE = webhookRun(conn, "get webhook endpoint", func(args []string) (string, string, any, bool, error) {
		return "GET", endpointPath(args[0]), nil, false, nil
	}, nil)
	return cmd
}

func newWebhooksDeleteCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete an endpoint",
		Args:  argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.RunE = webhookRun(conn, "delete webhook endpoint", func(args []string) (string, string, any, bool, error) {
		return "DELETE", endpointPath(args[0]), nil, false, nil
	}, nil)
	return cmd
}

// maxRotateGrace is the server's longest grace period.
const maxRotateGrace = 7 * 24 * time.Hour

func newWebhooksRotateCommand() *cobra.Command {
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "rotate ID",
		Short: "Issue a new signing secret; prints the endpoint as JSON, with the new secret",
		Long: `Issue a new signing secret for an endpoint and print the endpoint as JSON,
with the new secret, which is shown only this once. For the --grace period
the previous secret signs too (webhook-signature carries both signatures),
so receivers can switch over without losing events.`,
		Args: argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.Flags().DurationVar(&grace, "grace", 24*time.Hour, "how long the previous secret keeps signing too (at most 168h)")
	cmd.RunE = webhookRun(conn, "rotate webhook secret", func(args []string) (string, string, any, bool, error) {
		if grace < 0 || grace > maxRotateGrace {
			return "", "", nil, false, errors.New("--grace must be between 0 and 168h")
		}
		body := map[string]int64{"grace_period_seconds": int64(grace / time.Second)}
		return "POST", endpointPath(args[0], "rotate"), body, true, nil
	}, func(cmd *cobra.Command, raw []byte) {
		secretNote(cmd, raw, fmt.Sprintf("This is the only time the new signing secret is shown: store it now. The previous secret keeps signing for %s.", shortDuration(grace)))
	})
	return cmd
}

func newWebhooksEnableCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "enable ID",
		Short: "Enable an endpoint that was disabled (after failing, or 410 Gone)",
		Args:  argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.RunE = webhookRun(conn, "enable webhook endpoint", func(args []string) (string, string, any, bool, error) {
		return "POST", endpointPath(args[0], "enable"), nil, false, nil
	}, nil)
	return cmd
}

func newWebhooksTestCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "test ID",
		Short: "Send a test event to an endpoint",
		Long: `Send a webhook.test event to an endpoint, through the same queue and
retries as real events. Prints the event and delivery IDs as JSON; see how
the delivery went with 'batchd webhooks attempts ID'.`,
		Args: argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.RunE = webhookRun(conn, "send test event", func(args []string) (string, string, any, bool, error) {
		return "POST", endpointPath(args[0], "test"), nil, true, nil
	}, nil)
	return cmd
}

func newWebhooksAttemptsCommand() *cobra.Command {
	var (
		limit   int
		asJSONL bool
	)
	cmd := &cobra.Command{
		Use:   "attempts ID",
		Short: "List an endpoint's latest delivery attempts, newest first",
		Args:  argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.Flags().IntVar(&limit, "limit", 20, "how many attempts to show (1 to 1000)")
	cmd.Flags().BoolVar(&asJSONL, "json", false, "print each attempt as a JSON line, with the receiver's response")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if limit < 1 || limit > 1000 {
			return errors.New("--limit must be between 1 and 1000")
		}
		ctx, stop := signalContext(cmd)
		defer stop()
		raw, err := webhookCall(ctx, conn, "GET", endpointPath(args[0], "attempts"), nil, false,
			option.WithQuery("limit", strconv.Itoa(limit)))
		if err != nil {
			return fmt.Errorf("list delivery attempts: %w", err)
		}
		var page struct {
			Data []json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(raw, &page); err != nil {
			return fmt.Errorf("list delivery attempts: decode answer: %w", err)
		}
		w := cmd.OutOrStdout()
		if asJSONL {
			return writeJSONLines(w, page.Data)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "AT\tEVENT\tDELIVERY\tATTEMPT\tSTATUS\tCLASS\tDURATION\tNOTE")
		for _, item := range page.Data {
			var a webhookAttempt
			if err := json.Unmarshal(item, &a); err != nil {
				return fmt.Errorf("list delivery attempts: decode attempt: %w", err)
			}
			status := "-"
			if a.Status != 0 {
				status = strconv.Itoa(a.Status)
			}
			class := a.ErrorClass
			if class == "" {
				class = "-"
			}
			note := a.Error
			if a.Truncated {
				note = strings.TrimPrefix(note+"; response truncated to its first 16 KiB", "; ")
			}
			if note == "" {
				note = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", a.At, a.EventID, a.DeliveryID, a.Attempt, status, class,
				time.Duration(a.DurationMS)*time.Millisecond, note)
		}
		return tw.Flush()
	}
	return cmd
}

func newWebhooksResendCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "resend DELIVERY_ID",
		Short: "Make a delivery due again now, whatever its state",
		Long: `Make a delivery due again now, whatever its state, for example after
fixing a receiver. Delivery IDs are in 'batchd webhooks attempts ID'.`,
		Args: argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.RunE = webhookRun(conn, "resend delivery", func(args []string) (string, string, any, bool, error) {
		if _, err := strconv.ParseInt(args[0], 10, 64); err != nil {
			return "", "", nil, false, fmt.Errorf("delivery ID %q is not a number", args[0])
		}
		return "POST", "v1/webhooks/deliveries/" + args[0] + "/resend", nil, true, nil
	}, nil)
	return cmd
}

func newWebhooksRecoverCommand() *cobra.Command {
	var since string
	cmd := &cobra.Command{
		Use:   "recover ID --since TIME",
		Short: "Send an endpoint's failed and missed deliveries since a time again",
		Long: `Make every failed delivery of an endpoint, of events since --since, due
again, for example after an outage of the receiver, and deliver every event
since then that it missed while it was disabled (of the types it subscribes
to, once each, with the event's webhook-id). --since is an RFC 3339 time
(2026-11-29T00:00:00Z) or a duration back from now (2h, 90m). Prints how
many deliveries were recovered.`,
		Args: argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.Flags().StringVar(&since, "since", "", "RFC 3339 time or a duration back from now (required)")
	_ = cmd.MarkFlagRequired("since")
	cmd.RunE = webhookRun(conn, "recover deliveries", func(args []string) (string, string, any, bool, error) {
		t, err := parseSince(since, time.Now())
		if err != nil {
			return "", "", nil, false, err
		}
		return "POST", endpointPath(args[0], "recover"), map[string]string{"since": t.UTC().Format(time.RFC3339)}, false, nil
	}, nil)
	return cmd
}

// shortDuration writes 24h rather than 24h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// parseSince reads an RFC 3339 time or a duration back from now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("--since %q is neither an RFC 3339 time (2026-11-29T00:00:00Z) nor a duration (2h)", s)
}
