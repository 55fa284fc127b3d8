package cli

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// gcHeadroom is the least room a small heap gets to grow before the next
// collection. Go's default (GOGC=100) collects a server whose live heap is
// a few MB every few MB allocated: against a fast upstream that was 4–6%
// of batchd's CPU, and its write barriers and cold caches cost more again
// (issue 7 item 13). A heap of gcHeadroom or more is collected as by
// default; a smaller one at most gcHeadroom (never beyond 5×) above what
// is live, so memory grows by at most gcHeadroom over the default, and
// only while the heap is small.
const gcHeadroom = 64 << 20

// maxGCPercent bounds how far a tiny heap may grow before a collection.
const maxGCPercent = 400

// gcPercentFor is the GOGC that gives a live heap of live bytes headroom
// to grow, between the default 100 and maxGCPercent.
func gcPercentFor(live, headroom uint64) int {
	if live == 0 {
		return maxGCPercent
	}
	return int(min(max(headroom*100/live, 100), maxGCPercent))
}

// tuneGC sets GOGC after every collection from the heap it left live (see
// gcHeadroom), unless the operator chose GOGC or GOMEMLIMIT, which then
// stand as set. It returns a function that stops the tuning and puts the
// default back.
func tuneGC() (stop func()) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	t := &gcTuner{sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.arm()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.stopped = true
		debug.SetGCPercent(100)
	}
}

// gcTuner re-reads the live heap once per collection: a finalizer runs
// after each cycle that finds its sentinel unreachable, and arms a new one.
type gcTuner struct {
	mu      sync.Mutex
	stopped bool
	sample  []metrics.Sample
}

type gcSentinel struct{ t *gcTuner }

func (t *gcTuner) arm() {
	runtime.SetFinalizer(&gcSentinel{t}, func(s *gcSentinel) {
		if s.t.tune() {
			s.t.arm()
		}
	})
}

// tune sets GOGC for the heap now live; it reports false once stopped.
func (t *gcTuner) tune() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() == metrics.KindUint64 {
		debug.SetGCPercent(gcPercentFor(t.sample[0].Value.Uint64(), gcHeadroom))
	}
	return true
}
