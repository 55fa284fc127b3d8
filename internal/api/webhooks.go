package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/webhook"
)

// Webhooks configures the webhook endpoints API (a batchd extension).
type Webhooks struct {
	Store store.Store
	// Sealer encrypts secrets at rest with the server key.
	Sealer *webhook.Sealer
	// Guard refuses receiver URLs on blocked networks at creation.
	Guard *webhook.Guard
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Wake tells the deliverer an event is due now; may be nil.
	Wake func()
}

// eventTypes are the types an endpoint may subscribe to.
var eventTypes = []string{store.EventBatchCreated, store.EventBatchCanceling, store.EventBatchEnded}

func (a *API) handleWebhooks() {
	if a.cfg.Webhooks == nil {
		return
	}
	if a.cfg.Webhooks.Now == nil {
		a.cfg.Webhooks.Now = time.Now
	}
	a.handle("POST /v1/webhooks/endpoints", a.endpointCreate)
	a.handle("GET /v1/webhooks/endpoints", a.endpointList)
	a.handle("GET /v1/webhooks/endpoints/{id}", a.endpointGet)
	a.handle("POST /v1/webhooks/endpoints/{id}", a.endpointUpdate)
	a.handle("DELETE /v1/webhooks/endpoints/{id}", a.endpointDelete)
	a.handle("POST /v1/webhooks/endpoints/{id}/rotate", a.endpointRotate)
	a.handle("POST /v1/webhooks/endpoints/{id}/enable", a.endpointEnable)
	a.handle("GET /v1/webhooks/endpoints/{id}/attempts", a.endpointAttempts)
	a.handle("POST /v1/webhooks/endpoints/{id}/recover", a.endpointRecover)
	a.handle("POST /v1/webhooks/deliveries/{id}/resend", a.deliveryResend)
	a.handle("POST /v1/webhooks/endpoints/{id}/test", a.endpointTest)
}

// WebhookEndpoint is the wire form of an endpoint; Secret is set only in
// the answers that create or rotate it.
type WebhookEndpoint struct {
	ID             string   `json:"id"`
	Type           string   `json:"type"`
	URL            string   `json:"url"`
	Description    string   `json:"description"`
	EventTypes     []string `json:"event_types"`
	Enabled        bool     `json:"enabled"`
	DisabledReason *string  `json:"disabled_reason"`
	FailingSince   *string  `json:"failing_since"`
	CreatedAt      string   `json:"created_at"`
	UpdatedAt      string   `json:"updated_at"`
	Secret         string   `json:"secret,omitempty"`
}

func wireEndpoint(e *store.WebhookEndpoint, secret string) WebhookEndpoint {
	w := WebhookEndpoint{
		ID: e.ID, Type: "webhook_endpoint", URL: e.URL, Description: e.Description, EventTypes: e.EventTypes,
		Enabled: e.Enabled, FailingSince: wireTimePtr(e.FailingSince), CreatedAt: wireTime(e.CreatedAt), UpdatedAt: wireTime(e.UpdatedAt),
		Secret: secret,
	}
	if w.EventTypes == nil {
		w.EventTypes = []string{}
	}
	if e.DisabledReason != "" {
		w.DisabledReason = &e.DisabledReason
	}
	return w
}

func invalidf(format string, args ...any) error {
	return &batch.Error{Kind: batch.KindInvalid, Message: fmt.Sprintf(format, args...)}
}

func endpointNotFound(id string) error {
	return &batch.Error{Kind: batch.KindNotFound, Message: fmt.Sprintf("webhook endpoint %q not found", id)}
}

// decodeBody reads a small JSON body into v, naming what is wrong.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalidf("body: %v", err)
	}
	return nil
}

func checkEventTypes(types []string) error {
	for i, t := range types {
		ok := false
		for _, known := range eventTypes {
			ok = ok || t == known
		}
		if !ok {
			return invalidf("event_types.%d: %q is not one of %s", i, t, strings.Join(eventTypes, ", "))
		}
	}
	return nil
}

type endpointParams struct {
	URL         *string   `json:"url"`
	Description *string   `json:"description"`
	EventTypes  *[]string `json:"event_types"`
}

func (a *API) checkURL(r *http.Request, u string) error {
	if err := a.cfg.Webhooks.Guard.CheckURL(r.Context(), u); err != nil {
		return invalidf("url: %v", strings.TrimPrefix(err.Error(), "url: "))
	}
	return nil
}

func (a *API) endpointCreate(w http.ResponseWriter, r *http.Request) error {
	var p endpointParams
	if err := decodeBody(r, &p); err != nil {
		return err
	}
	if p.URL == nil || *p.URL == "" {
		return invalidf("url: Field required")
	}
	e := &store.WebhookEndpoint{ID: batch.NewID("whep_"), Workspace: workspace(r), URL: *p.URL, CreatedAt: a.cfg.Webhooks.Now()}
	if p.Description != nil {
		e.Description = *p.Description
	}
	if p.EventTypes != nil {
		if err := checkEventTypes(*p.EventTypes); err != nil {
			return err
		}
		e.EventTypes = *p.EventTypes
	}
	// Last, as it may resolve the host name.
	if err := a.checkURL(r, *p.URL); err != nil {
		return err
	}
	secret, err := webhook.NewSecret()
	if err != nil {
		return err
	}
	if e.Secret, err = a.cfg.Webhooks.Sealer.Seal(secret); err != nil {
		return err
	}
	if err := a.cfg.Webhooks.Store.WebhookEndpointCreate(r.Context(), e); err != nil {
		return err
	}
	return writeJSON(w, wireEndpoint(e, secret))
}

func (a *API) endpointList(w http.ResponseWriter, r *http.Request) error {
	list, err := a.cfg.Webhooks.Store.WebhookEndpointList(r.Context(), workspace(r))
	if err != nil {
		return err
	}
	out := make([]WebhookEndpoint, 0, len(list))
	for _, e := range list {
		out = append(out, wireEndpoint(e, ""))
	}
	return writeJSON(w, map[string]any{"data": out})
}

func (a *API) endpointGet(w http.ResponseWriter, r *http.Request) error {
	e, err := a.cfg.Webhooks.Store.WebhookEndpointGet(r.Context(), workspace(r), r.PathValue("id"))
	if errors.Is(err, store.ErrNotFound) {
		return endpointNotFound(r.PathValue("id"))
	}
	if err != nil {
		return err
	}
	return writeJSON(w, wireEndpoint(e, ""))
}

func (a *API) update(w http.ResponseWriter, r *http.Request, p store.WebhookEndpointUpdateParams, secret string) error {
	p.Workspace, p.ID, p.Now = workspace(r), r.PathValue("id"), a.cfg.Webhooks.Now()
	e, err := a.cfg.Webhooks.Store.WebhookEndpointUpdate(r.Context(), p)
	if errors.Is(err, store.ErrNotFound) {
		return endpointNotFound(p.ID)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, wireEndpoint(e, secret))
}

func (a *API) endpointUpdate(w http.ResponseWriter, r *http.Request) error {
	var p endpointParams
	if err := decodeBody(r, &p); err != nil {
		return err
	}
	if p.URL != nil {
		if err := a.checkURL(r, *p.URL); err != nil {
			return err
		}
	}
	if p.EventTypes != nil {
		if err := checkEventTypes(*p.EventTypes); err != nil {
			return err
		}
	}
	return a.update(w, r, store.WebhookEndpointUpdateParams{URL: p.URL, Description: p.Description, EventTypes: p.EventTypes}, "")
}

func (a *API) endpointDelete(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	err := a.cfg.Webhooks.Store.WebhookEndpointDelete(r.Context(), workspace(r), id)
	if errors.Is(err, store.ErrNotFound) {
		return endpointNotFound(id)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, map[string]string{"id": id, "type": "webhook_endpoint_deleted"})
}

// endpointRotate issues a new secret; the old one keeps signing beside it
// for grace_period_seconds (default 24 h), so receivers can switch over.
func (a *API) endpointRotate(w http.ResponseWriter, r *http.Request) error {
	var p struct {
		GracePeriodSeconds *int64 `json:"grace_period_seconds"`
	}
	if err := decodeBody(r, &p); err != nil {
		return err
	}
	grace := 24 * time.Hour
	if p.GracePeriodSeconds != nil {
		if *p.GracePeriodSeconds < 0 || *p.GracePeriodSeconds > 7*24*3600 {
			return invalidf("grace_period_seconds: must be between 0 and 604800")
		}
		grace = time.Duration(*p.GracePeriodSeconds) * time.Second
	}
	secret, err := webhook.NewSecret()
	if err != nil {
		return err
	}
	sealed, err := a.cfg.Webhooks.Sealer.Seal(secret)
	if err != nil {
		return err
	}
	return a.update(w, r, store.WebhookEndpointUpdateParams{Rotate: &sealed, PreviousUntil: a.cfg.Webhooks.Now().Add(grace)}, secret)
}

func (a *API) endpointEnable(w http.ResponseWriter, r *http.Request) error {
	on := true
	return a.update(w, r, store.WebhookEndpointUpdateParams{Enabled: &on}, "")
}

// Attempt is the wire form of one logged delivery attempt.
type Attempt struct {
	ID         int64  `json:"id"`
	DeliveryID int64  `json:"delivery_id"`
	EventID    string `json:"event_id"`
	Attempt    int    `json:"attempt"`
	At         string `json:"at"`
	Status     int    `json:"status"`
	ErrorClass string `json:"error_class"`
	DurationMS int64  `json:"duration_ms"`
	// Error says why a failed attempt failed, in words.
	Error string `json:"error,omitempty"`
	// Response is the start of the receiver's answer, at most 16 KiB;
	// ResponseTruncated says there was more (or it was cut short).
	Response          string `json:"response"`
	ResponseTruncated bool   `json:"response_truncated"`
}

func (a *API) endpointAttempts(w http.ResponseWriter, r *http.Request) error {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return invalidf("limit: Input should be between 1 and 1000")
		}
		limit = n
	}
	id := r.PathValue("id")
	if _, err := a.cfg.Webhooks.Store.WebhookEndpointGet(r.Context(), workspace(r), id); errors.Is(err, store.ErrNotFound) {
		return endpointNotFound(id)
	} else if err != nil {
		return err
	}
	list, err := a.cfg.Webhooks.Store.DeliveryAttempts(r.Context(), workspace(r), id, limit)
	if err != nil {
		return err
	}
	out := make([]Attempt, 0, len(list))
	for _, at := range list {
		out = append(out, Attempt{ID: at.ID, DeliveryID: at.DeliveryID, EventID: at.EventID, Attempt: at.Attempt, At: wireTime(at.At),
			Status: at.Status, ErrorClass: at.ErrorClass, DurationMS: at.Duration.Milliseconds(),
			Error: at.Error, Response: string(at.Response), ResponseTruncated: at.Truncated})
	}
	return writeJSON(w, map[string]any{"data": out})
}

// endpointRecover makes every failed delivery of the endpoint, for events
// since `since` (RFC 3339), due again, and delivers the events since then
// it missed while disabled.
func (a *API) endpointRecover(w http.ResponseWriter, r *http.Request) error {
	var p struct {
		Since string `json:"since"`
	}
	if err := decodeBody(r, &p); err != nil {
		return err
	}
	since, err := time.Parse(time.RFC3339, p.Since)
	if err != nil {
		return invalidf("since: an RFC 3339 time is required, e.g. 2026-11-29T00:00:00Z")
	}
	id := r.PathValue("id")
	n, err := a.cfg.Webhooks.Store.DeliveriesRecover(r.Context(), workspace(r), id, since, a.cfg.Webhooks.Now())
	if errors.Is(err, store.ErrNotFound) {
		return endpointNotFound(id)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, map[string]any{"recovered": n})
}

func (a *API) deliveryResend(w http.ResponseWriter, r *http.Request) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		return &batch.Error{Kind: batch.KindNotFound, Message: fmt.Sprintf("delivery %q not found", r.PathValue("id"))}
	}
	err = a.cfg.Webhooks.Store.DeliveryResend(r.Context(), workspace(r), id, a.cfg.Webhooks.Now())
	if errors.Is(err, store.ErrNotFound) {
		return &batch.Error{Kind: batch.KindNotFound, Message: fmt.Sprintf("delivery %d not found (or being delivered right now)", id)}
	}
	if err != nil {
		return err
	}
	return writeJSON(w, map[string]any{"id": id, "state": store.DeliveryPending})
}

// endpointTest sends a webhook.test event to one endpoint, through the same
// outbox and deliverer as real events.
func (a *API) endpointTest(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	evID, deliveryID, err := a.cfg.Webhooks.Store.EventTestInsert(r.Context(), workspace(r), id, a.cfg.Webhooks.Now())
	if errors.Is(err, store.ErrNotFound) {
		return endpointNotFound(id)
	}
	if err != nil {
		return err
	}
	if a.cfg.Webhooks.Wake != nil {
		a.cfg.Webhooks.Wake()
	}
	return writeJSON(w, map[string]any{"id": evID, "delivery_id": deliveryID})
}
