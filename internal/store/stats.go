package store

import "time"

// Stats is the store's state as the metrics report it, for the whole
// store (every workspace, every process of a cluster).
type Stats struct {
	// BatchesByStatus counts batches by status, creating ones included.
	BatchesByStatus map[string]int64
	// Queues lists each backend with requests waiting in batches in
	// progress, in backend order.
	Queues []BackendQueue
}

// BackendQueue is one backend's waiting requests.
type BackendQueue struct {
	Backend string
	// Pending counts the requests not yet running (due or waiting for a
	// retry); Oldest is when the oldest of their batches was created.
	Pending int64
	Oldest  time.Time
}
