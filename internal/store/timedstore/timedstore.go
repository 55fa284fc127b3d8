// Package timedstore wraps a store.Store so that every verb's time is
// observed (for the metrics' store operation latency), changing nothing
// else: each verb calls the wrapped store once and returns what it did.
package timedstore

import (
	"time"

	"github.com/batchd/batchd/internal/store"
)

// Store is a store.Store whose verbs report their durations.
type Store struct {
	store.Store
	observe func(verb string, since time.Time)
}

// New wraps st; observe is called after every verb with the verb's name
// and when it started.
func New(st store.Store, observe func(verb string, d time.Duration)) *Store {
	return &Store{Store: st, observe: func(verb string, since time.Time) { observe(verb, time.Since(since)) }}
}

// Unwrap is the wrapped store, for what only a driver offers (a
// store.Notifier).
func (s *Store) Unwrap() store.Store { return s.Store }
