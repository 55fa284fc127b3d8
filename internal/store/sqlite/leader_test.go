package sqlite_test

import (
	"context"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// lead makes the test the chores' leader at now and returns its lead.
func lead(t testing.TB, st store.Store, now time.Time) store.Lead {
	t.Helper()
	l, err := st.LeaderAcquire(context.Background(), store.LeaderAcquireParams{Name: store.LeaderChores, Owner: "test", Now: now, Until: now.Add(time.Hour)})
	if err != nil || l.Owner != "test" {
		t.Fatalf("lead: %+v %v", l, err)
	}
	return store.Lead{Name: l.Name, Owner: l.Owner, Term: l.Term}
}
