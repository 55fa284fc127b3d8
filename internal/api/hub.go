package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/store"
)

// DefaultMaxStreamsPerWorkspace is how many event streams one workspace may
// hold open at once by default.
const DefaultMaxStreamsPerWorkspace = 64

const (
	// hubPage is how many events one poll reads at a time.
	hubPage = 500
	// hubWakeGap is the shortest time between two polls, so that a burst
	// of wake-ups costs one read, not one each.
	hubWakeGap = 20 * time.Millisecond
	// subQueueMax is how many events a subscriber may have waiting; a
	// stream that falls further behind reads what it missed from the store
	// itself.
	subQueueMax = 1000
)

// hub is the one poller behind every event stream of a process: it reads
// new events (of every workspace at once) and the progress of the batches
// being watched, and fans them out to the subscribers, so that the store's
// load grows with the workspaces watched, not with the streams open. A
// wake-up after a commit makes it read at once: a commit of this process,
// or of any process of a cluster through the store's notifications (the
// server calls Wake on each); the tick guarantees progress without one. It
// runs only while someone subscribes.
type hub struct {
	src  EventSource
	svc  *batch.Service
	log  *slog.Logger
	max  int // streams per workspace
	tick time.Duration
	// queueMax is how many events a subscriber may have waiting
	// (subQueueMax; tests lower it).
	queueMax int
	wake     chan struct{}

	mu      sync.Mutex
	byWS    map[string]map[*subscriber]struct{}
	running bool
	last    int64 // the latest event fanned out
	// progressNow asks the next poll for progress too (a new subscriber).
	progressNow bool
}

func newHub(src EventSource, svc *batch.Service, log *slog.Logger, max int) *hub {
	return &hub{src: src, svc: svc, log: log, max: max, tick: streamTick, queueMax: subQueueMax, wake: make(chan struct{}, 1),
		byWS: map[string]map[*subscriber]struct{}{}}
}

// Wake makes the poller read the store now: something was committed.
func (h *hub) Wake() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// subscriber is one open stream: what the hub has for it, taken by the
// stream's own goroutine.
type subscriber struct {
	ws      string
	batchID string        // "" for a workspace stream
	notify  chan struct{} // cap 1: something new

	mu       sync.Mutex
	queue    []*store.Event
	lagged   bool // events were dropped: read them from the store
	progress []progress
	gone     bool // a batch stream's batch was deleted
}

func (s *subscriber) signal() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *subscriber) push(e *store.Event, max int) {
	s.mu.Lock()
	if len(s.queue) >= max {
		s.queue, s.lagged = nil, true
	} else {
		s.queue = append(s.queue, e)
	}
	s.mu.Unlock()
	s.signal()
}

// take returns and clears what is waiting.
func (s *subscriber) take() (queue []*store.Event, lagged bool, snap []progress, gone bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	queue, lagged, snap, gone = s.queue, s.lagged, s.progress, s.gone
	s.queue, s.lagged, s.progress = nil, false, nil
	return
}

// errTooManyStreams is the 429 over the per-workspace cap.
func (h *hub) errTooManyStreams() error {
	return &batch.Error{Kind: batch.KindRateLimited, RetryAfter: 5 * time.Second,
		Message: fmt.Sprintf("this workspace already has %d event streams open, the most allowed; close one or reconnect later", h.max)}
}

// subscribe registers a stream, starting the poller if it is the first.
// Every event committed after subscribe returns reaches the subscriber's
// queue, so a stream that then reads its history from the store and
// continues with the queue (skipping what it has seen) misses nothing:
// SQLite's one writer commits events in sequence order.
func (h *hub) subscribe(ctx context.Context, ws, batchID string) (*subscriber, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.max > 0 && len(h.byWS[ws]) >= h.max {
		return nil, h.errTooManyStreams()
	}
	if !h.running {
		last, err := h.src.EventsLast(ctx, "")
		if err != nil {
			return nil, fmt.Errorf("event stream: %w", err)
		}
		h.last, h.running = last, true
		go h.run()
	}
	s := &subscriber{ws: ws, batchID: batchID, notify: make(chan struct{}, 1)}
	if h.byWS[ws] == nil {
		h.byWS[ws] = map[*subscriber]struct{}{}
	}
	h.byWS[ws][s] = struct{}{}
	h.progressNow = true
	h.Wake()
	return s, nil
}

func (h *hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.byWS[s.ws], s)
	if len(h.byWS[s.ws]) == 0 {
		delete(h.byWS, s.ws)
	}
}

// active reports whether anyone still subscribes; when not, the poller
// stops (a later subscribe starts a new one).
func (h *hub) active() (progress bool, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.byWS) == 0 {
		h.running = false
		return false, false
	}
	progress, h.progressNow = h.progressNow, false
	return progress, true
}

func (h *hub) run() {
	ctx := context.Background()
	ticker := time.NewTicker(h.tick)
	defer ticker.Stop()
	lastProgress := time.Time{}
	for {
		progressNow, ok := h.active()
		if !ok {
			return
		}
		h.pollEvents(ctx)
		if progressNow || time.Since(lastProgress) >= h.tick {
			h.pollProgress(ctx)
			lastProgress = time.Now()
		}
		select {
		case <-ticker.C:
		case <-h.wake:
			time.Sleep(hubWakeGap) // let a burst of commits land
		}
	}
}

// pollEvents fans out every event committed since the last poll.
func (h *hub) pollEvents(ctx context.Context) {
	for {
		h.mu.Lock()
		after := h.last
		h.mu.Unlock()
		events, err := h.src.EventsList(ctx, store.EventsListParams{AllWorkspaces: true, AfterSeq: after, Limit: hubPage})
		if err != nil {
			h.log.Warn("event streams: read events", "err", err)
			return
		}
		h.mu.Lock()
		for _, e := range events {
			for s := range h.byWS[e.Workspace] {
				if s.batchID == "" || s.batchID == e.BatchID {
					s.push(e, h.queueMax)
				}
			}
		}
		if len(events) > 0 {
			h.last = events[len(events)-1].Seq
		}
		h.mu.Unlock()
		if len(events) < hubPage {
			return
		}
	}
}

// pollProgress reads the live counts once per watched workspace and batch
// and hands them to the subscribers.
func (h *hub) pollProgress(ctx context.Context) {
	type key struct{ ws, id string }
	h.mu.Lock()
	wss := map[string]bool{}
	batches := map[key]bool{}
	for ws, subs := range h.byWS {
		for s := range subs {
			if s.batchID == "" {
				wss[ws] = true
			} else {
				batches[key{ws, s.batchID}] = true
			}
		}
	}
	h.mu.Unlock()

	wsSnap := map[string][]progress{}
	for ws := range wss {
		page, err := h.svc.List(ctx, ws, batch.ListParams{Limit: new(100)})
		if err != nil {
			h.log.Warn("event streams: read progress", "workspace", ws, "err", err)
			continue
		}
		snap := []progress{}
		for _, b := range page.Batches {
			if b.Status != store.StatusEnded {
				snap = append(snap, progress{"progress", b.ID, b.Status, b.Counts})
			}
		}
		wsSnap[ws] = snap
	}
	batchSnap := map[key][]progress{}
	gone := map[key]bool{}
	for k := range batches {
		b, err := h.svc.Get(ctx, k.ws, k.id)
		var de *batch.Error
		switch {
		case errors.As(err, &de) && de.Kind == batch.KindNotFound:
			gone[k] = true
		case err != nil:
			h.log.Warn("event streams: read progress", "batch", k.id, "err", err)
		default:
			batchSnap[k] = []progress{{"progress", b.ID, b.Status, b.Counts}}
		}
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	for ws, subs := range h.byWS {
		for s := range subs {
			var snap []progress
			var ok bool
			if s.batchID == "" {
				snap, ok = wsSnap[ws]
			} else {
				k := key{ws, s.batchID}
				snap, ok = batchSnap[k]
				if gone[k] {
					s.mu.Lock()
					s.gone = true
					s.mu.Unlock()
					s.signal()
					continue
				}
			}
			if !ok {
				continue
			}
			s.mu.Lock()
			s.progress = snap
			s.mu.Unlock()
			s.signal()
		}
	}
}
