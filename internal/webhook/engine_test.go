package webhook_test

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/faultstore"
	"github.com/batchd/batchd/internal/store/postgres/pgtest"
	"github.com/batchd/batchd/internal/store/sqlite"
	"github.com/batchd/batchd/internal/webhook"
)

// engine is a deliverer on a real SQLite store (behind a faultstore) and a
// loopback receiver that counts what it gets per webhook-id.
type engine struct {
	st  *faultstore.Store
	d   *webhook.Deliverer
	ep  *store.WebhookEndpoint
	mu  sync.Mutex
	got map[string]int
}

// drivers are the stores the engine tests run on: SQLite always,
// PostgreSQL when BATCHD_TEST_DATABASE_URL names one.
var drivers = map[string]func(t *testing.T) store.Store{
	"sqlite": func(t *testing.T) store.Store {
		st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "batchd.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	},
	"postgres": func(t *testing.T) store.Store { return pgtest.NewStore(t) },
}

// onEachDriver runs f as a parallel subtest per driver.
func onEachDriver(t *testing.T, f func(t *testing.T, newStore func(t *testing.T) store.Store)) {
	for name, newStore := range drivers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, newStore)
		})
	}
}

func newEngine(t *testing.T, sq store.Store, cfg webhook.DelivererConfig) *engine {
	t.Helper()
	ctx := context.Background()
	e := &engine{st: faultstore.New(sq), got: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.got[r.Header.Get(webhook.HeaderID)]++
		e.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	guard, err := webhook.NewGuard(webhook.GuardConfig{AllowCIDRs: []string{"127.0.0.1/32"}})
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, webhook.KeySize)
	rand.Read(key)
	sealer, err := webhook.NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	secret, _ := webhook.NewSecret()
	sealed, err := sealer.Seal(secret)
	if err != nil {
		t.Fatal(err)
	}
	e.ep = &store.WebhookEndpoint{ID: "whep_1", Workspace: "w", URL: srv.URL, Secret: sealed, CreatedAt: time.Now()}
	if err := sq.WebhookEndpointCreate(ctx, e.ep); err != nil {
		t.Fatal(err)
	}
	cfg.Store, cfg.Sealer, cfg.Guard = e.st, sealer, guard
	e.d = webhook.NewDeliverer(cfg)
	return e
}

func (e *engine) start(t *testing.T) {
	t.Helper()
	if err := e.d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.d.Stop(ctx)
	})
}

// waitSettled waits until the endpoint has no delivery pending or in
// flight, failing after a generous timeout.
func (e *engine) waitSettled(t *testing.T, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, err := e.st.DeliveriesPending(context.Background(), e.ep.ID)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d deliveries still pending or in flight after 20 s", what, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRecordFailureDoesNotStrandDelivery: when recording an attempt fails
// (a full disk, a database that blinked), the delivery must still settle.
// Before, the deliverer dropped it in flight, and its heartbeat — which
// renews every lease of its owner — kept that lease alive for as long as
// the process ran: the delivery was never retried, and it held one of its
// endpoint's slots for good, so with PerEndpoint 1 the endpoint never got
// another event.
func TestRecordFailureDoesNotStrandDelivery(t *testing.T) {
	t.Parallel()
	onEachDriver(t, testRecordFailureDoesNotStrandDelivery)
}

func testRecordFailureDoesNotStrandDelivery(t *testing.T, newStore func(t *testing.T) store.Store) {
	e := newEngine(t, newStore(t), webhook.DelivererConfig{Lease: 300 * time.Millisecond, PerEndpoint: 1, PollInterval: 20 * time.Millisecond})
	e.st.FailAfter("DeliveryRecord", 0, 1, nil) // the first record fails, once
	ctx := context.Background()
	first, _, err := e.st.EventTestInsert(ctx, "w", e.ep.ID, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	second, _, err := e.st.EventTestInsert(ctx, "w", e.ep.ID, time.Now().Add(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	e.start(t)
	e.waitSettled(t, "after one failed record")
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.got[first] < 1 || e.got[second] != 1 {
		t.Fatalf("receiver got %v, want both events (%s at least once, %s once)", e.got, first, second)
	}
}

// TestStopEndsRecordRetries: a record that keeps failing is retried, but
// not past Stop, which must not wait out its timeout for it.
func TestStopEndsRecordRetries(t *testing.T) {
	t.Parallel()
	onEachDriver(t, testStopEndsRecordRetries)
}

func testStopEndsRecordRetries(t *testing.T, newStore func(t *testing.T) store.Store) {
	e := newEngine(t, newStore(t), webhook.DelivererConfig{Lease: time.Minute, PollInterval: 20 * time.Millisecond})
	e.st.Fail("DeliveryRecord", nil)
	if _, _, err := e.st.EventTestInsert(context.Background(), "w", e.ep.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); e.st.Calls("DeliveryRecord") < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the failed record was not retried")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.d.Stop(ctx)
	if ctx.Err() != nil {
		t.Fatal("Stop waited out its timeout for a record that keeps failing")
	}
}
