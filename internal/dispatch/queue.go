package dispatch

import "sync"

// fairQueue holds a backend's claimed requests until a worker is free. It
// hands them out round-robin across batches, not first-in first-out, so a
// small batch whose requests were claimed behind thousands of a big one's
// still gets the very next free workers; that keeps batches fair however
// deep the dispatcher claims ahead.
type fairQueue struct {
	mu      sync.Mutex
	ready   *sync.Cond
	batches map[int64][]job // pending jobs per batch, oldest first
	ring    []int64         // batches with jobs, served in turn
	next    int
	closed  bool
}

func newFairQueue() *fairQueue {
	q := &fairQueue{batches: map[int64][]job{}}
	q.ready = sync.NewCond(&q.mu)
	return q
}

// push adds a job; it never blocks (the dispatcher bounds what it holds).
func (q *fairQueue) push(j job) {
	q.mu.Lock()
	jobs, ok := q.batches[j.BatchSeq]
	if !ok || len(jobs) == 0 {
		q.ring = append(q.ring, j.BatchSeq)
	}
	q.batches[j.BatchSeq] = append(jobs, j)
	q.mu.Unlock()
	q.ready.Signal()
}

// pop takes the next job, the batches taking turns, waiting for one; it
// returns false once the queue is closed and empty.
func (q *fairQueue) pop() (job, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.ring) == 0 {
		if q.closed {
			return job{}, false
		}
		q.ready.Wait()
	}
	if q.next >= len(q.ring) {
		q.next = 0
	}
	seq := q.ring[q.next]
	jobs := q.batches[seq]
	j := jobs[0]
	jobs[0] = job{} // let the params be collected
	jobs = jobs[1:]
	if len(jobs) == 0 {
		delete(q.batches, seq)
		q.ring = append(q.ring[:q.next], q.ring[q.next+1:]...)
	} else {
		q.batches[seq] = jobs
		q.next++
	}
	return j, true
}

// take removes and returns the jobs of every batch whose oldest job pred
// accepts: pred must judge a job only by what all jobs of its batch share.
func (q *fairQueue) take(pred func(job) bool) []job {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []job
	for i := 0; i < len(q.ring); {
		seq := q.ring[i]
		jobs := q.batches[seq]
		if !pred(jobs[0]) {
			i++
			continue
		}
		out = append(out, jobs...)
		delete(q.batches, seq)
		q.ring = append(q.ring[:i], q.ring[i+1:]...)
		if q.next > i {
			q.next-- // the batch due next stays due next
		}
	}
	return out
}

// close wakes every waiting worker; they drain what is left, then stop.
func (q *fairQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.ready.Broadcast()
}
