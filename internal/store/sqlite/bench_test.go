package sqlite_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/sqlite"
	"github.com/batchd/batchd/internal/store/storetest"
)

// BenchmarkClaimComplete measures the store's bookkeeping per request:
// insert, claim and complete in groups, as the dispatcher does.
//
// In "group=N-vary" the claims ask for N and N-1 requests in turn, as the
// dispatcher's do (what it claims is what the last write freed): SQLite
// re-prepared a claim statement whose LIMIT was a bare parameter at every
// new value.
func BenchmarkClaimComplete(b *testing.B) {
	for _, group := range []int{64, 128, 512, -128} {
		name := fmt.Sprintf("group=%d", group)
		vary := group < 0
		if vary {
			group = -group
			name = fmt.Sprintf("group=%d-vary", group)
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "batchd.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			now := time.Now()
			bt, _ := st.BatchInsert(ctx, store.BatchInsertParams{ID: "msgbatch_b", Workspace: "w", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
			n := b.N
			reqs := make([]store.NewRequest, 0, 1000)
			params := json.RawMessage(`{"model":"claude-sim","max_tokens":32,"messages":[{"role":"user","content":"Summarize document 12345"}]}`)
			for i := 0; i < n; i++ {
				reqs = append(reqs, store.NewRequest{CustomID: fmt.Sprint("r", i), Params: params})
				if len(reqs) == cap(reqs) || i == n-1 {
					if err := st.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: bt.Seq, Requests: reqs}); err != nil {
						b.Fatal(err)
					}
					reqs = reqs[:0]
				}
			}
			st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: int64(n)})
			result := json.RawMessage(`{"type":"succeeded","message":` + strings.Repeat("x", 0) + `{"id":"msg_01","type":"message","role":"assistant","model":"claude-sim","content":[{"type":"text","text":"` + strings.Repeat("word ", 60) + `"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":60}}}`)
			b.ResetTimer()
			cpu0 := cpuTime()
			var claimT, completeT time.Duration
			done := 0
			for round := 0; done < n; round++ {
				t := time.Now()
				limit := group
				if vary && round%2 == 1 {
					limit--
				}
				c, err := st.RequestsClaim(ctx, store.RequestsClaimParams{Owner: "o", Limit: limit, Now: time.Now(), LeaseUntil: time.Now().Add(time.Minute)})
				if err != nil {
					b.Fatal(err)
				}
				claimT += time.Since(t)
				os := make([]store.Outcome, len(c))
				for i, r := range c {
					os[i] = store.Outcome{RequestID: r.ID, BatchSeq: r.BatchSeq, CustomID: r.CustomID, Attempt: r.Attempt, ResultType: "succeeded", Result: result}
				}
				t = time.Now()
				if _, err := st.RequestsComplete(ctx, store.RequestsCompleteParams{Owner: "o", Now: time.Now(), Outcomes: os}); err != nil {
					b.Fatal(err)
				}
				completeT += time.Since(t)
				done += len(c)
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(n), "cpu_us/req")
			b.ReportMetric(float64(claimT.Microseconds())/float64(n), "claim_us/req")
			b.ReportMetric(float64(completeT.Microseconds())/float64(n), "complete_us/req")
		})
	}
}

// cpuTime is the process's user and system CPU time: unlike wall time, it
// does not count time the (virtual) machine was not running us.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkBatchGet is one poll of a batch (GET /v1/messages/batches/{id}),
// which clients repeat until it ends.
func BenchmarkBatchGet(b *testing.B) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "batchd.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	bt, err := st.BatchInsert(ctx, store.BatchInsertParams{ID: "msgbatch_b", Workspace: "w", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: 1}); err != nil {
		b.Fatal(err)
	}
	cpu0 := cpuTime()
	for b.Loop() {
		if _, err := st.BatchGet(ctx, store.BatchGetParams{ID: "msgbatch_b", Workspace: "w"}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e3, "cpu_us/op")
}

// BenchmarkBatchUsage: reading a batch's usage costs the same for 10 and
// for 100,000 requests (issue 9).
//
//	go test ./internal/store/sqlite -run '^$' -bench BatchUsage
func BenchmarkBatchUsage(b *testing.B) {
	storetest.BenchmarkBatchUsage(b, func(tb testing.TB) store.Store {
		st, err := sqlite.Open(context.Background(), filepath.Join(tb.TempDir(), "batchd.db"))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { st.Close() })
		return st
	})
}
