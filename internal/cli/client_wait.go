package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// maxPollFailures is how many polls in a row may fail transiently (network,
// 429, 5xx, after the SDK's own retries) before wait gives up: a wait can
// last hours and should outlive a server restart.
const maxPollFailures = 5

// defaultGiveUp is how long wait keeps trying a server that does not answer
// (down, restarting, unreachable) before it gives up; it says at once that
// it is retrying.
const defaultGiveUp = 2 * time.Minute

// waitOptions are how wait watches.
type waitOptions struct {
	interval time.Duration // poll interval, first reconnection delay
	giveUp   time.Duration // a server silent this long ends the wait
}

func newWaitCommand() *cobra.Command {
	var interval, giveUp time.Duration
	cmd := &cobra.Command{
		Use:   "wait ID...",
		Short: "Wait for batches to end; exit 0 if every request succeeded, 2 otherwise",
		Long: `Wait for batches to end, one after the other, showing progress on stderr.

Against batchd, wait follows each batch's event stream
(GET /v1/messages/batches/{id}/events), reconnecting if it drops; against
other servers it polls every --interval. Without a terminal it logs a line
when the counts change and at least every 10 s. When the server does not
answer it says so at once and keeps trying for --give-up-after (2m).

Exits 0 when every request succeeded and 2 when a batch ended with any
errored, canceled or expired request.`,
		Args: argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "poll interval (and first reconnection delay of the event stream)")
	cmd.Flags().DurationVar(&giveUp, "give-up-after", defaultGiveUp, "end the wait (exit 1) when the server has not answered for this long")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, stop := signalContext(cmd)
		defer stop()
		client := conn.client()
		return waitAllWith(ctx, &client, args, waitOptions{interval: interval, giveUp: giveUp}, cmd.ErrOrStderr())
	}
	return cmd
}

// waitAll waits for each batch in turn, giving up on a silent server after
// defaultGiveUp. It returns an *ExitError with code 2 when any batch ended
// with requests that did not succeed.
func waitAll(ctx context.Context, client *anthropic.Client, ids []string, interval time.Duration, errOut io.Writer) error {
	return waitAllWith(ctx, client, ids, waitOptions{interval: interval, giveUp: defaultGiveUp}, errOut)
}

// waitAllWith is waitAll with every option.
func waitAllWith(ctx context.Context, client *anthropic.Client, ids []string, opts waitOptions, errOut io.Writer) error {
	if opts.interval <= 0 {
		return errors.New("--interval must be positive")
	}
	if opts.giveUp <= 0 {
		return errors.New("--give-up-after must be positive")
	}
	var failed []string
	for i, id := range ids {
		label := id
		if len(ids) > 1 {
			label = fmt.Sprintf("[batch %d of %d] %s", i+1, len(ids), id)
		}
		batch, err := watchBatch(ctx, client, id, opts, newProgressReporter(errOut, label))
		if err != nil {
			return err
		}
		line := summaryLine(batch)
		if len(ids) > 1 {
			line = fmt.Sprintf("[batch %d of %d] %s", i+1, len(ids), line)
		}
		fmt.Fprintln(errOut, line)
		if err := batchOutcome(batch); err != nil {
			failed = append(failed, err.Error())
		}
	}
	switch len(failed) {
	case 0:
		return nil
	case 1:
		return &ExitError{Code: 2, Err: errors.New(failed[0])}
	default:
		return &ExitError{Code: 2, Err: fmt.Errorf("%d batches had requests that did not succeed:\n  %s", len(failed), strings.Join(failed, "\n  "))}
	}
}

// outage tracks a server that does not answer: it reports the first failure
// at once and gives up once the server has been silent for giveUp.
type outage struct {
	giveUp time.Duration
	now    func() time.Time
	report progressReporter
	since  time.Time // zero while the server answers
}

// fail records a failed call and returns an error once it is time to give up.
func (o *outage) fail(err error) error {
	now := o.now()
	if o.since.IsZero() {
		o.since = now
		o.report.unreachable(err, o.giveUp)
	}
	if now.Sub(o.since) >= o.giveUp {
		return fmt.Errorf("giving up: no answer from the server for %s (--give-up-after): %w", o.giveUp, concise(err))
	}
	return nil
}

// ok records an answer.
func (o *outage) ok() { o.since = time.Time{} }

// progressReporter sees every observation of a batch while waiting.
type progressReporter interface {
	update(b *anthropic.MessageBatch)
	// unreachable says the server did not answer and that wait retries
	// for up to giveUp.
	unreachable(err error, giveUp time.Duration)
	// done is called once, with the ended batch or nil when waiting failed.
	done(b *anthropic.MessageBatch)
}

// watchBatch waits until the batch has ended and returns it, passing every
// observation to report. It follows the batch's event stream when the server
// offers one (batchd does) and polls otherwise; both feed the same display.
// It asks for the batch first, so that a batch that already ended (or is
// canceling) is shown as it is, not as the stream's replayed history.
func watchBatch(ctx context.Context, client *anthropic.Client, id string, opts waitOptions, report progressReporter) (ended *anthropic.MessageBatch, err error) {
	defer func() { report.done(ended) }()
	o := &outage{giveUp: opts.giveUp, now: time.Now, report: report}
	update := forwardOnly(report.update)
	for {
		batch, getErr := client.Messages.Batches.Get(ctx, id, anthropic.MessageBatchGetParams{}, option.WithMaxRetries(0))
		if getErr == nil {
			o.ok()
			if batch.ProcessingStatus == anthropic.MessageBatchProcessingStatusEnded {
				return batch, nil
			}
			update(batch)
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !transient(getErr) {
			return nil, fmt.Errorf("get batch %s: %w", id, concise(getErr))
		}
		if err := o.fail(getErr); err != nil {
			return nil, err
		}
		if err := sleepCtx(ctx, opts.interval); err != nil {
			return nil, err
		}
	}
	ended, err = streamBatch(ctx, client, id, opts.interval, o, update)
	if errors.Is(err, errNoEventStream) {
		return pollBatch(ctx, client, id, opts.interval, o, update)
	}
	return ended, err
}

// forwardOnly drops observations older than one already seen: an event
// stream may replay history, which must not show a batch going backwards.
func forwardOnly(update func(*anthropic.MessageBatch)) func(*anthropic.MessageBatch) {
	var done int64 = -1
	var status anthropic.MessageBatchProcessingStatus
	return func(b *anthropic.MessageBatch) {
		d := countsOf(b).done()
		if d < done || status == anthropic.MessageBatchProcessingStatusCanceling && b.ProcessingStatus == anthropic.MessageBatchProcessingStatusInProgress {
			return
		}
		done, status = d, b.ProcessingStatus
		update(b)
	}
}

// pollBatch GETs the batch every interval until it has ended.
func pollBatch(ctx context.Context, client *anthropic.Client, id string, interval time.Duration, o *outage, update func(*anthropic.MessageBatch)) (*anthropic.MessageBatch, error) {
	for {
		batch, getErr := client.Messages.Batches.Get(ctx, id, anthropic.MessageBatchGetParams{}, option.WithMaxRetries(0))
		switch {
		case getErr == nil:
			o.ok()
			update(batch)
			if batch.ProcessingStatus == anthropic.MessageBatchProcessingStatusEnded {
				return batch, nil
			}
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case transient(getErr):
			if err := o.fail(getErr); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("get batch %s: %w", id, concise(getErr))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(interval):
		}
	}
}

// streamBatch follows GET /v1/messages/batches/{id}/events until the batch
// has ended, reconnecting with Last-Event-ID when the stream drops. It
// returns an error wrapping errNoEventStream when the server has no stream
// (or keeps closing it without a word), so that the caller polls instead.
func streamBatch(ctx context.Context, client *anthropic.Client, id string, interval time.Duration, o *outage, update func(*anthropic.MessageBatch)) (*anthropic.MessageBatch, error) {
	path := "v1/messages/batches/" + url.PathEscape(id) + "/events"
	var (
		lastID     string
		serverWait time.Duration
		failures   int // connections in a row that failed or said nothing
	)
	for {
		stream, err := openEventStream(ctx, client, path, lastID)
		if err == nil {
			var ended *anthropic.MessageBatch
			var got bool
			ended, got, err = readBatchEvents(stream, id, update)
			lastID = stream.LastEventID()
			if r := stream.Retry(); r > 0 {
				serverWait = r
			}
			stream.Close()
			if ended != nil {
				return finalBatch(ctx, client, ended, update), nil
			}
			if got {
				failures = 0
			}
		}
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(err, errNoEventStream):
			return nil, err
		case err != nil && apiStatus(err) != 0 && !transient(err):
			return nil, fmt.Errorf("stream events of batch %s: %w", id, concise(err))
		}
		// The stream dropped or could not be opened. Maybe the batch ended
		// unseen: ask, which also keeps the display fresh.
		if batch, getErr := client.Messages.Batches.Get(ctx, id, anthropic.MessageBatchGetParams{}, option.WithMaxRetries(0)); getErr == nil {
			o.ok()
			update(batch)
			if batch.ProcessingStatus == anthropic.MessageBatchProcessingStatusEnded {
				return batch, nil
			}
		} else if ctx.Err() != nil {
			return nil, ctx.Err()
		} else if !transient(getErr) {
			return nil, fmt.Errorf("get batch %s: %w", id, concise(getErr))
		} else {
			// No answer at all: the outage, not the stream, decides
			// when to give up.
			if err := o.fail(getErr); err != nil {
				return nil, err
			}
			if err := sleepCtx(ctx, interval); err != nil {
				return nil, err
			}
			continue
		}
		failures++
		if failures > maxPollFailures {
			if err != nil { // transient, as others returned above
				return nil, fmt.Errorf("stream events of batch %s: %w", id, concise(err))
			}
			// Streams that open and close without an event: a proxy in
			// the way, say. Polling still works.
			return nil, fmt.Errorf("%w: the batch's event stream keeps closing without events", errNoEventStream)
		}
		if err := sleepCtx(ctx, sseBackoff(interval, serverWait, failures-1)); err != nil {
			return nil, err
		}
	}
}

// readBatchEvents reads one connection's events, passing each observation
// of batch id to update. It returns the batch once an event says it ended,
// and whether any event came.
func readBatchEvents(stream *eventStream, id string, update func(*anthropic.MessageBatch)) (ended *anthropic.MessageBatch, got bool, err error) {
	for {
		ev, err := stream.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return nil, got, err
		}
		got = true
		// A malformed event costs one update: when the stream closes, the
		// batch is fetched anyway.
		b, err := batchOfEvent(ev)
		if err != nil || b == nil || b.ID != id {
			continue
		}
		m := b.messageBatch()
		if m.ProcessingStatus == "" && b.Type == "message_batch.ended" {
			m.ProcessingStatus = anthropic.MessageBatchProcessingStatusEnded
		}
		if m.ProcessingStatus == anthropic.MessageBatchProcessingStatusEnded {
			return m, got, nil
		}
		if b.RequestCounts != nil {
			update(m)
		}
	}
}

// finalBatch fetches the ended batch, which has every field (the summary
// wants created_at), and falls back to what the event said.
func finalBatch(ctx context.Context, client *anthropic.Client, ended *anthropic.MessageBatch, update func(*anthropic.MessageBatch)) *anthropic.MessageBatch {
	if batch, err := client.Messages.Batches.Get(ctx, ended.ID, anthropic.MessageBatchGetParams{}); err == nil &&
		batch.ProcessingStatus == anthropic.MessageBatchProcessingStatusEnded {
		ended = batch
	}
	update(ended)
	return ended
}

// transient reports whether err may go away by itself: no response at all,
// rate limiting or a server error.
func transient(err error) bool {
	status := apiStatus(err)
	return status == 0 || status == http.StatusTooManyRequests || status >= 500
}

// batchCounts are a batch's request counts in one place.
type batchCounts struct {
	processing, succeeded, errored, canceled, expired int64
}

func countsOf(b *anthropic.MessageBatch) batchCounts {
	c := b.RequestCounts
	return batchCounts{c.Processing, c.Succeeded, c.Errored, c.Canceled, c.Expired}
}

func (c batchCounts) done() int64   { return c.succeeded + c.errored + c.canceled + c.expired }
func (c batchCounts) total() int64  { return c.done() + c.processing }
func (c batchCounts) failed() int64 { return c.errored + c.canceled + c.expired }

// batchOutcome is nil when every request of an ended batch succeeded, and
// otherwise says how many did not.
func batchOutcome(b *anthropic.MessageBatch) error {
	c := countsOf(b)
	if c.failed() == 0 {
		return nil
	}
	return fmt.Errorf("batch %s: %d of %s did not succeed (errored %d, canceled %d, expired %d)",
		b.ID, c.failed(), plural(c.total(), "request"), c.errored, c.canceled, c.expired)
}

// plural is "1 request", "2 requests".
func plural(n int64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// summaryLine describes an ended batch.
func summaryLine(b *anthropic.MessageBatch) string {
	c := countsOf(b)
	line := fmt.Sprintf("%s ended: %s, succeeded %d, errored %d, canceled %d, expired %d",
		b.ID, plural(c.total(), "request"), c.succeeded, c.errored, c.canceled, c.expired)
	if !b.CreatedAt.IsZero() && !b.EndedAt.IsZero() {
		line += fmt.Sprintf(" (took %s)", b.EndedAt.Sub(b.CreatedAt).Round(time.Second))
	}
	return line
}

// rateMeter estimates throughput over the last rateWindow of observations
// made by this process: counting from the batch's creation would credit
// work done before we started watching, and a long average reacts too
// slowly when a provider speeds up or throttles.
type rateMeter struct {
	samples []rateSample // oldest first
}

type rateSample struct {
	at   time.Time
	done int64
}

const (
	rateWindow     = time.Minute
	rateMaxSamples = 120
)

// observe records c and returns requests per second and the time left, or
// zeros while there is nothing to go on.
func (m *rateMeter) observe(now time.Time, c batchCounts) (float64, time.Duration) {
	m.samples = append(m.samples, rateSample{at: now, done: c.done()})
	// Keep the newest sample that is at least rateWindow old, so that the
	// window is full once there is enough history.
	for len(m.samples) > 2 && (now.Sub(m.samples[1].at) >= rateWindow || len(m.samples) > rateMaxSamples) {
		m.samples = m.samples[1:]
	}
	first := m.samples[0]
	elapsed := now.Sub(first.at).Seconds()
	progressed := c.done() - first.done
	if elapsed <= 0 || progressed <= 0 {
		return 0, 0
	}
	rate := float64(progressed) / elapsed
	eta := time.Duration(float64(c.processing) / rate * float64(time.Second))
	return rate, eta.Round(time.Second)
}

func formatRate(rate float64, eta time.Duration) string {
	if rate == 0 {
		return ""
	}
	return fmt.Sprintf("%.1f req/s, ETA %s", rate, eta)
}

// newProgressReporter draws a progress bar when w is a terminal and writes
// log lines otherwise, so that CI logs stay readable.
func newProgressReporter(w io.Writer, id string) progressReporter {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		width, _, err := term.GetSize(int(f.Fd()))
		if err != nil {
			width = 0
		}
		return &barReporter{w: w, id: id, termWidth: width}
	}
	r := &lineReporter{w: w, label: id, now: time.Now}
	t := time.NewTicker(time.Second)
	r.run(t.C, t.Stop)
	return r
}

// barReporter shows a live bar. The bar's own rate and ETA would count the
// requests done before we started watching, so ours go in the description.
type barReporter struct {
	w         io.Writer
	id        string
	termWidth int
	bar       *progressbar.ProgressBar
	meter     rateMeter
}

func (r *barReporter) update(b *anthropic.MessageBatch) {
	c := countsOf(b)
	if c.total() == 0 {
		return
	}
	rate, eta := r.meter.observe(time.Now(), c)
	desc := fmt.Sprintf("%s %s (ok %d, failed %d)", r.id, b.ProcessingStatus, c.succeeded, c.failed())
	if s := formatRate(rate, eta); s != "" {
		desc += " " + s
	}
	if r.bar == nil {
		opts := []progressbar.Option{
			progressbar.OptionSetWriter(r.w),
			progressbar.OptionSetDescription(desc),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionSetWidth(20),
		}
		// Fitting the terminal keeps the line from wrapping, which would
		// break redrawing; a terminal of unknown width gets a fixed bar.
		if r.termWidth > 0 {
			opts = append(opts, progressbar.OptionFullWidth())
		}
		r.bar = progressbar.NewOptions64(c.total(), opts...)
	} else {
		r.bar.Describe(desc)
	}
	if r.bar.GetMax64() != c.total() {
		r.bar.ChangeMax64(c.total())
	}
	_ = r.bar.Set64(c.done())
}

func (r *barReporter) unreachable(err error, giveUp time.Duration) {
	if r.bar != nil {
		fmt.Fprintln(r.w) // below the bar, which the next update redraws
	}
	fmt.Fprintln(r.w, unreachableLine(r.id, err, giveUp))
}

// unreachableLine says that wait retries a server that does not answer.
func unreachableLine(id string, err error, giveUp time.Duration) string {
	return fmt.Sprintf("%s: no answer from the server (%v); retrying for up to %s", id, concise(err), giveUp)
}

func (r *barReporter) done(b *anthropic.MessageBatch) {
	if r.bar == nil {
		return
	}
	if b != nil {
		_ = r.bar.Finish()
	} else {
		_ = r.bar.Exit() // keep the last state visible above the error
	}
	fmt.Fprintln(r.w)
}

// lineReporter logs a line when the counts change, at most every
// lineEvery, and at least every lineHeartbeat so a stuck batch is visible:
// ticks (a ticker in production, a channel in tests) drive the heartbeat
// when no observation comes.
type lineReporter struct {
	w     io.Writer
	label string
	now   func() time.Time

	mu      sync.Mutex // guards the fields below, shared with the heartbeat
	meter   rateMeter
	last    time.Time
	lastSum batchCounts
	batch   *anthropic.MessageBatch // the latest observation
	started time.Time
	stop    chan struct{}
}

const (
	lineEvery     = 5 * time.Second
	lineHeartbeat = 10 * time.Second
)

// run starts the heartbeat, which ends with done.
func (r *lineReporter) run(ticks <-chan time.Time, stopTicks func()) {
	r.mu.Lock()
	r.started = r.now()
	r.stop = make(chan struct{})
	stop := r.stop
	r.mu.Unlock()
	go func() {
		defer stopTicks()
		for {
			select {
			case <-ticks:
				r.beat()
			case <-stop:
				return
			}
		}
	}()
}

// beat prints the latest state again when nothing was printed for
// lineHeartbeat.
func (r *lineReporter) beat() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	from := r.last
	if from.IsZero() {
		from = r.started
	}
	if now.Sub(from) < lineHeartbeat {
		return
	}
	if r.batch == nil {
		// Not r.last: the first observation must still print at once.
		r.started = now
		fmt.Fprintf(r.w, "%s: waiting for the server's first answer\n", r.label)
		return
	}
	r.last = now
	c := countsOf(r.batch)
	rate, eta := r.meter.observe(now, c)
	fmt.Fprintln(r.w, progressLine(r.label, string(r.batch.ProcessingStatus), c, rate, eta))
}

func (r *lineReporter) update(b *anthropic.MessageBatch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	c := countsOf(b)
	rate, eta := r.meter.observe(now, c)
	if b.ProcessingStatus == anthropic.MessageBatchProcessingStatusEnded {
		return // the summary line follows
	}
	r.batch = b
	since := now.Sub(r.last)
	if !r.last.IsZero() && !(c != r.lastSum && since >= lineEvery) && since < lineHeartbeat {
		return
	}
	r.last, r.lastSum = now, c
	fmt.Fprintln(r.w, progressLine(r.label, string(b.ProcessingStatus), c, rate, eta))
}

func (r *lineReporter) unreachable(err error, giveUp time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last.IsZero() {
		r.started = r.now() // the first observation still prints at once
	} else {
		r.last = r.now()
	}
	fmt.Fprintln(r.w, unreachableLine(r.label, err, giveUp))
}

func (r *lineReporter) done(*anthropic.MessageBatch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stop != nil {
		close(r.stop)
		r.stop = nil
	}
}

// progressLine is the log form of progress, e.g.
// "msgbatch_… in_progress: 1200/5000 done (succeeded 1100, errored 100, canceled 0, expired 0), 12.0 req/s, ETA 5m17s".
func progressLine(id, status string, c batchCounts, rate float64, eta time.Duration) string {
	line := fmt.Sprintf("%s %s: %d/%d done (succeeded %d, errored %d, canceled %d, expired %d)",
		id, status, c.done(), c.total(), c.succeeded, c.errored, c.canceled, c.expired)
	if s := formatRate(rate, eta); s != "" {
		line += ", " + s
	}
	return line
}
