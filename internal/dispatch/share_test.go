package dispatch

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
	"github.com/batchd/batchd/internal/store"
)

// ceilingBackend is the gate backend with a ceiling on its calls in
// flight, as a rate-limited backend applying its share of a cluster's
// limit reports one.
type ceilingBackend struct {
	*gateBackend
	ceiling atomic.Int64
}

func (c *ceilingBackend) Ceiling() int { return int(c.ceiling.Load()) }

// claimCount counts the requests the store handed out in claims.
type claimCount struct {
	store.Store
	mu      sync.Mutex
	claimed int
}

func (c *claimCount) RequestsClaim(ctx context.Context, p store.RequestsClaimParams) ([]store.ClaimedRequest, error) {
	got, err := c.Store.RequestsClaim(ctx, p)
	c.mu.Lock()
	c.claimed += len(got)
	c.mu.Unlock()
	return got, err
}

func (c *claimCount) RequestsCompleteAndClaim(ctx context.Context, p store.RequestsCompleteParams, q store.RequestsClaimParams) ([]*store.BatchChange, []store.ClaimedRequest, error) {
	changes, got, err := c.Store.RequestsCompleteAndClaim(ctx, p, q)
	c.mu.Lock()
	c.claimed += len(got)
	c.mu.Unlock()
	return changes, got, err
}

func (c *claimCount) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.claimed
}

// TestClaimAheadFollowsShare: a backend whose ceiling is this process's
// share of a cluster's limit is claimed ahead in proportion to that share,
// not to the whole limit, so that a process holds no more of a batch than
// it can soon run and the others are not left idle at its end. Before, a
// process with a share of 4 of a limit of 64 held 64 + 256 requests.
func TestClaimAheadFollowsShare(t *testing.T) {
	t.Parallel()
	const conc = 64 // ClaimAhead defaults to 256
	tests := []struct {
		ceiling int
		want    int // ceiling + max(256·ceiling/64, ceiling)
	}{
		{ceiling: conc, want: conc + 256}, // the whole limit: as before
		{ceiling: 4, want: 4 + 16},
		{ceiling: 1, want: 1 + 4},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint("ceiling=", tt.ceiling), func(t *testing.T) {
			t.Parallel()
			st := newStore(t)
			rec := &claimCount{Store: st}
			b := &ceilingBackend{gateBackend: newGateBackend()}
			b.ceiling.Store(int64(tt.ceiling))
			names := make([]string, 1000)
			for i := range names {
				names[i] = fmt.Sprint("p", i)
			}
			publish(t, st, time.Now(), time.Hour, prompts(names...)...)
			d := startDispatcherOn(t, rec, b, b.gateBackend, Config{Concurrency: conc, PollInterval: time.Hour, Lease: time.Hour})
			d.Wake()
			// The backend here does not hold calls to the ceiling (a
			// Limiter does): every worker with a job starts it, after the
			// claim that brought it has returned.
			for range min(tt.want, conc) {
				b.nextStarted(t)
			}
			if got := rec.count(); got != tt.want {
				t.Fatalf("claimed %d requests with a ceiling of %d, want %d", got, tt.ceiling, tt.want)
			}
		})
	}
}

// startDispatcherOn starts a dispatcher over st running every model on be,
// whose calls gate holds, and stops it when the test ends.
func startDispatcherOn(t *testing.T, st store.Store, be backend.Backend, gate *gateBackend, cfg Config) *Dispatcher {
	t.Helper()
	d := New(st, backend.NewRouter(backend.Route{Pattern: "*", Backend: be}), cfg)
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		gate.release()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Stop(ctx)
	})
	return d
}
