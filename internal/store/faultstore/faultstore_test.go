package faultstore

import (
	"errors"
	"testing"

	"github.com/batchd/batchd/internal/store/storetest"
)

// TestEveryVerbCanFail calls every verb of store.Store through a wrapper
// around no store at all: a verb the wrapper does not override would reach
// the nil store and panic instead of returning the injected error.
func TestEveryVerbCanFail(t *testing.T) {
	t.Parallel()
	storetest.EachVerb(t, func(t *testing.T, verb string) {
		fs := New(nil)
		want := errors.New("boom " + verb)
		fs.Fail(verb, want)
		if got := storetest.CallVerb(fs, verb); !errors.Is(got, want) {
			t.Fatalf("%s returned %v, want the injected error", verb, got)
		}
		if fs.Calls(verb) != 1 {
			t.Fatalf("%s counted %d calls", verb, fs.Calls(verb))
		}
	})
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
