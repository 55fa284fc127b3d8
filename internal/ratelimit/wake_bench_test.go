package ratelimit

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend"
)

// slow answers after latency, so the waiters of a benchmark really park
// between two releases, as the dispatcher's workers do.
type slow struct{ latency time.Duration }

func (slow) Name() string { return "slow" }
func (s slow) Do(context.Context, backend.Call) (json.RawMessage, error) {
	if s.latency > 0 {
		time.Sleep(s.latency)
	}
	return json.RawMessage(`{}`), nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAcquireRelease: W goroutines share a limit of 8 calls in flight
// to an upstream of 1 ms latency, so W-8 of them wait at any time (the
// dispatcher runs max_concurrency workers per backend, most of them
// waiting on a lower adaptive limit). Each release must wake only the
// waiter that can take the freed slot, so the CPU one call costs
// (cpu_ns/call: the process's user+system time per call) must not grow
// with W (it grew tenfold from 64 to 1024 waiters when every release
// woke every waiter). Compare waiters=64 with waiters=1024; ns/op is
// bounded by the upstream's latency and says little.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, w := range []int{64, 1024} {
		b.Run("waiters="+strconv.Itoa(w), func(b *testing.B) {
			l := New(slow{time.Millisecond}, Limits{Concurrency: 8, Fixed: true})
			call := backend.Call{Params: json.RawMessage(`{"max_tokens":1}`)}
			var left atomic.Int64
			left.Store(int64(b.N))
			start := make(chan struct{})
			var wg sync.WaitGroup
			for range w {
				wg.Go(func() {
					<-start
					for left.Add(-1) >= 0 {
						l.Do(context.Background(), call)
					}
				})
			}
			b.ResetTimer()
			cpu0 := cpuTime()
			close(start)
			wg.Wait()
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu_ns/call")
		})
	}
}
