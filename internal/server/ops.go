package server

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/batchd/batchd/internal/api"
	"github.com/batchd/batchd/internal/leader"
	"github.com/batchd/batchd/internal/metrics"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/storeopen"
)

// metricsSource reads the state the metrics report at scrape time: the
// store's counts, and each backend's limit and calls in flight as GET
// /v1/backends shows them.
func metricsSource(st store.Store, backends func() []api.BackendInfo, subscribers func() int, now func() time.Time) metrics.Source {
	return func(ctx context.Context) (metrics.State, error) {
		stats, err := st.Stats(ctx)
		if err != nil {
			return metrics.State{}, fmt.Errorf("read metrics state: %w", err)
		}
		queues := map[string]store.BackendQueue{}
		for _, q := range stats.Queues {
			queues[q.Backend] = q
		}
		out := metrics.State{BatchesByStatus: stats.BatchesByStatus, Subscribers: subscribers()}
		t := now()
		for _, b := range backends() {
			bs := metrics.BackendState{Name: b.Name, ConcurrencyLimit: b.Concurrency, InFlight: b.InFlight}
			if q, ok := queues[b.Name]; ok {
				bs.QueueDepth = q.Pending
				bs.OldestPending = max(t.Sub(q.Oldest), 0)
			}
			out.Backends = append(out.Backends, bs)
		}
		return out, nil
	}
}

// readiness answers GET /readyz: the store answers, its schema is the one
// this binary migrates to (a newer binary of the cluster may have moved
// it on), and whether this process leads. The schema is read at most
// every migrationsEvery, not at every probe.
func readiness(target storeopen.Target, st store.Store, elector *leader.Elector, log *slog.Logger) func(context.Context) api.Readiness {
	const migrationsEvery = 30 * time.Second
	var mu sync.Mutex
	var checked time.Time
	var migrations string
	return func(ctx context.Context) api.Readiness {
		rd := api.Readiness{Driver: string(target.Driver), Store: "ok", Leader: elector.Leading()}
		if _, err := st.KeysActive(ctx); err != nil {
			// The reason goes to the log, not to an unauthenticated caller.
			rd.Store = "unavailable"
			log.Warn("not ready", "store", err)
		}
		mu.Lock()
		if time.Since(checked) > migrationsEvery || migrations != "current" {
			_, pending, unknown, err := storeopen.MigrationStatus(ctx, target)
			switch {
			case err != nil:
				log.Warn("not ready", "migrations", err)
				migrations = "unreadable"
			case len(pending) > 0:
				migrations = "pending: " + strings.Join(pending, ", ")
			case len(unknown) > 0:
				migrations = "applied by a newer batchd: " + strings.Join(unknown, ", ")
			default:
				migrations = "current"
			}
			checked = time.Now()
			if migrations != "current" {
				log.Warn("not ready", "migrations", migrations)
			}
		}
		rd.Migrations = migrations
		mu.Unlock()
		rd.Ready = rd.Store == "ok" && rd.Migrations == "current"
		return rd
	}
}
