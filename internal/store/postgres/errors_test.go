package postgres

import (
	"context"
	"errors"
	"io"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/batchd/batchd/internal/store"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"no row", pgx.ErrNoRows, store.ErrNotFound},
		{"unique violation", &pgconn.PgError{Code: codeUniqueViolation}, store.ErrConflict},
		{"disk full", &pgconn.PgError{Code: codeDiskFull}, store.ErrFull},
		{"a store error passes", store.ErrTooManyBatches, store.ErrTooManyBatches},
	} {
		if got := classify(c.err); !errors.Is(got, c.want) {
			t.Errorf("%s: classify = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestTransient(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"serialization failure", &pgconn.PgError{Code: codeSerializationFailure}, true},
		{"deadlock", &pgconn.PgError{Code: codeDeadlockDetected}, true},
		{"server shutting down", &pgconn.PgError{Code: codeAdminShutdown}, true},
		{"connection exception", &pgconn.PgError{Code: "08006"}, true},
		{"connection lost mid-transaction", io.ErrUnexpectedEOF, true},
		{"unique violation", &pgconn.PgError{Code: codeUniqueViolation}, false},
		{"no row", pgx.ErrNoRows, false},
		{"a store error", store.ErrConflict, false},
		{"canceled", context.Canceled, false},
		// A commit whose answer was lost may have committed: never again.
		{"commit lost", commitError(io.ErrUnexpectedEOF), false},
		{"commit refused", commitError(&pgconn.PgError{Code: codeSerializationFailure}), true},
	} {
		if got := transient(c.err); got != c.want {
			t.Errorf("%s: transient = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestRetryIsBounded(t *testing.T) {
	t.Parallel()
	s := &Store{}
	ctx := context.Background()
	for _, c := range []struct {
		name      string
		fails     int // how many runs fail before one succeeds
		err       error
		wantRuns  int
		wantError error
	}{
		{"deadlock then success", 2, &pgconn.PgError{Code: codeDeadlockDetected}, 3, nil},
		{"always serialization failure", 100, &pgconn.PgError{Code: codeSerializationFailure}, maxAttempts, nil},
		{"unique violation at once", 100, &pgconn.PgError{Code: codeUniqueViolation}, 1, store.ErrConflict},
	} {
		runs := 0
		err := s.retry(ctx, "op", func() error {
			runs++
			if runs <= c.fails {
				return c.err
			}
			return nil
		})
		if runs != c.wantRuns {
			t.Errorf("%s: ran %d times, want %d", c.name, runs, c.wantRuns)
		}
		if (c.fails < c.wantRuns) != (err == nil) {
			t.Errorf("%s: err = %v", c.name, err)
		}
		if c.wantError != nil && !errors.Is(err, c.wantError) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.wantError)
		}
	}
}
