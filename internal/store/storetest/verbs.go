package storetest

import (
	"reflect"
	"testing"

	"github.com/batchd/batchd/internal/store"
)

// EachVerb runs fn as a parallel subtest for every verb of store.Store but
// Close: for the wrappers' tests that every verb is wrapped.
func EachVerb(t *testing.T, fn func(t *testing.T, verb string)) {
	t.Helper()
	iface := reflect.TypeFor[store.Store]()
	for i := range iface.NumMethod() {
		name := iface.Method(i).Name
		if name == "Close" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, name)
		})
	}
}

// CallVerb calls st's method verb with zero values for every argument and
// returns the error it returned.
func CallVerb(st any, verb string) error {
	fn := reflect.ValueOf(st).MethodByName(verb)
	args := make([]reflect.Value, fn.Type().NumIn())
	for j := range args {
		args[j] = reflect.Zero(fn.Type().In(j))
	}
	out := fn.Call(args)
	err, _ := out[len(out)-1].Interface().(error)
	return err
}
