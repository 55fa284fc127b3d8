package sqlite

// Disk space. A full disk must not lock batchd up: the writes that free
// space (DELETE, cancel, the purge and archive sweeps, the vacuum) must
// still commit, and the space they free must go back to the file system.
//
// SQLite needs free space even to delete: every changed page is appended
// to the WAL first. So the store keeps a reserve, a file of Options.Reserve
// bytes beside the database. A write that frees space and fails with
// SQLITE_FULL removes the reserve and runs once more (txFreeing). Meanwhile
// the store is "full": every other write fails at once with store.ErrFull
// (creates, claims, webhook records), so that none of them takes the room
// the freeing writes need; the dispatcher and deliverer retry theirs. The
// checkpoint loop puts the reserve back and ends the full state as soon as
// the file system has the room for it and as much again (recoverRoom).
//
// Freed pages go back to the file system through auto_vacuum=INCREMENTAL
// and a periodic incremental_vacuum; the file shrinks at the checkpoint
// that copies the vacuumed pages back. The WAL is cut back to
// journalSizeLimit whenever it restarts after a checkpoint.
//
// While the store is full the order matters. The WAL then holds pages up
// to the database's peak size (the create that filled the disk), and a
// checkpoint copies them into the database file, growing it, before the
// WAL can be emptied: on the disk that has just been freed by giving up
// the reserve, that copy took the freed room and failed half way, and
// then nothing could run any more (the vacuum needs WAL room, the WAL
// needs a complete checkpoint, the checkpoint needs room). So while full
// no background checkpoint runs: the deletes commit into the WAL, the
// vacuum shrinks the database's size in the WAL, and only then does one
// checkpoint run, when it no longer grows the file or when the file
// system has the room for all it grows (checkpointSafe); it copies only
// the pages that are left, cuts the file to its new size and empties the
// WAL.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"modernc.org/sqlite"

	"github.com/batchd/batchd/internal/store"
)

// Options tune Open.
type Options struct {
	// Reserve is how many bytes of disk the store holds back in a file
	// beside the database (<path>-reserve) for the writes that free space
	// when the disk is full. 0 means none: a full disk may then refuse
	// deletes too.
	Reserve int64
}

// DefaultReserve is the reserve batchd serve keeps: enough WAL for deleting
// and canceling batches, the purge's chunks and the vacuum's steps.
const DefaultReserve = 64 << 20

// walLimit is what the WAL is cut back to when it restarts (a large create
// may grow it past this for a while, never for good): half the reserve, so
// that the reserve given back always has room for the checkpoint that
// copies the WAL into the database file and then empties it.
func walLimit(reserve int64) int64 {
	if reserve <= 0 {
		return DefaultReserve / 2
	}
	return max(reserve/2, 1<<20)
}

// vacuumPages is how many free pages one incremental_vacuum step returns
// (16 MiB), so that a step holds the writer briefly.
const vacuumPages = 1024

// Every how many checkpoint ticks the vacuum and reserve run.
const maintainEvery = 4

const sqliteFull = 13 // SQLITE_FULL

// isFull tells whether err is the disk (or the database's size limit)
// being full.
func isFull(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code()&0xff == sqliteFull {
		return true
	}
	return errors.Is(err, syscall.ENOSPC)
}

// space is the store's disk-space state.
type space struct {
	db   string // the database file
	path string // the reserve file
	size int64
	full chan struct{} // holds a token while the store is full

	// ckpt is held by every checkpoint and by the release of the reserve,
	// so that no background checkpoint that began before the store was
	// full runs on into the room the reserve gave back.
	ckpt sync.Mutex
}

func newSpace(dbPath string, size int64) *space {
	return &space{db: dbPath, path: dbPath + "-reserve", size: size, full: make(chan struct{}, 1)}
}

func (sp *space) isFull() bool { return len(sp.full) > 0 }

func (sp *space) setFull() {
	select {
	case sp.full <- struct{}{}:
	default:
	}
}

func (sp *space) clearFull() {
	select {
	case <-sp.full:
	default:
	}
}

// classify marks the store full on a full-disk error and wraps it so that
// callers see store.ErrFull.
func (s *Store) classify(err error) error {
	if err == nil || !isFull(err) {
		return err
	}
	s.space.setFull()
	if errors.Is(err, store.ErrFull) {
		return err
	}
	return fmt.Errorf("%w: %w", store.ErrFull, err)
}

// refuseWhenFull fails at once while the store is full: any other write
// (a create, a result, a lease) would only eat the room that the writes
// which free space need. Those run through txFreeing.
func (s *Store) refuseWhenFull() error {
	if s.space.isFull() {
		return store.ErrFull
	}
	return nil
}

// txFreeing runs fn in a write transaction even while the store is full;
// on a full disk it gives up the reserve and runs fn once more. It is for
// the writes that free space (delete, cancel, expiry, the purge and
// archive sweeps, the vacuum), those the freeing ones wait on (rescue,
// which the sweep runs before its purge; completions, without which a
// canceled batch never ends and so cannot be deleted) and heartbeats, whose
// lapse would send the running requests a second time. All of them write
// little or are bounded by what is already claimed.
func (s *Store) txFreeing(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return s.withRoom(ctx, func() error { return s.write(ctx, fn) })
}

// withRoom runs write, and on a full disk makes what room it can and runs
// it again: first by giving up the reserve, then by emptying the WAL if
// that cannot take the room instead (checkpointSafe).
func (s *Store) withRoom(ctx context.Context, write func() error) error {
	err := write()
	if errors.Is(err, store.ErrFull) && s.releaseReserve() {
		err = write()
	}
	if errors.Is(err, store.ErrFull) && s.checkpointSafe(ctx) {
		err = write()
	}
	return err
}

// checkpointSafe copies the whole WAL back into the database file and cuts
// the WAL to zero bytes, but only when that cannot fail half way for want
// of room: when the database file need not grow, or when the file system
// has the room for all it grows. A checkpoint that fails half way has
// grown the file into the room the deletes and the vacuum need, and the
// WAL stays as large as it was. Where the free room cannot be read, a
// growing checkpoint runs only once the vacuum has nothing left to shrink.
//
// It runs on the writer connection, so no commit changes the database's
// size between the check and the checkpoint, and it waits for the writes
// in turn instead of failing them, and for readers on older snapshots.
func (s *Store) checkpointSafe(ctx context.Context) bool {
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return false
	}
	defer conn.Close()
	s.space.ckpt.Lock()
	defer s.space.ckpt.Unlock()
	var pages, pageSize, free int64
	for q, v := range map[string]*int64{`PRAGMA page_count`: &pages, `PRAGMA page_size`: &pageSize, `PRAGMA freelist_count`: &free} {
		if err := conn.QueryRowContext(ctx, q).Scan(v); err != nil {
			return false
		}
	}
	fi, err := os.Stat(s.space.db)
	if err != nil {
		return false
	}
	if grow := pages*pageSize - fi.Size(); grow > 0 {
		avail, known := availBytes(filepath.Dir(s.space.db))
		if known && avail < grow+checkpointSlack || !known && free > 0 {
			return false
		}
	}
	var busy, log, done int
	err = conn.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &log, &done)
	return err == nil && busy == 0
}

// checkpointSlack is room a growing checkpoint leaves beyond what it
// grows the database file by (a file system's own blocks, a concurrent
// small write).
const checkpointSlack = 1 << 20

// releaseReserve removes the reserve file, reporting whether there was one.
// It waits for a background checkpoint in progress (see space.ckpt).
func (s *Store) releaseReserve() bool {
	if s.space.size <= 0 {
		return false
	}
	s.space.ckpt.Lock()
	defer s.space.ckpt.Unlock()
	return os.Remove(s.space.path) == nil
}

// checkpointPassive copies what it can of the WAL back into the database
// file without waiting for anyone, unless the store is full (see the
// comment at the top). A checkpoint that cannot grow the file means the
// disk is full: the writes that grow it stop now, while the reserve still
// covers what the WAL holds.
func (s *Store) checkpointPassive() {
	s.space.ckpt.Lock()
	defer s.space.ckpt.Unlock()
	if s.space.isFull() {
		return
	}
	// Errors are retried on the next tick; the WAL only grows meanwhile.
	if _, err := s.r.Exec(`PRAGMA wal_checkpoint(PASSIVE)`); isFull(err) {
		s.space.setFull()
	}
}

// fillFile makes path a file of n bytes actually written (a sparse file
// reserves nothing), removing it again if the disk cannot hold it.
func fillFile(path string, n int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	chunk := make([]byte, 1<<20)
	for left := n; left > 0 && err == nil; left -= int64(len(chunk)) {
		_, err = f.Write(chunk[:min(left, int64(len(chunk)))])
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// ensureReserve puts the reserve file back if it is missing or short.
func (s *Store) ensureReserve() error {
	if s.space.size <= 0 {
		return nil
	}
	if fi, err := os.Stat(s.space.path); err == nil && fi.Size() == s.space.size {
		return nil
	}
	return fillFile(s.space.path, s.space.size)
}

// probeRoom tells whether the file system has another reserve's worth of
// room beyond the reserve: only then does the full state end, or the next
// create would fill the disk again at once.
func (s *Store) probeRoom() bool {
	size := max(s.space.size, 1<<20)
	probe := s.space.path + "-probe"
	if err := fillFile(probe, size); err != nil {
		return false
	}
	os.Remove(probe)
	return true
}

// maintain vacuums one step of free pages back to the file system.
// Errors wait for the next round.
func (s *Store) maintain(ctx context.Context) {
	if s.freePages(ctx) > 0 {
		s.vacuum(ctx)
	}
}

// recoverRoom runs on every checkpoint tick while the store is full: it
// vacuums every free page, then empties the WAL when that is safe, and
// ends the full state once the reserve is back and there is room beyond
// it. Errors wait for the next round.
func (s *Store) recoverRoom(ctx context.Context) {
	// Until no page is free, or a step frees none (auto_vacuum is off in
	// a data dir not yet converted).
	for i, last := 0, int64(-1); i < maxVacuumSteps; i++ {
		free := s.freePages(ctx)
		if free == 0 || free == last || s.vacuum(ctx) != nil {
			break
		}
		last = free
	}
	if !s.checkpointSafe(ctx) {
		return
	}
	if s.ensureReserve() == nil && s.probeRoom() {
		s.space.clearFull()
	}
}

// maxVacuumSteps bounds one recoverRoom's vacuum (16 GiB of free pages).
const maxVacuumSteps = 1024

// freePages is the database's count of free pages, 0 if it cannot be read.
func (s *Store) freePages(ctx context.Context) int64 {
	var free int64
	if err := s.r.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&free); err != nil {
		return 0
	}
	return free
}

// vacuum returns up to vacuumPages free pages to the file system: it moves
// the pages at the end of the file into free ones and shrinks the
// database's size; the file shrinks at the next complete checkpoint.
func (s *Store) vacuum(ctx context.Context) error {
	q := fmt.Sprintf(`PRAGMA incremental_vacuum(%d)`, vacuumPages)
	return s.withRoom(ctx, func() error {
		_, err := s.w.ExecContext(ctx, q)
		return s.classify(err)
	})
}

// convertAutoVacuum turns auto_vacuum on in a database made before it was:
// that takes one VACUUM, which rewrites the file (and needs room for a copy
// of it). On a full disk it is left for the next start.
func (s *Store) convertAutoVacuum(ctx context.Context) error {
	var mode int
	if err := s.w.QueryRowContext(ctx, `PRAGMA auto_vacuum`).Scan(&mode); err != nil {
		return fmt.Errorf("auto_vacuum: %w", err)
	}
	if mode == 2 { // INCREMENTAL
		return nil
	}
	for _, q := range []string{`PRAGMA auto_vacuum=INCREMENTAL`, `VACUUM`} {
		if _, err := s.w.ExecContext(ctx, q); err != nil {
			if isFull(err) {
				return nil
			}
			return fmt.Errorf("auto_vacuum: %s: %w", q, err)
		}
	}
	return nil
}
