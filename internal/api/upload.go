package api

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/batch"
)

// Defaults of the upload guards; see Config.
const (
	DefaultBodyIdleTimeout      = 30 * time.Second
	DefaultMaxConcurrentCreates = 8
)

// idleBody ends an upload that stalls: before each read it moves the
// connection's read deadline idle ahead, so a slow body that keeps coming
// is never cut off while one that stops is, and the creating batch it
// holds (which counts toward the in-progress cap) is discarded.
type idleBody struct {
	r       io.Reader
	rc      *http.ResponseController
	idle    time.Duration
	now     func() time.Time
	unset   bool // the connection cannot take deadlines
	stalled bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	if !b.unset {
		if err := b.rc.SetReadDeadline(b.now().Add(b.idle)); err != nil {
			b.unset = true
		}
	}
	n, err := b.r.Read(p)
	var ne net.Error
	if err != nil && (errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) {
		b.stalled = true
		return n, &batch.Error{Kind: batch.KindInvalid,
			Message: fmt.Sprintf("body: no data received for %s; the upload stalled and the batch was not created", b.idle)}
	}
	return n, err
}

// done leaves a deadline behind for what net/http reads after the handler:
// it drains up to 256 KiB of an unread body before answering, and a
// cleared deadline would let a stalled client hold the answer forever.
// (Each new request on the connection sets its own deadline.)
func (b *idleBody) done() {
	if !b.unset && !b.stalled {
		b.rc.SetReadDeadline(b.now().Add(b.idle))
	}
}

// createSlots caps the creates a workspace has uploading at once, so that
// slow or stalled uploads cannot hold every slot of the in-progress cap.
type createSlots struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

func (c *createSlots) acquire(ws string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[ws] >= c.max {
		return false
	}
	c.n[ws]++
	return true
}

func (c *createSlots) release(ws string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[ws]--; c.n[ws] <= 0 {
		delete(c.n, ws)
	}
}

// upload wraps a create's body with the idle deadline and takes one of the
// workspace's create slots; release undoes both.
func (a *API) upload(w http.ResponseWriter, r *http.Request) (io.Reader, func(), error) {
	ws := workspace(r)
	if !a.slots.acquire(ws) {
		return nil, nil, &batch.Error{Kind: batch.KindRateLimited, RetryAfter: 5 * time.Second,
			Message: fmt.Sprintf("too many message batches being uploaded at once in this workspace (at most %d); wait for one to finish", a.slots.max)}
	}
	body := &idleBody{r: r.Body, rc: http.NewResponseController(w), idle: a.cfg.BodyIdleTimeout, now: time.Now}
	return body, func() { body.done(); a.slots.release(ws) }, nil
}
