package dispatch

import (
	"context"
	"errors"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// DefaultLease is how long a claim holds without a heartbeat: short, so
// that the requests of a process that died (SIGKILL, a lost machine) run
// again within seconds of its restart or on another process, and long
// enough that a heartbeat every third of it survives a busy store.
const DefaultLease = 15 * time.Second

// chores runs, on the leader only, what must happen once per cluster:
// expiring batches, discarding uploads whose creator is gone, archiving
// after the retention and purging deleted rows. Every verb takes the
// leader's term, and the store refuses it once another process leads.
func (d *Dispatcher) chores(ctx context.Context, now time.Time) error {
	lead, ok := d.cfg.Leader.Lead(ctx)
	if !ok {
		return nil
	}
	err := d.leaderChores(ctx, now, lead)
	if errors.Is(err, store.ErrNotLeader) {
		d.log.Warn("chores stopped: another process leads now", "term", lead.Term)
		return nil
	}
	return err
}

func (d *Dispatcher) leaderChores(ctx context.Context, now time.Time, lead store.Lead) error {
	expired, err := d.store.BatchesExpire(ctx, store.BatchesExpireParams{Now: now, Lead: lead})
	if err != nil {
		return err
	}
	d.emit(expired...)
	if n, err := d.store.BatchesDiscardStale(ctx, store.BatchesDiscardStaleParams{Now: now, Lead: lead}); err != nil {
		return err
	} else if n > 0 {
		d.log.Info("discarded batches whose upload was abandoned", "batches", n)
	}
	if _, err := d.store.BatchesArchive(ctx, store.BatchesArchiveParams{Now: now, CreatedBefore: now.Add(-d.cfg.Retention), Lead: lead}); err != nil {
		return err
	}
	// Purge a bounded amount per sweep so that deletes never hog the writer.
	for range 10 {
		n, err := d.store.RequestsPurge(ctx, store.RequestsPurgeParams{Limit: 2000, Now: now, Lead: lead})
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
	}
	return nil
}
