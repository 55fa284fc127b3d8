package postgres_test

import (
	"testing"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/postgres/pgtest"
	"github.com/batchd/batchd/internal/store/storetest"
)

func newStore(t *testing.T) store.Store { return pgtest.NewStore(t) }

func TestConformance(t *testing.T) {
	t.Parallel()
	pgtest.URL(t) // skip here, once, rather than in every case
	storetest.Run(t, newStore)
}
