package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/ids"
	"github.com/batchd/batchd/internal/store"
)

// DelivererConfig configures a Deliverer. Zero values take the defaults
// noted.
type DelivererConfig struct {
	// OnAttempt, when set, is told of every attempt: its outcome
	// ("delivered", "failed" to be retried, "gave_up") and how long it took.
	OnAttempt func(outcome string, took time.Duration)
	Store     store.Store
	Sealer    *Sealer
	Guard     *Guard
	// BaseURL is where clients reach batchd, for results_url in
	// message_batch.ended payloads.
	BaseURL string
	// Owner names this process in leases (default: a random id).
	Owner string
	// Lease is how long a claimed delivery stays this deliverer's without
	// a heartbeat (default 15s; heartbeats every third of it): how long a
	// dead deliverer's deliveries wait before another (or it, restarted)
	// sends them again, with the same webhook-id.
	Lease time.Duration
	// Concurrency caps attempts in flight (default 32), PerEndpoint those
	// to one endpoint (default DefaultPerEndpoint), for every process of a
	// cluster together: a slow or dead receiver holds at most PerEndpoint
	// slots, never the others'.
	Concurrency int
	PerEndpoint int
	// Timeout bounds one attempt (default 15s).
	Timeout time.Duration
	// PollInterval is the longest the deliverer sleeps when nothing wakes
	// it (default 1s).
	PollInterval time.Duration
	// DisableAfter disables an endpoint that has failed continuously this
	// long (default 5 days).
	DisableAfter time.Duration
	Logger       *slog.Logger
	Now          func() time.Time
	// Rand returns a uniform value in [0, 1) for jitter (default
	// math/rand/v2).
	Rand func() float64
	// Delay decides the wait before the next attempt after a failed one,
	// false when the schedule is spent (default Result.NextDelay: the
	// research schedule, 0 s to 24 h). Tests compress it.
	Delay func(r Result, attempt int) (time.Duration, bool)
}

// DefaultPerEndpoint is how many attempts to one endpoint may be in flight
// at once, in all the processes of a cluster together.
const DefaultPerEndpoint = 4

// Deliverer sends the outbox's deliveries: it claims due ones under a
// lease, signs and posts them, and records each attempt.
type Deliverer struct {
	cfg    DelivererConfig
	log    *slog.Logger
	client interface {
		attempt(ctx context.Context, url string, h map[string][]string, body []byte) Result
	}
	wake     chan struct{}
	mu       sync.Mutex
	inFlight int
	cancel   context.CancelFunc
	done     chan struct{}
}

// guardedClient is one SSRF-guarded HTTP client for every attempt, so that
// connections to a receiver are reused.
type guardedClient struct{ c *http.Client }

func (c guardedClient) attempt(ctx context.Context, url string, h map[string][]string, body []byte) Result {
	return Attempt(ctx, c.c, url, h, body)
}

// NewDeliverer returns a deliverer; Start runs it.
func NewDeliverer(cfg DelivererConfig) *Deliverer {
	if cfg.Owner == "" {
		cfg.Owner = ids.New("deliverer_")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 32
	}
	if cfg.PerEndpoint <= 0 {
		cfg.PerEndpoint = DefaultPerEndpoint
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 15 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 15 * time.Second
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.DisableAfter <= 0 {
		cfg.DisableAfter = 5 * 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	if cfg.Delay == nil {
		rnd := cfg.Rand
		cfg.Delay = func(r Result, attempt int) (time.Duration, bool) { return r.NextDelay(attempt, rnd) }
	}
	return &Deliverer{cfg: cfg, log: cfg.Logger.With("component", "webhook"), client: guardedClient{cfg.Guard.Client(cfg.Timeout)}, wake: make(chan struct{}, 1)}
}

// Wake tells the deliverer that deliveries may be due: after this process
// recorded events, or, through the store's notifications, any process of
// a cluster did. PollInterval finds them without a wake-up.
func (d *Deliverer) Wake() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Start runs the deliverer in the background until Stop.
// SetBaseURL sets where receivers fetch results from when it was not known
// at construction (the listener's port is chosen at bind); call it before
// Start.
func (d *Deliverer) SetBaseURL(u string) { d.cfg.BaseURL = strings.TrimRight(u, "/") }

func (d *Deliverer) Start(ctx context.Context) error {
	ctx, d.cancel = context.WithCancel(ctx)
	d.done = make(chan struct{})
	go d.loop(ctx)
	return nil
}

// Stop stops claiming and waits for attempts in flight (until ctx ends;
// their leases then lapse and they are sent again, with the same
// webhook-id).
func (d *Deliverer) Stop(ctx context.Context) {
	if d.cancel == nil {
		return
	}
	d.cancel()
	select {
	case <-d.done:
	case <-ctx.Done():
	}
}

// heartbeat renews the leases of the deliveries in flight every third of
// a lease until ctx ends.
func (d *Deliverer) heartbeat(ctx context.Context) {
	t := time.NewTicker(d.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			err := d.cfg.Store.DeliveriesHeartbeat(ctx, store.DeliveriesHeartbeatParams{Owner: d.cfg.Owner, LeaseUntil: d.cfg.Now().Add(d.cfg.Lease)})
			if err != nil && ctx.Err() == nil {
				d.log.Error("heartbeat deliveries", "err", err)
			}
		}
	}
}

func (d *Deliverer) loop(ctx context.Context) {
	var wg sync.WaitGroup
	// Heartbeats go on until the attempts in flight are recorded.
	hbCtx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); d.heartbeat(hbCtx) }()
	defer func() {
		wg.Wait()
		stopHeartbeat()
		<-hbDone
		close(d.done)
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-timer.C:
		}
		claimed := d.cfg.Now() // when the last claim looked
		for ctx.Err() == nil {
			d.mu.Lock()
			free := d.cfg.Concurrency - d.inFlight
			d.mu.Unlock()
			if free <= 0 {
				break
			}
			now := d.cfg.Now()
			claimed = now
			ds, err := d.cfg.Store.DeliveriesClaim(ctx, store.DeliveriesClaimParams{
				Owner: d.cfg.Owner, Limit: free, PerEndpoint: d.cfg.PerEndpoint, Now: now, LeaseUntil: now.Add(d.cfg.Lease),
			})
			if err != nil {
				if ctx.Err() == nil {
					d.log.Error("claim deliveries", "err", err)
				}
				break
			}
			for _, del := range ds {
				d.mu.Lock()
				d.inFlight++
				d.mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					d.deliver(context.WithoutCancel(ctx), ctx, del)
					d.mu.Lock()
					d.inFlight--
					d.mu.Unlock()
					d.Wake()
				}()
			}
			if len(ds) < free {
				break
			}
		}
		due, err := d.cfg.Store.DeliveryNextDue(ctx)
		if err != nil {
			due = time.Time{}
		}
		timer.Reset(nextWait(due, claimed, d.cfg.Now(), d.cfg.PollInterval))
	}
}

// nextWait is how long the deliverer sleeps when the next delivery is due
// at due (zero: none) and it last claimed at claimed: until due, within 5
// ms and poll. A delivery already due when it claimed was passed over —
// its endpoint is at its cap, in some process, or this deliverer is full
// — and waits for an attempt to end: this process's own wake it, and the
// poll finds the others', instead of claiming nothing every 5 ms while an
// endpoint is down. A retry of another endpoint due meanwhile is then up
// to poll late, beside waits of 5 s and more.
func nextWait(due, claimed, now time.Time, poll time.Duration) time.Duration {
	if due.IsZero() || !due.After(claimed) {
		return poll
	}
	return min(poll, max(due.Sub(now), 5*time.Millisecond))
}

// Failed records are retried after a delay that doubles from
// recordBackoffMin up to recordBackoffMax.
const (
	recordBackoffMin = 50 * time.Millisecond
	recordBackoffMax = 5 * time.Second
)

// deliver makes one attempt and records what follows from it. It runs
// under ctx, which Stop does not cancel, so that an attempt in flight ends
// and is recorded; stop ends when Stop begins.
func (d *Deliverer) deliver(ctx, stop context.Context, del *store.Delivery) {
	ep := del.Endpoint
	now := d.cfg.Now()
	body, err := Payload(del.Event, d.cfg.BaseURL)
	var res Result
	if err == nil {
		var secrets []string
		secrets, err = d.secrets(ep, now)
		if err == nil {
			var sig string
			if sig, err = SignatureHeader(secrets, del.Event.ID, now, body); err == nil {
				res = d.client.attempt(ctx, ep.URL, Headers(del.Event.ID, now, sig), body)
			}
		}
	}
	if err != nil {
		// Our own failure (a secret that no longer opens, say): log it as
		// an attempt so the operator sees it. Its causes do not pass by
		// themselves, so it is final (ClassInvalid); a resend or recover
		// tries again once the operator has mended it.
		d.log.Error("prepare delivery", "delivery", del.ID, "endpoint", ep.ID, "err", err)
		res = Result{ErrorClass: ClassInvalid, Error: err.Error()}
	}
	rec := store.DeliveryRecordParams{
		ID: del.ID, Owner: d.cfg.Owner, Attempt: del.Attempt, Now: d.cfg.Now(),
		Record: store.AttemptRecord{Status: res.Status, ErrorClass: res.ErrorClass, Duration: res.Duration, Response: res.Body,
			Truncated: res.Truncated, Error: res.Error},
	}
	switch {
	case res.OK:
		rec.State = store.DeliverySucceeded
	case res.Gone:
		rec.State, rec.Disable = store.DeliveryFailed, "the receiver answered 410 Gone"
	default:
		delay, more := d.cfg.Delay(res, del.Attempt)
		if more {
			rec.State, rec.RetryAt = store.DeliveryPending, rec.Now.Add(delay)
		} else {
			rec.State = store.DeliveryFailed
		}
		if ep.FailingSince != nil && rec.Now.Sub(*ep.FailingSince) >= d.cfg.DisableAfter {
			rec.Disable = "failing continuously since " + ep.FailingSince.UTC().Format(time.RFC3339)
		}
	}
	// The outcome is only in memory: keep trying rather than drop it. A
	// delivery dropped in flight would stay leased for as long as this
	// process lives, since the heartbeat renews every lease of its owner:
	// never sent again, and holding one of its endpoint's slots. Once Stop
	// begins, a failed record is left: the heartbeat ends with the
	// deliverer, the lease lapses and the delivery is sent again.
	// Logged once as an error, then quietly while it keeps failing, and
	// once more when it works: an outage is not a line per retry.
	for wait, tries := recordBackoffMin, 1; ; wait, tries = min(2*wait, recordBackoffMax), tries+1 {
		err := d.cfg.Store.DeliveryRecord(ctx, rec)
		if err == nil || errors.Is(err, store.ErrConflict) {
			if tries > 1 {
				d.log.Info("recorded delivery after failures", "delivery", del.ID, "tries", tries)
			}
			break // recorded, or no longer ours
		}
		if tries == 1 {
			d.log.Error("record delivery failed; retrying", "delivery", del.ID, "err", err)
		} else {
			d.log.Debug("record delivery failed again", "delivery", del.ID, "tries", tries, "err", err)
		}
		if !sleep(stop, wait) {
			break
		}
	}
	if d.cfg.OnAttempt != nil {
		outcome := "failed"
		switch rec.State {
		case store.DeliverySucceeded:
			outcome = "delivered"
		case store.DeliveryFailed:
			outcome = "gave_up"
		}
		d.cfg.OnAttempt(outcome, res.Duration)
	}
}

// sleep waits for d, false if ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// secrets are the endpoint's current secret and, during a rotation's grace
// period, the previous one: receivers holding either verify.
func (d *Deliverer) secrets(ep *store.WebhookEndpoint, now time.Time) ([]string, error) {
	cur, err := d.cfg.Sealer.Open(ep.Secret)
	if err != nil {
		return nil, err
	}
	out := []string{cur}
	if ep.PreviousSecret != "" && ep.PreviousExpiresAt != nil && now.Before(*ep.PreviousExpiresAt) {
		prev, err := d.cfg.Sealer.Open(ep.PreviousSecret)
		if err != nil {
			return nil, err
		}
		out = append(out, prev)
	}
	return out, nil
}

// Payload is an event in Anthropic's webhook envelope:
// {"type":"event","id":"evt_…","created_at":"…","data":{"type":"message_batch.ended","id":"msgbatch_…",…}}.
// The data carries the batch as the change left it; results_url is set
// once it has ended.
func Payload(e *store.Event, baseURL string) ([]byte, error) {
	b := e.Batch
	if b == nil {
		// An event of no batch: webhook.test.
		return json.Marshal(struct {
			Type      string `json:"type"`
			ID        string `json:"id"`
			CreatedAt string `json:"created_at"`
			Data      any    `json:"data"`
		}{"event", e.ID, e.CreatedAt.UTC().Format(wireTime), map[string]string{"type": e.Type}})
	}
	ts := func(t *time.Time) *string {
		if t == nil {
			return nil
		}
		s := t.UTC().Format(wireTime)
		return &s
	}
	data := struct {
		Type              string       `json:"type"`
		ID                string       `json:"id"`
		ProcessingStatus  string       `json:"processing_status"`
		RequestCounts     store.Counts `json:"request_counts"`
		CreatedAt         string       `json:"created_at"`
		ExpiresAt         string       `json:"expires_at"`
		EndedAt           *string      `json:"ended_at"`
		CancelInitiatedAt *string      `json:"cancel_initiated_at"`
		ResultsURL        *string      `json:"results_url"`
	}{
		Type: e.Type, ID: b.ID, ProcessingStatus: b.Status, RequestCounts: b.Counts,
		CreatedAt: b.CreatedAt.UTC().Format(wireTime), ExpiresAt: b.ExpiresAt.UTC().Format(wireTime),
		EndedAt: ts(b.EndedAt), CancelInitiatedAt: ts(b.CancelInitiatedAt),
	}
	if b.Status == store.StatusEnded && baseURL != "" {
		u := baseURL + "/v1/messages/batches/" + b.ID + "/results"
		data.ResultsURL = &u
	}
	return json.Marshal(struct {
		Type      string `json:"type"`
		ID        string `json:"id"`
		CreatedAt string `json:"created_at"`
		Data      any    `json:"data"`
	}{"event", e.ID, e.CreatedAt.UTC().Format(wireTime), data})
}

// wireTime is Anthropic's timestamp format: RFC 3339 with microseconds.
const wireTime = "2006-01-02T15:04:05.000000Z07:00"
