package faultstore

import (
	"errors"
	"reflect"
	"testing"

	"github.com/batchd/batchd/internal/store"
)

// TestEveryVerbCanFail calls every verb of store.Store through a wrapper
// around no store at all: a verb the wrapper does not override would reach
// the nil store and panic instead of returning the injected error.
func TestEveryVerbCanFail(t *testing.T) {
	t.Parallel()
	iface := reflect.TypeFor[store.Store]()
	for i := range iface.NumMethod() {
		m := iface.Method(i)
		if m.Name == "Close" {
			continue
		}
		t.Run(m.Name, func(t *testing.T) {
			t.Parallel()
			fs := New(nil)
			want := errors.New("boom " + m.Name)
			fs.Fail(m.Name, want)
			fn := reflect.ValueOf(fs).MethodByName(m.Name)
			args := make([]reflect.Value, fn.Type().NumIn())
			for j := range args {
				args[j] = reflect.Zero(fn.Type().In(j))
			}
			out := fn.Call(args)
			got, _ := out[len(out)-1].Interface().(error)
			if !errors.Is(got, want) {
				t.Fatalf("%s returned %v, want the injected error", m.Name, got)
			}
			if fs.Calls(m.Name) != 1 {
				t.Fatalf("%s counted %d calls", m.Name, fs.Calls(m.Name))
			}
		})
	}
}

func TestFailAfterSkipsThenFailsTimes(t *testing.T) {
	t.Parallel()
	fs := New(nil)
	fs.FailAfter("KeysActive", 0, 2, nil)
	for i := range 2 {
		if _, err := fs.KeysActive(t.Context()); !errors.Is(err, ErrInjected) {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	fs.FailAfter("BatchDiscard", 1, 1, nil)
	if err := fs.check("BatchDiscard"); err != nil {
		t.Fatalf("first call should pass: %v", err)
	}
	if err := fs.check("BatchDiscard"); !errors.Is(err, ErrInjected) {
		t.Fatalf("second call should fail: %v", err)
	}
	if err := fs.check("BatchDiscard"); err != nil {
		t.Fatalf("third call should pass: %v", err)
	}
}
