package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// BenchmarkBatchUsage reads the usage of a batch of 10 and of 100,000
// settled requests (three models) from the store newStore makes: the read
// costs the same whatever the batch's size, since the totals are kept as
// the results settle. Both drivers run it.
func BenchmarkBatchUsage(b *testing.B, newStore func(testing.TB) store.Store) {
	for _, n := range []int{10, 100_000} {
		b.Run(fmt.Sprintf("requests=%d", n), func(b *testing.B) {
			ctx := context.Background()
			st := newStore(b)
			bt, err := st.BatchInsert(ctx, store.BatchInsertParams{ID: fmt.Sprintf("msgbatch_usage_%d", n), Workspace: "w", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
			if err != nil {
				b.Fatal(err)
			}
			const group = 2000
			reqs := make([]store.NewRequest, 0, group)
			for i := range n {
				reqs = append(reqs, store.NewRequest{CustomID: fmt.Sprint("r", i), Params: json.RawMessage(`{}`)})
				if len(reqs) == group || i == n-1 {
					if err := st.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: bt.Seq, Requests: reqs}); err != nil {
						b.Fatal(err)
					}
					reqs = reqs[:0]
				}
			}
			if _, err := st.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: bt.Seq, Total: int64(n)}); err != nil {
				b.Fatal(err)
			}
			models := []string{"claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"}
			for done := 0; done < n; {
				c, err := st.RequestsClaim(ctx, store.RequestsClaimParams{Owner: "o", Limit: group, Now: t0, LeaseUntil: t0.Add(time.Hour)})
				if err != nil || len(c) == 0 {
					b.Fatalf("claim: %d %v", len(c), err)
				}
				os := make([]store.Outcome, len(c))
				for i, r := range c {
					os[i] = withUsage(r, models[(done+i)%len(models)], `{"input_tokens":12,"output_tokens":34}`)
				}
				if _, err := st.RequestsComplete(ctx, store.RequestsCompleteParams{Owner: "o", Now: t0, Outcomes: os}); err != nil {
					b.Fatal(err)
				}
				done += len(c)
			}
			b.ResetTimer()
			for b.Loop() {
				u, err := st.BatchUsage(ctx, store.BatchGetParams{Workspace: "w", ID: bt.ID})
				if err != nil || len(u) != min(n, len(models)) {
					b.Fatalf("usage %v %v", u, err)
				}
			}
		})
	}
}
