package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/batchd/batchd/internal/webhook"
	"github.com/spf13/cobra"
)

// knownEventTypes are the webhook event types batchd emits; webhook.test
// comes from 'batchd webhooks test'.
var knownEventTypes = []string{"message_batch.created", "message_batch.canceling", "message_batch.ended", "webhook.test"}

const (
	// listenFirstBackoff is the first delay before reconnecting.
	listenFirstBackoff = time.Second
	// maxForwardResponse is how much of a receiver's answer is read.
	maxForwardResponse = 64 << 10
)

func newListenCommand() *cobra.Command {
	var (
		forwardTo string
		events    []string
		secret    string
		since     string
		timeout   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "listen --forward-to URL",
		Short: "Forward the workspace's events to a local URL, signed like webhooks (batchd only)",
		Long: `Follow the workspace's event stream (GET /v1/events, a batchd extension) and
POST each webhook event to --forward-to, with the body and Standard Webhooks
headers (webhook-id, webhook-timestamp, webhook-signature) a webhook endpoint
would get, so a receiver can be developed without a public URL.

Events are signed with --secret, or with a fresh secret printed on stderr at
start. One line per event goes to stdout; a failed forward is reported and
listening goes on. The stream is resumed from the last event after a
disconnection. Ctrl-C ends it.

By default listen forwards what happens from when it starts. --since (an
RFC 3339 time, or a duration back from now such as 10m) first replays the
workspace's events created from that time on (GET /v1/events?since=), then
follows the live stream.`,
		Args: cobra.NoArgs,
	}
	conn := addConnFlags(cmd)
	cmd.Flags().StringVar(&forwardTo, "forward-to", "", "receiver URL to POST events to (required)")
	cmd.Flags().StringSliceVar(&events, "events", nil, "event types to forward, comma-separated (default all): "+strings.Join(knownEventTypes, ", "))
	cmd.Flags().StringVar(&secret, "secret", "", "signing secret, whsec_… (default a fresh one, printed at start)")
	cmd.Flags().StringVar(&since, "since", "", "forward events created from this RFC 3339 time or duration back from now (default: now)")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long the receiver has to answer")
	_ = cmd.MarkFlagRequired("forward-to")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		u, err := url.Parse(forwardTo)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--forward-to %q is not an http(s) URL", forwardTo)
		}
		if timeout <= 0 {
			return errors.New("--timeout must be positive")
		}
		from := time.Now()
		if since != "" {
			if from, err = parseSince(since, from); err != nil {
				return err
			}
		}
		errOut := cmd.ErrOrStderr()
		for _, t := range events {
			if !slices.Contains(knownEventTypes, t) {
				fmt.Fprintf(errOut, "warning: %q is not an event type batchd is known to send (%s)\n", t, strings.Join(knownEventTypes, ", "))
			}
		}
		if secret == "" {
			if secret, err = webhook.NewSecret(); err != nil {
				return err
			}
			fmt.Fprintf(errOut, "Your webhook signing secret is %s (this run only; pass --secret to keep one)\n", secret)
		} else if err := webhook.ValidateSecret(secret); err != nil {
			return fmt.Errorf("--secret: %w", err)
		}
		ctx, stop := signalContext(cmd)
		defer stop()
		client := conn.client()
		l := &listener{
			client:  &client,
			target:  forwardTo,
			secret:  secret,
			types:   events,
			since:   from,
			replay:  since != "",
			out:     cmd.OutOrStdout(),
			errOut:  errOut,
			forward: &http.Client{Timeout: timeout, CheckRedirect: noRedirects},
			now:     time.Now,
		}
		err = l.run(ctx)
		if ctx.Err() != nil {
			return nil // Ctrl-C is how listen ends
		}
		return err
	}
	return cmd
}

// noRedirects makes a redirect the answer, as for batchd's own deliveries.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// listener forwards the event stream to a receiver.
type listener struct {
	client *anthropic.Client
	target string
	secret string
	types  []string // empty means all
	since  time.Time
	// replay asks the server for the events since since (--since given);
	// otherwise the stream starts now.
	replay  bool
	out     io.Writer
	errOut  io.Writer
	forward *http.Client
	now     func() time.Time
}

// run follows GET /v1/events until ctx ends or the server refuses it.
func (l *listener) run(ctx context.Context) error {
	var (
		lastID     string
		serverWait time.Duration
		failures   int
		connected  bool
	)
	for {
		var opts []option.RequestOption
		if lastID == "" && l.replay {
			// The server replays from --since; a reconnection resumes
			// from the last event seen instead.
			opts = append(opts, option.WithQuery("since", l.since.UTC().Format(time.RFC3339Nano)))
		}
		stream, err := openEventStream(ctx, l.client, "v1/events", lastID, opts...)
		if err == nil {
			if !connected {
				fmt.Fprintf(l.errOut, "Ready! Forwarding events to %s (^C to quit)\n", l.target)
			} else if failures > 0 {
				fmt.Fprintln(l.errOut, "Reconnected.")
			}
			connected = true
			failures = 0
			err = l.forwardAll(ctx, stream)
			lastID = stream.LastEventID()
			if r := stream.Retry(); r > 0 {
				serverWait = r
			}
			stream.Close()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case errors.Is(err, errNoEventStream):
			return fmt.Errorf("listen needs a batchd server with an event stream: %w", err)
		case err != nil && apiStatus(err) != 0 && !transient(err):
			return fmt.Errorf("listen: %w", concise(err))
		case !connected && failures >= maxPollFailures:
			return fmt.Errorf("listen: cannot connect: %w", concise(err))
		}
		delay := sseBackoff(listenFirstBackoff, serverWait, failures)
		failures++
		reason := "the server closed the stream"
		if err != nil {
			reason = concise(err).Error()
		}
		fmt.Fprintf(l.errOut, "Disconnected (%s); reconnecting in %s\n", reason, delay)
		if err := sleepCtx(ctx, delay); err != nil {
			return err
		}
	}
}

// forwardAll forwards the events of one connection until it ends.
func (l *listener) forwardAll(ctx context.Context, stream *eventStream) error {
	for {
		ev, err := stream.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if ev.Event == sseEventProgress {
			continue
		}
		var env webhookEnvelope
		if err := json.Unmarshal(ev.Data, &env); err != nil || env.Type != "event" {
			fmt.Fprintf(l.errOut, "skipped a %q event that is not a webhook event\n", ev.Event)
			continue
		}
		var data struct {
			Type string `json:"type"`
			ID   string `json:"id"`
		}
		_ = json.Unmarshal(env.Data, &data)
		typ := firstNonEmpty(data.Type, ev.Event)
		if len(l.types) > 0 && !slices.Contains(l.types, typ) {
			continue
		}
		if t, err := time.Parse(time.RFC3339Nano, env.CreatedAt); err == nil && t.Before(l.since) {
			continue // history replayed to a new subscriber
		}
		l.forwardOne(ctx, &env, typ, data.ID, ev.Data)
	}
}

// forwardOne POSTs body, signed, to the receiver and prints one line. A
// failure is printed, never returned: listening goes on.
func (l *listener) forwardOne(ctx context.Context, env *webhookEnvelope, typ, subject string, body []byte) {
	at := env.CreatedAt
	if t, err := time.Parse(time.RFC3339Nano, at); err == nil {
		at = t.UTC().Format(time.RFC3339)
	} else {
		at = l.now().UTC().Format(time.RFC3339)
	}
	prefix := fmt.Sprintf("%s  %s  %s  → ", at, typ, firstNonEmpty(subject, env.ID))
	start := time.Now()
	status, err := l.post(ctx, env.ID, body)
	took := formatTook(time.Since(start))
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		fmt.Fprintf(l.out, "%serror: %v (%s)\n", prefix, err, took)
		return
	}
	fmt.Fprintf(l.out, "%s%d (%s)\n", prefix, status, took)
}

// formatTook writes 12ms, or 1.234s from a second on.
func formatTook(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
	return d.Round(time.Millisecond).String()
}

func (l *listener) post(ctx context.Context, msgID string, body []byte) (int, error) {
	now := l.now()
	sig, err := webhook.SignatureHeader([]string{l.secret}, msgID, now, body)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.target, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header = webhook.Headers(msgID, now, sig)
	req.Header.Set("User-Agent", "batchd-listen")
	res, err := l.forward.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // the URL is the same every time
		}
		return 0, err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, maxForwardResponse))
	return res.StatusCode, nil
}
