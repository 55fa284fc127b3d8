package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/batchd/batchd/internal/store"
)

// maxAttempts bounds how many times a transiently failing transaction runs.
const maxAttempts = 5

// retry runs op until it succeeds, fails for good, or has run maxAttempts
// times, waiting a short jittered backoff between runs; the error it
// returns is classified and wrapped with action.
func (s *Store) retry(ctx context.Context, action string, op func() error) error {
	backoff := 5 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil {
			return nil
		}
		if attempt == maxAttempts || !transient(err) || ctx.Err() != nil {
			return fmt.Errorf("%s: %w", action, classify(err))
		}
		t := time.NewTimer(backoff/2 + rand.N(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w", action, classify(err))
		case <-t.C:
		}
		backoff *= 2
	}
}

// errCommitUnknown marks a commit whose answer was lost with the
// connection: it may have committed, so it is never run again.
var errCommitUnknown = errors.New("commit outcome unknown")

func commitError(err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return err // the server answered: rolled back
	}
	return fmt.Errorf("%w: %w", errCommitUnknown, err)
}

// SQLSTATE codes the driver acts on.
const (
	codeUniqueViolation      = "23505"
	codeSerializationFailure = "40001"
	codeDeadlockDetected     = "40P01"
	codeDiskFull             = "53100"
	codeAdminShutdown        = "57P01"
	codeCrashShutdown        = "57P02"
	codeCannotConnectNow     = "57P03"
)

// transient reports whether running the whole transaction again may
// succeed: a serialization failure, a deadlock, or a connection lost
// before the commit (the server rolled the transaction back).
func transient(err error) bool {
	if errors.Is(err, errCommitUnknown) {
		return false
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch pg.Code {
		case codeSerializationFailure, codeDeadlockDetected, codeAdminShutdown, codeCrashShutdown, codeCannotConnectNow:
			return true
		}
		return pg.Code[:2] == "08" // connection exception
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var connect *pgconn.ConnectError
	var netErr net.Error
	return pgconn.SafeToRetry(err) || errors.As(err, &connect) || errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// classify maps a driver error onto the store's sentinels: no row is
// store.ErrNotFound, a unique violation store.ErrConflict, a full disk
// store.ErrFull. Errors already in the store's terms pass through.
func classify(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return store.ErrNotFound
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch pg.Code {
		case codeUniqueViolation:
			return fmt.Errorf("%w: %s (%s)", store.ErrConflict, pg.Message, pg.ConstraintName)
		case codeDiskFull:
			return fmt.Errorf("%w: %w", store.ErrFull, err)
		}
	}
	return err
}
