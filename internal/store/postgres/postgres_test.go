package postgres_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/postgres"
	"github.com/batchd/batchd/internal/store/postgres/pgtest"
	"github.com/batchd/batchd/internal/store/storetest"
)

func newStore(t *testing.T) store.Store { return pgtest.NewStore(t) }

func TestConformance(t *testing.T) {
	t.Parallel()
	pgtest.URL(t) // skip here, once, rather than in every case
	storetest.Run(t, newStore)
}

// TestMigrateOnce opens one schema from several processes at once and then
// again: the migrations run once, the data stays.
func TestMigrateOnce(t *testing.T) {
	t.Parallel()
	schema := pgtest.Schema(t)
	ctx := context.Background()
	open := func() (*postgres.Store, error) {
		cfg, err := pgxpool.ParseConfig(pgtest.URL(t))
		if err != nil {
			return nil, err
		}
		cfg.ConnConfig.RuntimeParams["search_path"] = schema
		cfg.MaxConns = 2
		return postgres.OpenConfig(ctx, cfg)
	}
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			st, err := open()
			if err == nil {
				st.Close()
			}
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent open: %v", err)
		}
	}
	st, err := open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.KeyCreate(ctx, store.KeyCreateParams{ID: "key_1", Workspace: "w", Hash: "h", Prefix: "p"}); err != nil {
		t.Fatal(err)
	}
	// The same hash again is the store's conflict, not a driver error.
	if _, err := st.KeyCreate(ctx, store.KeyCreateParams{ID: "key_2", Workspace: "w", Hash: "h", Prefix: "p2"}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("duplicate key hash: %v, want ErrConflict", err)
	}
	st.Close()
	if st, err = open(); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if ws, err := st.KeyLookup(ctx, "h"); err != nil || ws != "w" {
		t.Fatalf("after reopen: %q %v", ws, err)
	}
}

// TestRetriesLostConnection kills every connection of the store's pool
// (the server restarting, a proxy dropping them): the next verbs still
// work, each run again on a new connection.
func TestRetriesLostConnection(t *testing.T) {
	t.Parallel()
	st := pgtest.NewStore(t)
	ctx := context.Background()
	if _, err := st.KeyCreate(ctx, store.KeyCreateParams{ID: "key_1", Workspace: "w", Hash: "h", Prefix: "p"}); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for round := range 3 {
		// Each of the pool's idle connections is killed.
		pids, err := st.BackendPIDs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) == 0 {
			t.Fatal("no idle connection to kill")
		}
		var killed int
		if err := admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM unnest($1::int[]) AS pid`, pids).Scan(&killed); err != nil {
			t.Fatal(err)
		}
		if killed != len(pids) {
			t.Fatalf("killed %d of %d connections", killed, len(pids))
		}
		if ws, err := st.KeyLookup(ctx, "h"); err != nil || ws != "w" {
			t.Fatalf("round %d: read after the connections died: %q %v", round, ws, err)
		}
		if _, err := st.KeyRevoke(ctx, "nope", time.Now()); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("round %d: write after the connections died: %v", round, err)
		}
	}
}

// TestNoJIT: the store's connections do not JIT-compile. Its statements
// are short ones over indexes, but the planner's estimate of the claim's
// generic plan crosses jit_above_cost once tasks holds about 100,000
// rows, and compiling it then cost 50 ms of every claim of a few ms.
func TestNoJIT(t *testing.T) {
	t.Parallel()
	st := pgtest.NewStore(t)
	jit, err := st.Setting(context.Background(), "jit")
	if err != nil {
		t.Fatal(err)
	}
	if jit != "off" {
		t.Fatalf("jit = %q, want off", jit)
	}
}
