package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/webhook"
)

// EventSource reads the outbox for the live event streams.
type EventSource interface {
	EventsList(ctx context.Context, p store.EventsListParams) ([]*store.Event, error)
	EventsLast(ctx context.Context, workspace string) (int64, error)
}

// Stream timings: how often the hub reads the store for new events when
// nothing wakes it, and for progress (at most four progress events a
// second, per batch), and how often an idle stream sends a comment so that
// proxies keep it open.
const (
	streamTick      = 250 * time.Millisecond
	streamKeepalive = 15 * time.Second
)

func (a *API) handleEvents() {
	if a.cfg.Events == nil {
		return
	}
	a.hub = newHub(a.cfg.Events, a.svc, a.log, a.cfg.MaxStreamsPerWorkspace)
	if a.cfg.StreamPollInterval > 0 {
		a.hub.tick = a.cfg.StreamPollInterval
	}
	a.handle("GET /v1/messages/batches/{id}/events", a.longLived(a.batchEvents))
	a.handle("GET /v1/events", a.longLived(a.workspaceEvents))
}

// progress is the live-counts event of the streams.
type progress struct {
	Type             string       `json:"type"`
	ID               string       `json:"id"`
	ProcessingStatus string       `json:"processing_status"`
	RequestCounts    store.Counts `json:"request_counts"`
}

// sse writes Server-Sent Events.
type sse struct {
	w        http.ResponseWriter
	f        http.Flusher
	lastSent time.Time
}

func startSSE(w http.ResponseWriter) (*sse, error) {
	f, ok := w.(http.Flusher)
	if !ok {
		return nil, fmt.Errorf("event stream: the connection cannot stream")
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	f.Flush()
	return &sse{w: w, f: f, lastSent: time.Now()}, nil
}

// send writes one event; id is omitted when empty.
func (s *sse) send(id, event string, data []byte) error {
	var err error
	if id != "" {
		_, err = fmt.Fprintf(s.w, "id: %s\n", id)
	}
	if err == nil {
		_, err = fmt.Fprintf(s.w, "event: %s\ndata: %s\n\n", event, data)
	}
	s.f.Flush()
	s.lastSent = time.Now()
	return err
}

func (s *sse) keepalive() error {
	if time.Since(s.lastSent) < streamKeepalive {
		return nil
	}
	_, err := fmt.Fprint(s.w, ": keepalive\n\n")
	s.f.Flush()
	s.lastSent = time.Now()
	return err
}

// lastEventID is where a reconnecting client resumes (the Last-Event-ID
// header, or ?after= for clients that cannot set headers); ok is false
// when the client named no position.
func lastEventID(r *http.Request) (seq int64, ok bool) {
	v := r.Header.Get("Last-Event-ID")
	if v == "" {
		v = r.URL.Query().Get("after")
	}
	if v == "" {
		return 0, false
	}
	n, _ := strconv.ParseInt(v, 10, 64)
	return n, true
}

// streamStart is the sequence a workspace stream starts after: the
// client's Last-Event-ID (or ?after=) when it names one; else, with
// ?since=RFC3339, just before the first event created from that time on;
// else the latest event, so that a new subscriber gets what happens from
// now on, not the workspace's history (?after=0 asks for all of it).
func (a *API) streamStart(r *http.Request, ws string) (int64, error) {
	if after, ok := lastEventID(r); ok {
		return after, nil
	}
	if v := r.URL.Query().Get("since"); v != "" {
		since, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return 0, &batch.Error{Kind: batch.KindInvalid, Message: fmt.Sprintf("since: Input should be an RFC 3339 time such as 2026-01-02T15:04:05Z, got %q", v)}
		}
		first, err := a.cfg.Events.EventsList(r.Context(), store.EventsListParams{Workspace: ws, Since: since, Limit: 1})
		if err != nil {
			return 0, fmt.Errorf("event stream: %w", err)
		}
		if len(first) == 1 {
			return first[0].Seq - 1, nil
		}
		// Nothing since then: what happens from now on.
	}
	after, err := a.cfg.Events.EventsLast(r.Context(), ws)
	if err != nil {
		return 0, fmt.Errorf("event stream: %w", err)
	}
	return after, nil
}

// batchEvents streams one batch's events and its progress, and ends after
// the batch's message_batch.ended event.
func (a *API) batchEvents(w http.ResponseWriter, r *http.Request) error {
	ws, id := workspace(r), r.PathValue("id")
	b, err := a.svc.Get(r.Context(), ws, id)
	if err != nil {
		return err
	}
	after, _ := lastEventID(r) // a batch's stream starts with its first event
	sub, err := a.hub.subscribe(r.Context(), ws, id)
	if err != nil {
		return err
	}
	defer a.hub.unsubscribe(sub)
	// A batch that has ended has nothing more to tell: its stream ends once
	// it has carried what the client missed (with Last-Event-ID at or past
	// the ended event, nothing), instead of staying open for good.
	return a.stream(w, r, sub, after, []progress{{"progress", b.ID, b.Status, b.Counts}}, b.Status == store.StatusEnded)
}

// workspaceEvents streams the workspace's events from now on (or after
// Last-Event-ID, or from ?since=), and the progress of its batches in
// progress, until the client goes away.
func (a *API) workspaceEvents(w http.ResponseWriter, r *http.Request) error {
	ws := workspace(r)
	after, err := a.streamStart(r, ws)
	if err != nil {
		return err
	}
	sub, err := a.hub.subscribe(r.Context(), ws, "")
	if err != nil {
		return err
	}
	defer a.hub.unsubscribe(sub)
	return a.stream(w, r, sub, after, nil, false)
}

// stream writes a subscriber's events after after, in order, and its
// progress, until the client goes away (or a batch stream's batch ends or
// is deleted). It first reads what it missed from the store (history, or
// what it fell behind on), then takes what the hub fans out; with over, it
// ends after that first read.
func (a *API) stream(w http.ResponseWriter, r *http.Request, sub *subscriber, after int64, snap []progress, over bool) error {
	s, err := startSSE(w)
	if err != nil {
		return err
	}
	ctx := r.Context()
	sent := map[string]progress{} // the last progress sent, per batch
	ended := map[string]bool{}    // batches whose ended event was sent
	// send writes one event unless it was already sent; done is true when
	// the stream must end (a batch stream's batch ended, or the client is
	// gone).
	send := func(e *store.Event) (done bool) {
		if e.Seq <= after {
			return false
		}
		if a.sendEvent(s, r, e) != nil {
			return true
		}
		after = e.Seq
		if e.Type == store.EventBatchEnded {
			ended[e.BatchID] = true
			delete(sent, e.BatchID)
			return sub.batchID != ""
		}
		return false
	}
	catchUp := true
	keepalive := time.NewTicker(streamKeepalive)
	defer keepalive.Stop()
	for {
		if catchUp {
			for {
				events, err := a.cfg.Events.EventsList(ctx, store.EventsListParams{Workspace: sub.ws, BatchID: sub.batchID, AfterSeq: after, Limit: hubPage})
				if err != nil {
					return nil // the status is sent: end the stream
				}
				for _, e := range events {
					if send(e) {
						return nil
					}
				}
				if len(events) < hubPage {
					break
				}
			}
			if over {
				return nil
			}
			catchUp = false
		}
		queue, lagged, fresh, gone := sub.take()
		if lagged {
			catchUp = true // what the queue dropped is in the store
			continue
		}
		for _, e := range queue {
			if send(e) {
				return nil
			}
		}
		if gone {
			return nil // deleted meanwhile
		}
		if fresh != nil {
			snap = fresh
			// A batch that has ended and left the snapshot needs no
			// memory of its end any more.
			for id := range ended {
				if !slices.ContainsFunc(snap, func(p progress) bool { return p.ID == id }) {
					delete(ended, id)
				}
			}
		}
		for _, p := range snap {
			if ended[p.ID] || sent[p.ID] == p {
				continue // a snapshot older than the end, or nothing new
			}
			data, _ := json.Marshal(p)
			if s.send("", "progress", data) != nil {
				return nil
			}
			sent[p.ID] = p
		}
		snap = nil
		select {
		case <-ctx.Done():
			return nil
		case <-sub.notify:
		case <-keepalive.C:
			if s.keepalive() != nil {
				return nil
			}
		}
	}
}

// sendEvent writes an outbox event in the same envelope webhooks carry.
func (a *API) sendEvent(s *sse, r *http.Request, e *store.Event) error {
	data, err := webhook.Payload(e, a.baseURL(r))
	if err != nil {
		return err
	}
	return s.send(strconv.FormatInt(e.Seq, 10), e.Type, data)
}

// Wake tells the event streams that something was committed (a batch
// created, canceled, settled or ended), so that they send it at once
// instead of at the next poll.
func (a *API) Wake() {
	if a.hub != nil {
		a.hub.Wake()
	}
}
