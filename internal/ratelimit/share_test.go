package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
	"github.com/batchd/batchd/internal/store"
)

// TestSetShareCapsInFlight: a share caps the calls in flight, fixed or
// adaptive; the adaptive limit, which grows up to MaxConcurrency, grew
// past the share before grow was capped by it.
func TestSetShareCapsInFlight(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		limits Limits
		share  int
	}{
		{"fixed", Limits{Concurrency: 8, Fixed: true}, 3},
		{"adaptive", Limits{Concurrency: 4, MaxConcurrency: 64}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := &fake{latency: time.Millisecond}
			l := New(f, tc.limits)
			l.SetShare(tc.share, 0, 0, 0)
			run(t, l, 400)
			if p := f.peak.Load(); p > int64(tc.share) {
				t.Fatalf("peak %d in flight over a share of %d", p, tc.share)
			}
			if st := l.Stats(); st.Concurrency > tc.share {
				t.Fatalf("limit %d above the share %d", st.Concurrency, tc.share)
			}
		})
	}
}

// TestSetShareZeroHoldsCallsUntilRaised: with no share a call waits in the
// queue, unsent, and goes once a share is granted.
func TestSetShareZeroHoldsCallsUntilRaised(t *testing.T) {
	t.Parallel()
	f := &fake{}
	l := New(f, Limits{Concurrency: 4, RequestsPerMinute: 6000})
	for _, share := range []struct{ conc, rpm int }{{4, 0}, {0, 6000}} {
		l.SetShare(share.conc, share.rpm, 0, 0)
		done := make(chan error, 1)
		go func() {
			_, err := l.Do(context.Background(), backend.Call{Params: json.RawMessage(`{"max_tokens":5}`)})
			done <- err
		}()
		waitQueued(t, l, 1)
		if n := f.calls.Load(); n != 0 {
			t.Fatalf("share %+v: %d calls sent", share, n)
		}
		l.SetShare(4, 6000, 0, 0)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		f.calls.Store(0)
	}
}

// TestSetShareResizesBuckets: a per-minute share sets the bucket's rate
// and depth; what it holds above the new depth goes.
func TestSetShareResizesBuckets(t *testing.T) {
	t.Parallel()
	l := New(&fake{}, Limits{Concurrency: 4, RequestsPerMinute: 6000, OutputTokensPerMinute: 60_000})
	l.SetShare(4, 600, 500, 6000)
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.rpm; b.perMinute != pace*600 || b.capacity != pace*10 || b.level > b.capacity {
		t.Errorf("rpm bucket %+v after a share of 600", *b)
	}
	if b := l.otpm; b.perMinute != pace*6000 || b.capacity != pace*100 {
		t.Errorf("otpm bucket %+v after a share of 6000", *b)
	}
	if l.itpm != nil {
		t.Error("a share of an unconfigured limit made a bucket")
	}
}

// memShares is a store's limit shares in memory, with the drivers' rule.
type memShares struct {
	mu   sync.Mutex
	rows map[string]map[string]memShare // backend, owner
	err  error
}

type memShare struct {
	held    store.Amounts
	expires time.Time
}

func (m *memShares) LimitSharesRenew(_ context.Context, p store.LimitSharesRenewParams) ([]store.Amounts, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return nil, m.err
	}
	if m.rows == nil {
		m.rows = map[string]map[string]memShare{}
	}
	var out []store.Amounts
	for _, c := range p.Claims {
		var others []store.LimitShareHolding
		for o, r := range m.rows[c.Backend] {
			if o != p.Owner && r.expires.After(p.Now) {
				others = append(others, store.LimitShareHolding{Owner: o, Held: r.held})
			}
		}
		g := store.GrantShare(p.Owner, c, others)
		if m.rows[c.Backend] == nil {
			m.rows[c.Backend] = map[string]memShare{}
		}
		m.rows[c.Backend][p.Owner] = memShare{held: c.Held.Max(g), expires: p.Until}
		out = append(out, g)
	}
	return out, nil
}

func (m *memShares) LimitSharesRelease(_ context.Context, owner string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, rows := range m.rows {
		delete(rows, owner)
	}
	return nil
}

// gated is an upstream whose calls wait for open.
type gated struct {
	fake
	open chan struct{}
}

func (g *gated) Do(ctx context.Context, call backend.Call) (json.RawMessage, error) {
	g.inFlight.Add(1)
	defer g.inFlight.Add(-1)
	<-g.open
	return json.RawMessage(`{"type":"message"}`), nil
}

// TestSharesDrainBeforeOthersGrow: three processes on one limit of 8. The
// first holds 8 calls in flight when the others arrive; they get nothing
// until its calls end, then the limit splits 3, 3, 2. A process that stops
// renewing (dead) leaves its share to the others after its lease; one
// whose renewals fail stops sending before its lease lapses.
func TestSharesDrainBeforeOthersGrow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := &memShares{}
	now := time.Unix(1000, 0)
	var clock sync.Mutex
	tick := func(d time.Duration) { clock.Lock(); now = now.Add(d); clock.Unlock() }
	newProc := func(owner string) (*Shares, *Limiter, *gated) {
		up := &gated{open: make(chan struct{})}
		lim := New(up, Limits{Concurrency: 8, Fixed: true})
		s := NewShares(st, map[string]*Limiter{"b": lim}, SharesConfig{Owner: owner, Lease: 10 * time.Second,
			Now: func() time.Time { clock.Lock(); defer clock.Unlock(); return now }})
		return s, lim, up
	}
	a, aLim, aUp := newProc("a")
	b, bLim, _ := newProc("b")
	c, _, _ := newProc("c")
	if err := a.renew(ctx); err != nil {
		t.Fatal(err)
	}
	// a alone has the whole limit and fills it.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { aLim.Do(ctx, backend.Call{Params: json.RawMessage(`{}`)}) })
	}
	for aLim.Stats().InFlight < 8 {
		time.Sleep(time.Millisecond)
	}
	share := func(s *Shares) int { g, _ := s.Share("b"); return g.Concurrency }
	round := func() {
		t.Helper()
		for _, s := range []*Shares{a, b, c} {
			if err := s.renew(ctx); err != nil {
				t.Fatal(err)
			}
		}
		tick(time.Second)
	}
	round() // b and c register after a renewed
	for range 3 {
		round()
		if share(b)+share(c) != 0 || share(a) != 3 {
			t.Fatalf("while a drains: shares a %d, b %d, c %d; want 3, 0, 0", share(a), share(b), share(c))
		}
	}
	close(aUp.open)
	wg.Wait()
	round()
	round()
	if share(a) != 3 || share(b) != 3 || share(c) != 2 {
		t.Fatalf("after a drained: shares a %d, b %d, c %d; want 3, 3, 2", share(a), share(b), share(c))
	}
	if got := bLim.Stats().Concurrency; got != 3 {
		t.Fatalf("b's limiter applies %d, want 3", got)
	}
	// c dies: after its lease the others share the limit.
	tick(10 * time.Second)
	for range 3 {
		for _, s := range []*Shares{a, b} {
			if err := s.renew(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if share(a) != 4 || share(b) != 4 {
		t.Fatalf("after c's lease lapsed: a %d, b %d; want 4, 4", share(a), share(b))
	}
	// The store fails: a keeps its share for half a lease, then sends
	// nothing, before the others could take it over.
	st.mu.Lock()
	st.err = errors.New("database down")
	st.mu.Unlock()
	tick(4 * time.Second)
	a.tick(ctx)
	if share(a) != 4 {
		t.Fatalf("a dropped its share after one failed renewal: %d", share(a))
	}
	tick(time.Second)
	a.tick(ctx)
	if share(a) != 0 || aLim.Stats().Concurrency != 0 {
		t.Fatalf("a still applies %d (limiter %d) half a lease after its last renewal", share(a), aLim.Stats().Concurrency)
	}
}

// TestCeilingIsTheShare: Ceiling is the configured ceiling until a share
// is set, then the share (never above the ceiling), and 0 while a
// per-minute share is zero.
func TestCeilingIsTheShare(t *testing.T) {
	t.Parallel()
	l := New(&fake{}, Limits{Concurrency: 4, MaxConcurrency: 16, RequestsPerMinute: 600})
	steps := []struct {
		conc, rpm int // the share set; conc < 0: none set yet
		want      int
	}{
		{-1, 0, 16},
		{5, 200, 5},
		{40, 600, 16},
		{5, 0, 0},
	}
	for _, s := range steps {
		if s.conc >= 0 {
			l.SetShare(s.conc, s.rpm, 0, 0)
		}
		if got := l.Ceiling(); got != s.want {
			t.Fatalf("share %d, %d rpm: ceiling %d, want %d", s.conc, s.rpm, got, s.want)
		}
	}
}
