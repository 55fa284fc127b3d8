// Package faultstore wraps a store.Store so that tests can make any verb
// fail on demand: the error paths of every caller are then tested against a
// real store, not a mock, with only the chosen call failing.
package faultstore

import (
	"errors"
	"sync"

	"github.com/batchd/batchd/internal/store"
)

// ErrInjected is the error a fault returns when the test gave none.
var ErrInjected = errors.New("injected store fault")

// Store is a store.Store whose verbs fail while a fault is set for them.
type Store struct {
	store.Store

	mu     sync.Mutex
	faults map[string]*fault
	calls  map[string]int
}

type fault struct {
	skip  int // calls that still succeed before the fault fires
	times int // how many calls fail once it fires; < 0 is every call
	err   error
}

// New wraps st; with no fault set it behaves exactly as st.
func New(st store.Store) *Store {
	return &Store{Store: st, faults: map[string]*fault{}, calls: map[string]int{}}
}

// Fail makes every call of verb (a method name of store.Store, such as
// "BatchPublish") fail with err (ErrInjected if nil) until Clear.
func (s *Store) Fail(verb string, err error) { s.FailAfter(verb, 0, -1, err) }

// FailAfter lets skip calls of verb succeed, then fails the next times
// calls (every call if times < 0) with err (ErrInjected if nil).
func (s *Store) FailAfter(verb string, skip, times int, err error) {
	if err == nil {
		err = ErrInjected
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[verb] = &fault{skip: skip, times: times, err: err}
}

// Clear removes the fault of verb, or every fault when verb is "".
func (s *Store) Clear(verb string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if verb == "" {
		s.faults = map[string]*fault{}
		return
	}
	delete(s.faults, verb)
}

// Calls is how many times verb was called, failed calls included.
func (s *Store) Calls(verb string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[verb]
}

func (s *Store) check(verb string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[verb]++
	f := s.faults[verb]
	if f == nil {
		return nil
	}
	if f.skip > 0 {
		f.skip--
		return nil
	}
	if f.times == 0 {
		return nil
	}
	if f.times > 0 {
		f.times--
	}
	return f.err
}
