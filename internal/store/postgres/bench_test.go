package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/postgres/pgtest"
	"github.com/batchd/batchd/internal/store/storetest"
)

// BenchmarkClaimComplete is the SQLite driver's benchmark of the same
// name on PostgreSQL: insert, claim and complete in groups, as the
// dispatcher does. Wall time counts the server's work too (it runs on
// the same machine), so req/s is the figure to compare.
func BenchmarkClaimComplete(b *testing.B) {
	for _, group := range []int{64, 512} {
		b.Run(fmt.Sprintf("group=%d", group), func(b *testing.B) {
			ctx := context.Background()
			st := pgtest.NewStore(b)
			now := time.Now()
			bt, err := st.BatchInsert(ctx, store.BatchInsertParams{ID: "msgbatch_b", Workspace: "w", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
			if err != nil {
				b.Fatal(err)
			}
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
			if _, err := st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: int64(n)}); err != nil {
				b.Fatal(err)
			}
			result := json.RawMessage(`{"type":"succeeded","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sim","content":[{"type":"text","text":"` +
				strings.Repeat("word ", 60) + `"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":60}}}`)
			b.ResetTimer()
			start := time.Now()
			var claimT, completeT time.Duration
			for done := 0; done < n; {
				t := time.Now()
				c, err := st.RequestsClaim(ctx, store.RequestsClaimParams{Owner: "o", Limit: group, Now: time.Now(), LeaseUntil: time.Now().Add(time.Minute)})
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
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "req/s")
			b.ReportMetric(float64(claimT.Microseconds())/float64(n), "claim_us/req")
			b.ReportMetric(float64(completeT.Microseconds())/float64(n), "complete_us/req")
		})
	}
}

// BenchmarkBatchUsage: reading a batch's usage costs the same for 10 and
// for 100,000 requests (issue 9).
//
//	go test ./internal/store/postgres -run '^$' -bench BatchUsage
func BenchmarkBatchUsage(b *testing.B) {
	storetest.BenchmarkBatchUsage(b, func(tb testing.TB) store.Store { return pgtest.NewStore(tb) })
}
