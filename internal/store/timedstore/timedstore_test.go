package timedstore

import (
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store/faultstore"
	"github.com/batchd/batchd/internal/store/storetest"
)

// TestEveryVerbIsTimed calls every verb of store.Store through the wrapper
// around a store whose verb fails: a verb the wrapper does not override
// would be called without being observed.
func TestEveryVerbIsTimed(t *testing.T) {
	t.Parallel()
	storetest.EachVerb(t, func(t *testing.T, verb string) {
		fs := faultstore.New(nil)
		fs.Fail(verb, nil)
		var seen []string
		ts := New(fs, func(v string, d time.Duration) {
			if d < 0 {
				t.Errorf("%s took %v", v, d)
			}
			seen = append(seen, v)
		})
		if err := storetest.CallVerb(ts, verb); err == nil {
			t.Errorf("%s: the wrapped store's error was lost", verb)
		}
		if len(seen) != 1 || seen[0] != verb {
			t.Errorf("%s observed %v", verb, seen)
		}
	})
}
