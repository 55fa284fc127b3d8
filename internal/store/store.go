// Package store is batchd's storage seam: one interface of domain verbs, each
// with a params struct, implemented by an embedded SQLite driver (store/sqlite)
// and a PostgreSQL driver (store/postgres). Both run the same conformance suite in storetest.
//
// State transitions are guarded in SQL, never in Go memory: a request result
// is written only while the request is still running and still leased by the
// writer, and a batch ends exactly once, in the transaction that settles its
// last request.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/batchd/batchd/internal/cost"
)

// Sentinel errors every driver maps its failures onto.
var (
	// ErrNotFound means no row matched in the caller's workspace.
	ErrNotFound = errors.New("not found")
	// ErrConflict means the row is in a state that forbids the operation.
	ErrConflict = errors.New("state conflict")
	// ErrTooManyBatches means the workspace is at its in-progress limit.
	ErrTooManyBatches = errors.New("too many batches in progress")
	// ErrFull means the disk (or the database's size limit) is full: the
	// write did not happen. Writes that free space still work.
	ErrFull = errors.New("storage full")
	// ErrNotLeader means a chore verb's Lead no longer holds the leader
	// lease (it lapsed, or another process took over): the write did not
	// happen.
	ErrNotLeader = errors.New("not the leader")
)

// LeaderChores names the leader lease of the chores that must run on one
// process of a cluster: expiry, archiving, purging, discarding stale
// uploads and resuming orphaned upstream batches.
const LeaderChores = "chores"

// LeaderAcquireParams asks for the leader lease Name on behalf of Owner
// until Until. The holder renews it (same term); a lapsed lease (its
// expiry at or before Now) goes to the caller with the next term.
type LeaderAcquireParams struct {
	Name  string
	Owner string
	Now   time.Time
	Until time.Time
}

// Leader is a leader lease as the store holds it after an acquire.
type Leader struct {
	Name    string
	Owner   string
	Term    int64
	Expires time.Time
}

// Lead is what a chore verb is done under: the leader lease Name held by
// Owner in Term. The verb changes nothing and fails with ErrNotLeader
// unless, in its own transaction, the lease is still Owner's in that term
// and unexpired at the verb's Now, so a stale leader's writes are refused.
type Lead struct {
	Name  string
	Owner string
	Term  int64
}

// Batch statuses. StatusCreating is internal: the batch is still being
// written and is invisible to every read.
const (
	StatusCreating   = "creating"
	StatusInProgress = "in_progress"
	StatusCanceling  = "canceling"
	StatusEnded      = "ended"
)

// Result types of a settled request.
const (
	ResultSucceeded = "succeeded"
	ResultErrored   = "errored"
	ResultCanceled  = "canceled"
	ResultExpired   = "expired"
)

// Counts are a batch's request_counts.
type Counts struct {
	Processing int64 `json:"processing"`
	Succeeded  int64 `json:"succeeded"`
	Errored    int64 `json:"errored"`
	Canceled   int64 `json:"canceled"`
	Expired    int64 `json:"expired"`
}

// Add counts n more settled requests of resultType (store.Result…).
func (c *Counts) Add(resultType string, n int64) {
	switch resultType {
	case ResultSucceeded:
		c.Succeeded += n
	case ResultErrored:
		c.Errored += n
	case ResultCanceled:
		c.Canceled += n
	case ResultExpired:
		c.Expired += n
	}
}

// Batch is one message batch as stored.
type Batch struct {
	ID                string
	Seq               int64 // internal, monotonic: orders listings and keys requests
	Workspace         string
	Status            string
	Total             int64
	Counts            Counts
	CreatedAt         time.Time
	ExpiresAt         time.Time
	EndedAt           *time.Time
	CancelInitiatedAt *time.Time
	ArchivedAt        *time.Time
	// Betas are the anthropic-beta values the batch was created with.
	Betas []string
}

// BatchInsertParams starts a batch in StatusCreating.
type BatchInsertParams struct {
	ID        string
	Workspace string
	CreatedAt time.Time
	ExpiresAt time.Time
	// UploadUntil is the upload lease: while the requests stream in, the
	// creator renews it (BatchUploadRenew); once it lapses the batch may be
	// discarded as abandoned (BatchesDiscardStale). Zero means CreatedAt.
	UploadUntil time.Time
	// Betas are the anthropic-beta values of the create request, forwarded
	// by backends that speak to Anthropic.
	Betas []string
	// MaxInProgress caps batches not yet ended in the workspace, creating ones
	// included; 0 means no cap. Over it the insert fails with ErrTooManyBatches.
	MaxInProgress int
}

// NewRequest is one request of a batch being created.
type NewRequest struct {
	CustomID string
	Params   json.RawMessage
	// Model is params.model ("" when missing or not a string).
	Model string
	// Backend names the backend that will run it; "" means none serves
	// the model, which the dispatcher settles as an errored result.
	Backend string
}

// RequestsInsertParams appends a group of requests to a creating batch.
type RequestsInsertParams struct {
	BatchSeq int64
	// Requests are appended in order; results list in the same order.
	Requests []NewRequest
}

// BatchPublishParams turns a creating batch in_progress, visible and
// claimable, with its final request count.
type BatchPublishParams struct {
	BatchSeq int64
	Total    int64
	// Budget, when set, publishes only if the workspace's budget holds
	// this batch too (else a *BudgetError), and records its cost.
	Budget *Budget
}

// Budget is a workspace's spending limit as a publish checks it: the
// batch's most possible cost, with what was spent in the period, plus
// what the workspace's other batches in progress may still cost (their
// recorded most), must not pass the limit. It is checked under the
// workspace's lock, so two creates cannot both take the last of it.
type Budget struct {
	LimitUSD float64
	SpentUSD float64
	CostUSD  float64
}

// BudgetError refuses a publish over its workspace's budget.
type BudgetError struct {
	Budget
	// ReservedUSD is what the workspace's batches in progress may still cost.
	ReservedUSD float64
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("over budget: $%.4f spent, $%.4f reserved, $%.4f more asked, of $%.4f", e.SpentUSD, e.ReservedUSD, e.CostUSD, e.LimitUSD)
}

// Exceeded reports whether b, with reserved held by batches in progress,
// does not hold this batch.
func (b Budget) Exceeded(reserved float64) bool {
	return b.SpentUSD+reserved+b.CostUSD > b.LimitUSD
}

// BatchUploadRenewParams extends the upload lease of a creating batch.
type BatchUploadRenewParams struct {
	BatchSeq int64
	Until    time.Time
}

// BatchesDiscardStaleParams removes creating batches whose upload lease
// lapsed before Now: their creator died or gave up.
type BatchesDiscardStaleParams struct {
	Now  time.Time
	Lead Lead
}

// BatchGetParams names one batch within a workspace.
type BatchGetParams struct {
	Workspace string
	ID        string
}

// BatchListParams pages a workspace's batches, newest first.
type BatchListParams struct {
	Workspace string
	// AfterID returns the batches older than it, BeforeID the newer ones;
	// at most one is set.
	AfterID  string
	BeforeID string
	Limit    int
}

// BatchPage is one page of a listing, newest first.
type BatchPage struct {
	Batches []*Batch
	HasMore bool
}

// BatchCancelParams starts cancellation.
type BatchCancelParams struct {
	Workspace string
	ID        string
	Now       time.Time
}

// BatchChange is a batch after a verb changed it, and whether that verb ended
// it, so callers can emit events exactly once.
type BatchChange struct {
	Batch *Batch
	Ended bool
}

// ClaimedRequest is a request leased to a dispatcher.
type ClaimedRequest struct {
	ID        int64
	BatchID   string
	BatchSeq  int64
	Betas     []string // the batch's anthropic-beta values
	CustomID  string
	Params    json.RawMessage
	Attempt   int
	ExpiresAt time.Time
}

// RequestsClaimParams leases up to Limit pending requests of one backend,
// shared fairly across the batches that have work.
type RequestsClaimParams struct {
	Backend    string
	Owner      string
	Limit      int
	Now        time.Time
	LeaseUntil time.Time
}

// Outcome is how one attempt at a claimed request ended.
type Outcome struct {
	RequestID int64
	BatchSeq  int64
	CustomID  string // from the claim: results carry it without a lookup
	Attempt   int
	// ResultType and Result settle the request: Result is the JSON of the
	// result object ({"type":"succeeded","message":...}).
	ResultType string
	Result     json.RawMessage
	// Retry asks for another attempt at RetryAt instead. ResultType and
	// Result then hold the errored result to settle with if the batch can no
	// longer retry (canceling, or expired before RetryAt) or, later, when the
	// batch expires while the request waits. A retry with no Result (a
	// request given back unsent) keeps the error of the last attempt made.
	Retry   bool
	RetryAt time.Time
	// Usage, when set, is what a succeeded Result's message reports, read
	// by the caller already; when nil the store reads it from Result.
	Usage *MessageUsage
}

// Unsent is the outcome of a claimed request that was never sent and must
// not be (its batch is canceling or expired): it settles as typ
// (ResultCanceled or ResultExpired), with no result body.
func Unsent(c ClaimedRequest, typ string) Outcome {
	return Outcome{RequestID: c.ID, BatchSeq: c.BatchSeq, CustomID: c.CustomID, Attempt: c.Attempt, ResultType: typ}
}

// GiveBack is the outcome that returns a claimed request, never sent, to
// pending at now, for a holder that cannot go on with it (its lease may
// have lapsed, its upstream batch could not be recorded): a retry due at
// once, keeping the last attempt's error, guarded by its attempt like any
// outcome, so one rescued and claimed again meanwhile is left alone. If its
// batch can no longer retry (it began canceling) it settles as canceled.
func GiveBack(c ClaimedRequest, now time.Time) Outcome {
	o := Unsent(c, ResultCanceled)
	o.Retry, o.RetryAt = true, now
	return o
}

// MessageUsage is a succeeded message's model and priced usage.
type MessageUsage struct {
	Model  string
	Tokens cost.Tokens
}

// RequestsCompleteParams records outcomes held under Owner's lease.
type RequestsCompleteParams struct {
	Owner    string
	Now      time.Time
	Outcomes []Outcome
}

// RequestsHeartbeatParams extends every lease Owner holds on requests it
// runs itself (not those handed to an upstream batch, whose row holds the
// lease: UpstreamBatchesHeartbeat), unless it lapsed at or before Now (zero
// Now renews every lease). A lapsed lease is never revived: from the moment
// it lapses the request may be rescued and claimed again, so its holder
// lets go of it (a dispatcher drops a queued request whose lease it knows
// lapsed instead of sending it twice), and a renewal after that would hold
// a request nobody runs.
type RequestsHeartbeatParams struct {
	Owner      string
	LeaseUntil time.Time
	Now        time.Time
}

// RequestsRescueParams returns requests whose lease ran out before Now to
// pending (or settles them when their batch is canceling). Only lapsed
// leases are rescued, never a live process's: a process that restarts
// cannot tell its former self from another live process, so its own lost
// requests come back when their lease lapses. Requests handed to an
// upstream batch (UpstreamBatchInsert) are never rescued: the upstream holds
// them, and resending would run them twice.
type RequestsRescueParams struct {
	Now time.Time
}

// BatchesExpireParams settles unsent requests of batches past expiry; a
// chore, done under Lead.
type BatchesExpireParams struct {
	Now  time.Time
	Lead Lead
}

// BatchesArchiveParams archives ended batches created before CreatedBefore
// and drops their requests and results; a chore, done under Lead.
type BatchesArchiveParams struct {
	Now           time.Time
	CreatedBefore time.Time
	Lead          Lead
}

// RequestsPurgeParams deletes up to Limit rows of deleted, archived or
// discarded batches; a chore, done under Lead (checked at Now).
type RequestsPurgeParams struct {
	Limit int
	Now   time.Time
	Lead  Lead
}

// Result is one settled request, as listed for results and retry.
type Result struct {
	ID         int64
	CustomID   string
	ResultType string
	Result     json.RawMessage // nil for canceled and expired
	Params     json.RawMessage // only when asked for
}

// ResultsListParams pages through a batch's settled requests in request
// order, by keyset on ID, so a stream never holds a long transaction.
type ResultsListParams struct {
	BatchSeq      int64
	AfterID       int64
	Limit         int
	WithParams    bool
	SkipSucceeded bool
	// ResultType, when set, lists only results of that type (Result…).
	ResultType string
	// CustomIDPrefix, when set, lists only results whose custom_id starts
	// with it (case-sensitive), for the dashboard's search.
	CustomIDPrefix string
	// MaxBytes, when > 0, ends the page after the result whose result
	// and params bytes bring the page's total to it (a page always holds
	// at least one result), so a reader of big requests holds a bounded
	// amount of memory however many fit in Limit.
	MaxBytes int64
}

// Idempotency is what an Idempotency-Key recorded: the hash of the body
// of the request that first used it and the batch that request made
// (BatchID is empty while that request still runs).
type Idempotency struct {
	BodyHash  string
	BatchID   string
	CreatedAt time.Time
}

// IdempotencyReserveParams reserves Key for a request starting Now.
type IdempotencyReserveParams struct {
	Workspace string
	Key       string
	Now       time.Time
	// TTL is how long a recorded key holds (a day); an older one is
	// replaced.
	TTL time.Duration
	// StaleAfter is how long a reservation whose request never finished
	// (a crash) blocks the key before another request may take it over.
	StaleAfter time.Duration
}

// IdempotencyRecordParams records the outcome of the request that
// reserved Key.
type IdempotencyRecordParams struct {
	Workspace string
	Key       string
	BodyHash  string
	BatchID   string
}

// Key is an API key record; the key itself is never stored, only its hash.
type Key struct {
	ID        string
	Workspace string
	Prefix    string
	CreatedAt time.Time
	RevokedAt *time.Time
}

// KeyCreateParams stores a new key's hash.
type KeyCreateParams struct {
	ID        string
	Workspace string
	Hash      string
	Prefix    string
	CreatedAt time.Time
}

// UpstreamBatch is a group of running requests delegated to an upstream
// Message Batches API by an anthropic-batch backend. It is recorded before
// the upstream create call, so that a restart knows which requests may
// already be upstream: those are never rescued to pending and resent.
type UpstreamBatch struct {
	ID       int64 // local id
	Backend  string
	Owner    string // the lease owner holding its requests
	BatchSeq int64
	// UpstreamID is the upstream's batch id, "" while only the intent is
	// recorded (the create call has not answered yet).
	UpstreamID string
	CreatedAt  time.Time
	// LeaseExpires is when Owner's hold on it lapses unless renewed
	// (UpstreamBatchesHeartbeat); then another delegator may adopt it.
	LeaseExpires time.Time
	// BatchStatus is the status of our batch, so a resumed poller knows
	// whether to forward a cancel.
	BatchStatus string
}

// UpstreamBatchInsertParams records the intent to delegate RequestIDs, all
// of one batch and all running under Owner's lease, in one upstream batch.
// It fails with ErrConflict, changing nothing, unless Owner still holds
// every one of them and none is delegated already.
type UpstreamBatchInsertParams struct {
	Backend    string
	Owner      string
	BatchSeq   int64
	RequestIDs []int64
	Now        time.Time
	// LeaseUntil is when Owner's hold on the upstream batch lapses unless
	// renewed.
	LeaseUntil time.Time
}

// UpstreamBatchesHeartbeatParams extends the lease of every upstream batch
// Owner holds for Backend (every backend's when empty). A zero LeaseUntil
// lets them go at once.
type UpstreamBatchesHeartbeatParams struct {
	Owner string
	// Backend scopes the heartbeat to one backend's upstream batches: the
	// delegators of one process share its owner, and one that stops must
	// not let go of another's.
	Backend    string
	LeaseUntil time.Time
}

// UpstreamBatchAdoptParams hands an upstream batch whose lease lapsed
// before Now (its delegator died) to Owner, with its unsettled requests,
// until LeaseUntil. It fails with ErrConflict while the lease is live; a
// chore, done under Lead.
type UpstreamBatchAdoptParams struct {
	ID         int64
	Owner      string
	Now        time.Time
	LeaseUntil time.Time
	Lead       Lead
}

// UpstreamBatchStartParams records the upstream's id once the create call
// succeeded; it fails with ErrConflict if the row has one already.
type UpstreamBatchStartParams struct {
	ID         int64
	UpstreamID string
}

// UpstreamBatchAbandonParams gives up an upstream batch whose creation is
// unknown (recorded, never started): its unsettled requests go back to
// pending, or settle as canceled when their batch is canceling.
type UpstreamBatchAbandonParams struct {
	ID  int64
	Now time.Time
}

// Event types, in Anthropic's webhook naming.
const (
	EventBatchCreated   = "message_batch.created"
	EventBatchCanceling = "message_batch.canceling"
	EventBatchEnded     = "message_batch.ended"
)

// Event is one change of a batch, written to the outbox in the transaction
// that made the change.
type Event struct {
	Seq       int64 // orders a workspace's events
	ID        string
	Workspace string
	BatchID   string
	Type      string
	CreatedAt time.Time
	// Batch is the batch as the change left it.
	Batch *Batch
}

// EventsListParams pages a workspace's events in order.
type EventsListParams struct {
	Workspace string
	// AllWorkspaces reads every workspace's events (Workspace is ignored):
	// the one poller that fans events out to every open stream.
	AllWorkspaces bool
	// BatchID, when set, keeps only that batch's events.
	BatchID  string
	AfterSeq int64
	// Since, when set, keeps only events created at or after it (a new
	// subscriber replaying from a time).
	Since time.Time
	Limit int
}

// EventTest is the type of the event a user sends to check an endpoint.
const EventTest = "webhook.test"

// WebhookEndpoint is a receiver of a workspace's events.
type WebhookEndpoint struct {
	ID          string
	Workspace   string
	URL         string
	Description string
	// EventTypes filters the events sent; empty means all.
	EventTypes []string
	// Secret is sealed (encrypted with the server key); so is
	// PreviousSecret, which signs too until PreviousExpiresAt (rotation).
	Secret            string
	PreviousSecret    string
	PreviousExpiresAt *time.Time
	Enabled           bool
	DisabledReason    string
	FailingSince      *time.Time
	CreatedAt         time.Time
	UpdatedAt         time.Time
}

// WebhookEndpointUpdateParams changes an endpoint; nil fields stay.
type WebhookEndpointUpdateParams struct {
	Workspace   string
	ID          string
	Now         time.Time
	URL         *string
	Description *string
	EventTypes  *[]string
	Enabled     *bool
	// DisabledReason goes with Enabled = false.
	DisabledReason string
	// Rotate replaces the secret, keeping the old one until PreviousUntil.
	Rotate        *string
	PreviousUntil time.Time
}

// Apply changes e as p asks, the same for every driver: each driver reads
// the row under its lock, applies, and writes it back.
func (p WebhookEndpointUpdateParams) Apply(e *WebhookEndpoint) {
	if p.URL != nil {
		e.URL = *p.URL
	}
	if p.Description != nil {
		e.Description = *p.Description
	}
	if p.EventTypes != nil {
		e.EventTypes = *p.EventTypes
	}
	if p.Enabled != nil {
		e.Enabled = *p.Enabled
		e.DisabledReason = ""
		if !e.Enabled {
			e.DisabledReason = p.DisabledReason
		} else {
			e.FailingSince = nil // a fresh start after a disable
		}
	}
	if p.Rotate != nil {
		e.PreviousSecret, e.Secret = e.Secret, *p.Rotate
		t := p.PreviousUntil
		e.PreviousExpiresAt = &t
	}
	e.UpdatedAt = p.Now
}

// Delivery states.
const (
	DeliveryPending   = "pending"
	DeliveryInFlight  = "in_flight"
	DeliverySucceeded = "succeeded"
	DeliveryFailed    = "failed"
)

// Delivery is one event on its way to one endpoint.
type Delivery struct {
	ID       int64
	State    string
	Attempt  int // the attempt a claim is for (1 first), or attempts made so far
	NextAt   time.Time
	Event    *Event
	Endpoint *WebhookEndpoint
}

// DeliveriesClaimParams leases due deliveries of enabled endpoints, and
// those whose lease lapsed (their deliverer died).
type DeliveriesClaimParams struct {
	Owner string
	Limit int
	// PerEndpoint caps one endpoint's deliveries in flight (0: no cap), so
	// that a slow or dead receiver never takes every slot.
	PerEndpoint int
	Now         time.Time
	LeaseUntil  time.Time
}

// DeliveriesHeartbeatParams extends Owner's delivery leases.
type DeliveriesHeartbeatParams struct {
	Owner      string
	LeaseUntil time.Time
}

// AttemptRecord is what one attempt met.
type AttemptRecord struct {
	Status     int
	ErrorClass string
	Duration   time.Duration
	Response   []byte // the first 16 KB of the response body
	// Truncated says Response is only the start of the body: it was
	// longer, or it was cut short after the status arrived.
	Truncated bool
	// Error is the readable cause of a failure (a refused connection, a
	// timeout, the status text), never holding the URL or a secret.
	Error string
}

// DeliveryRecordParams records an attempt held under Owner's lease and
// what follows from it.
type DeliveryRecordParams struct {
	ID      int64
	Owner   string
	Attempt int
	Now     time.Time
	Record  AttemptRecord
	// State is DeliverySucceeded, DeliveryFailed (for good) or
	// DeliveryPending (retry at RetryAt).
	State   string
	RetryAt time.Time
	// Disable, when set, disables the endpoint with this reason (410 Gone,
	// or failing for too long).
	Disable string
}

// Attempt is one logged attempt.
type Attempt struct {
	ID         int64
	DeliveryID int64
	EventID    string
	Attempt    int
	At         time.Time
	AttemptRecord
}

// NotifyKind says what a committed change was, in a Notification.
type NotifyKind string

// The kinds of Notification.
const (
	// NotifyCreated: a batch was published; its requests may be claimed.
	NotifyCreated NotifyKind = "created"
	// NotifyCanceled: a batch began canceling; its requests claimed but
	// not sent must not be sent, and its upstream batches are canceled.
	NotifyCanceled NotifyKind = "canceled"
	// NotifyEnded: a batch ended.
	NotifyEnded NotifyKind = "ended"
	// NotifyEvent: events (and their webhook deliveries) were recorded.
	NotifyEvent NotifyKind = "event"
	// NotifyDelivery: a delivery attempt ended, freeing its endpoint's
	// slot, while the endpoint has more deliveries due: a deliverer held
	// back by the endpoint's cap may claim one now.
	NotifyDelivery NotifyKind = "delivery"
	// NotifyResync: the listener (re)connected. Anything may have been
	// missed while it was not listening: wake everything.
	NotifyResync NotifyKind = "resync"
)

// Notification is a wake-up that a committed change sends to every process
// sharing the store. It only says what to look at again; the store holds
// the truth, and polling still finds everything a lost notification would
// have announced.
type Notification struct {
	Kind NotifyKind
	// BatchSeq is the batch of NotifyCreated, NotifyCanceled and
	// NotifyEnded.
	BatchSeq int64
	// Err, on a NotifyResync after the first, is why the listener lost its
	// connection.
	Err error
}

// Notifier is implemented by a store that several processes may share
// (PostgreSQL): the changes that wake parts up (batches published,
// canceled or ended, events and deliveries recorded) notify inside their
// transaction, so every process hears of each commit, and of no rollback.
// A store without it (SQLite, one process) leaves the wake-ups to the
// in-process callbacks after commit.
type Notifier interface {
	// Listen delivers notifications until ctx ends, then closes the
	// channel. It reconnects by itself, with backoff, after losing its
	// connection, and sends NotifyResync each time it listens again. A
	// slow reader delays the notifications, it loses none.
	Listen(ctx context.Context) (<-chan Notification, error)
}

// BatchesCancelingHeldParams names the owner whose running requests'
// canceling batches are listed.
type BatchesCancelingHeldParams struct {
	Owner string
}

// Store is every storage verb batchd needs.
type Store interface {
	BatchInsert(ctx context.Context, p BatchInsertParams) (*Batch, error)
	RequestsInsert(ctx context.Context, p RequestsInsertParams) error
	BatchPublish(ctx context.Context, p BatchPublishParams) (*Batch, error)
	// BatchDiscard removes a batch that never finished creating.
	BatchDiscard(ctx context.Context, batchSeq int64) error
	// BatchUploadRenew extends a creating batch's upload lease; ErrNotFound
	// once it is no longer creating (published or discarded).
	BatchUploadRenew(ctx context.Context, p BatchUploadRenewParams) error
	// BatchesDiscardStale removes creating batches whose upload lease
	// lapsed.
	BatchesDiscardStale(ctx context.Context, p BatchesDiscardStaleParams) (int, error)
	BatchGet(ctx context.Context, p BatchGetParams) (*Batch, error)
	BatchList(ctx context.Context, p BatchListParams) (*BatchPage, error)
	// BatchCancel moves an in_progress batch to canceling and settles its
	// pending requests as canceled; canceling is idempotent; ended is
	// ErrConflict.
	BatchCancel(ctx context.Context, p BatchCancelParams) (*BatchChange, error)
	// BatchDelete deletes an ended batch and its requests; otherwise
	// ErrConflict.
	BatchDelete(ctx context.Context, p BatchGetParams) error
	BatchesExpire(ctx context.Context, p BatchesExpireParams) ([]*BatchChange, error)
	BatchesArchive(ctx context.Context, p BatchesArchiveParams) (int, error)
	// BatchNextExpiry is the earliest expires_at of an unended batch, or
	// zero when there is none, so the sweeper can sleep until then.
	BatchNextExpiry(ctx context.Context) (time.Time, error)

	RequestsClaim(ctx context.Context, p RequestsClaimParams) ([]ClaimedRequest, error)
	RequestsComplete(ctx context.Context, p RequestsCompleteParams) ([]*BatchChange, error)
	// RequestsCompleteAndClaim does both in one transaction, for a
	// dispatcher that refills the slots its outcomes free.
	RequestsCompleteAndClaim(ctx context.Context, c RequestsCompleteParams, p RequestsClaimParams) ([]*BatchChange, []ClaimedRequest, error)
	RequestsHeartbeat(ctx context.Context, p RequestsHeartbeatParams) error
	RequestsRescue(ctx context.Context, p RequestsRescueParams) ([]*BatchChange, error)
	// RequestNextDue is the earliest next_at among a backend's pending
	// requests of in_progress batches, or zero when there is none.
	RequestNextDue(ctx context.Context, backend string) (time.Time, error)
	// Stats counts batches by status and each backend's waiting requests,
	// for the metrics; it reads, never writes.
	Stats(ctx context.Context) (*Stats, error)
	// BatchUsage is a batch's token totals by model (only succeeded
	// results count); ErrNotFound when the workspace has no such batch.
	BatchUsage(ctx context.Context, p BatchGetParams) (map[string]cost.Tokens, error)
	// UsageList is a workspace's token totals by group and model, ordered
	// by group then model; deleted batches' usage included.
	UsageList(ctx context.Context, p UsageListParams) ([]UsageRow, error)
	// BatchesCancelingHeld lists, in seq order, the canceling batches of
	// which Owner holds running requests: a process polls it to stop
	// sending what it claimed of a batch canceled elsewhere, should the
	// cancel's notification have been lost.
	BatchesCancelingHeld(ctx context.Context, p BatchesCancelingHeldParams) ([]int64, error)
	// RequestsReroute sends the pending requests of every model whose
	// backend changed (the configuration did) to route(model), returning
	// how many moved.
	RequestsReroute(ctx context.Context, route func(model string) string) (int, error)
	// RequestsPurge deletes up to limit rows (requests and their results) of
	// deleted, archived or discarded batches, returning how many it deleted,
	// 0 when nothing is left to purge; deletion happens in
	// the background so that a DELETE of a 100,000-request batch is instant.
	RequestsPurge(ctx context.Context, p RequestsPurgeParams) (int, error)
	ResultsList(ctx context.Context, p ResultsListParams) ([]Result, error)

	// UpstreamBatchInsert records a delegation intent and marks its
	// requests, which RequestsRescue then skips.
	UpstreamBatchInsert(ctx context.Context, p UpstreamBatchInsertParams) (*UpstreamBatch, error)
	UpstreamBatchStart(ctx context.Context, p UpstreamBatchStartParams) error
	UpstreamBatchesHeartbeat(ctx context.Context, p UpstreamBatchesHeartbeatParams) error
	// UpstreamBatchAdopt takes over an upstream batch whose delegator's
	// lease lapsed, so that its requests' results are written by the new
	// owner.
	UpstreamBatchAdopt(ctx context.Context, p UpstreamBatchAdoptParams) error
	// UpstreamBatchesList lists a backend's recorded upstream batches, oldest
	// first, for a delegator resuming after a restart.
	UpstreamBatchesList(ctx context.Context, backend string) ([]*UpstreamBatch, error)
	// UpstreamBatchRequests lists the still unsettled requests of an upstream
	// batch with what RequestsComplete needs (no params).
	UpstreamBatchRequests(ctx context.Context, id int64) ([]ClaimedRequest, error)
	UpstreamBatchAbandon(ctx context.Context, p UpstreamBatchAbandonParams) ([]*BatchChange, error)
	// UpstreamBatchDelete forgets an upstream batch whose results are all
	// written; it fails with ErrConflict while any of its requests is
	// unsettled.
	UpstreamBatchDelete(ctx context.Context, id int64) error

	// EventsList pages a workspace's events after AfterSeq, oldest first.
	EventsList(ctx context.Context, p EventsListParams) ([]*Event, error)
	// EventsLast is the sequence of a workspace's latest event, 0 if none;
	// workspace "" means the latest event of any workspace.
	EventsLast(ctx context.Context, workspace string) (int64, error)
	// EventTestInsert writes a webhook.test event with one delivery, to the
	// given endpoint only, returning the event id and the delivery id.
	EventTestInsert(ctx context.Context, workspace, endpointID string, now time.Time) (string, int64, error)

	WebhookEndpointCreate(ctx context.Context, e *WebhookEndpoint) error
	WebhookEndpointGet(ctx context.Context, workspace, id string) (*WebhookEndpoint, error)
	WebhookEndpointList(ctx context.Context, workspace string) ([]*WebhookEndpoint, error)
	WebhookEndpointUpdate(ctx context.Context, p WebhookEndpointUpdateParams) (*WebhookEndpoint, error)
	WebhookEndpointDelete(ctx context.Context, workspace, id string) error
	// WebhookKeyCheck stores check (a value the caller sealed with its
	// webhook key) unless a check value is stored already, and returns the
	// sealed values the caller's key must open before its process may
	// start: the stored check value and the current secret of the oldest
	// endpoint, if any. Every process of a cluster must hold the same key:
	// this is how one holding another key finds out before it seals
	// anything.
	WebhookKeyCheck(ctx context.Context, check string) ([]string, error)
	// DeliveriesPending counts an endpoint's deliveries not yet settled.
	DeliveriesPending(ctx context.Context, endpointID string) (int, error)
	DeliveriesClaim(ctx context.Context, p DeliveriesClaimParams) ([]*Delivery, error)
	// DeliveriesHeartbeat extends the lease of every delivery Owner has in
	// flight, so that a short lease outlives a long attempt and a dead
	// deliverer's deliveries are retried soon after it died.
	DeliveriesHeartbeat(ctx context.Context, p DeliveriesHeartbeatParams) error
	// DeliveryRecord logs an attempt and moves the delivery on, guarded by
	// the lease and the attempt number.
	DeliveryRecord(ctx context.Context, p DeliveryRecordParams) error
	// DeliveryNextDue is when the next pending delivery is due, zero if none.
	DeliveryNextDue(ctx context.Context) (time.Time, error)
	// DeliveryAttempts lists an endpoint's latest attempts, newest first.
	DeliveryAttempts(ctx context.Context, workspace, endpointID string, limit int) ([]*Attempt, error)
	// DeliveryResend makes one delivery due now again, whatever its state.
	DeliveryResend(ctx context.Context, workspace string, deliveryID int64, now time.Time) error
	// DeliveriesRecover makes an endpoint's failed deliveries of events
	// since then due again, and gives it a delivery of every event since
	// then (and since it was created) of a type it subscribes to that it
	// never had one for (it was disabled then), returning how many in all.
	DeliveriesRecover(ctx context.Context, workspace, endpointID string, since, now time.Time) (int, error)

	// IdempotencyReserve reserves a key for the calling request and
	// returns nil, or returns what the key already holds (a running or a
	// finished request's) without changing it. Expired keys are forgotten.
	IdempotencyReserve(ctx context.Context, p IdempotencyReserveParams) (*Idempotency, error)
	// IdempotencyRecord stores the reserving request's body hash and batch.
	IdempotencyRecord(ctx context.Context, p IdempotencyRecordParams) error
	// IdempotencyRelease drops a reservation whose request failed, so that
	// a retry of it starts afresh.
	IdempotencyRelease(ctx context.Context, workspace, key string) error

	KeyCreate(ctx context.Context, p KeyCreateParams) (*Key, error)
	KeyList(ctx context.Context) ([]*Key, error)
	// KeyRevoke revokes by id or prefix.
	KeyRevoke(ctx context.Context, idOrPrefix string, now time.Time) (*Key, error)
	// KeyLookup returns the workspace of an active key hash, ErrNotFound if none.
	KeyLookup(ctx context.Context, hash string) (string, error)
	// KeysActive reports whether any key is active, i.e. auth is enforced.
	KeysActive(ctx context.Context) (bool, error)

	// LeaderAcquire takes or renews a leader lease and returns who holds it
	// afterwards: the caller leads if Owner is its own.
	LeaderAcquire(ctx context.Context, p LeaderAcquireParams) (*Leader, error)
	// LeaderRelease gives up a lease held in l's term, so that another
	// process takes over at once; a lease no longer held is left alone.
	LeaderRelease(ctx context.Context, l Lead) error

	// LimitSharesRenew records what Owner holds of each claimed backend's
	// limits and returns, in claim order, what it may apply from now on:
	// its fair share (GrantShare), capped so that the holdings of all live
	// owners never sum above the limit. The store keeps the larger of Held
	// and the grant as Owner's holding, so a raised grant is counted
	// before it is used, and a lowered one only once Owner reports that it
	// drained down to it. A holding whose lease lapsed counts for nothing.
	LimitSharesRenew(ctx context.Context, p LimitSharesRenewParams) ([]Amounts, error)
	// LimitSharesRelease drops every share Owner holds, so that the other
	// processes take it over at once (a stopping process).
	LimitSharesRelease(ctx context.Context, owner string) error

	Close() error
}
