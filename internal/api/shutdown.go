package api

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// streamDrain is how long a response ended by CloseStreams may take to
// flush what it has written: a client that reads gets a clean end (an
// event stream's last chunk), one that stopped reading is cut off.
const streamDrain = time.Second

// longResponses are the responses in progress that last as long as their
// client wants (event streams, results downloads). http.Server.Shutdown
// waits for every response in progress, so these are ended when the
// shutdown begins rather than holding it for its whole grace period.
type longResponses struct {
	mu     sync.Mutex
	closed bool
	open   map[*longResponse]struct{}
}

type longResponse struct {
	cancel context.CancelFunc
	rc     *http.ResponseController
}

// longLived wraps the handler of a long response so that CloseStreams can
// end it: it runs under a context CloseStreams cancels. Once the server is
// shutting down a new one is refused with 503 overloaded_error, which the
// SDKs retry.
func (a *API) longLived(h func(w http.ResponseWriter, r *http.Request) error) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		lr := &longResponse{cancel: cancel, rc: http.NewResponseController(w)}
		if !a.long.add(lr) {
			writeError(w, r, http.StatusServiceUnavailable, "overloaded_error", "batchd is shutting down; retry shortly")
			return nil
		}
		defer a.long.remove(lr)
		return h(w, r.WithContext(ctx))
	}
}

func (l *longResponses) add(lr *longResponse) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	if l.open == nil {
		l.open = map[*longResponse]struct{}{}
	}
	l.open[lr] = struct{}{}
	return true
}

func (l *longResponses) remove(lr *longResponse) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.open, lr)
}

// CloseStreams ends every event stream and results download in progress
// and refuses new ones; call it when the shutdown begins
// (http.Server.RegisterOnShutdown). An event stream ends cleanly, so
// clients reconnect (with Last-Event-ID) to the next server; a download
// is aborted, so its client sees a broken transfer, never a short one.
// Other requests in flight are left to finish.
func (a *API) CloseStreams() {
	a.long.mu.Lock()
	defer a.long.mu.Unlock()
	a.long.closed = true
	for lr := range a.long.open {
		lr.cancel()
		// A handler blocked writing to a client that stopped reading
		// notices no cancellation; the write deadline unblocks it. It is
		// set while the handler runs (under mu, before remove), so it
		// never reaches a later request on the connection, which the
		// shutdown closes anyway.
		lr.rc.SetWriteDeadline(time.Now().Add(streamDrain))
	}
}
