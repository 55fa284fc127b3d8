package timedstore

import (
	"reflect"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/faultstore"
)

// TestEveryVerbIsTimed calls every verb of store.Store through the wrapper
// around a store whose every verb fails: a verb the wrapper does not
// override would be called without being observed.
func TestEveryVerbIsTimed(t *testing.T) {
	t.Parallel()
	iface := reflect.TypeFor[store.Store]()
	for i := range iface.NumMethod() {
		m := iface.Method(i)
		if m.Name == "Close" {
			continue
		}
		t.Run(m.Name, func(t *testing.T) {
			t.Parallel()
			fs := faultstore.New(nil)
			fs.Fail(m.Name, nil)
			var seen []string
			ts := New(fs, func(verb string, d time.Duration) {
				if d < 0 {
					t.Errorf("%s took %v", verb, d)
				}
				seen = append(seen, verb)
			})
			fn := reflect.ValueOf(ts).MethodByName(m.Name)
			args := make([]reflect.Value, fn.Type().NumIn())
			for j := range args {
				args[j] = reflect.Zero(fn.Type().In(j))
			}
			out := fn.Call(args)
			if err, _ := out[len(out)-1].Interface().(error); err == nil {
				t.Errorf("%s: the wrapped store's error was lost", m.Name)
			}
			if len(seen) != 1 || seen[0] != m.Name {
				t.Errorf("%s observed %v", m.Name, seen)
			}
		})
	}
}
