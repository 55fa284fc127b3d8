package storetest

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/batchd/batchd/internal/store"
)

// testResultsPage covers the filters of ResultsList that the results page
// of the API (and the dashboard) uses: by result type, by custom_id
// prefix, and both, each paged by keyset.
func testResultsPage(t *testing.T, newStore NewStore) {
	run(t, "FilterByTypeAndCustomIDPrefix", newStore, func(t *testing.T, b *bundle) {
		// r0..r11: every third errored; r1 and r10, r11 share the prefix "r1".
		bt := b.batch(t, "w", 12, t0)
		other := b.batch(t, "w", 3, t0) // same custom_ids in another batch
		var os []store.Outcome
		for _, c := range b.claim(t, "o", 20, t0) {
			o := succeed(c)
			var i int
			fmt.Sscanf(c.CustomID, "r%d", &i)
			if c.BatchSeq == bt.Seq && i%3 == 0 {
				o.ResultType, o.Result = store.ResultErrored, json.RawMessage(`{"type":"errored"}`)
			}
			os = append(os, o)
		}
		b.complete(t, "o", t0, os...)
		ids := func(p store.ResultsListParams, pageSize int) []string {
			t.Helper()
			p.BatchSeq, p.Limit = bt.Seq, pageSize
			var out []string
			for {
				page, err := b.st.ResultsList(b.ctx, p)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range page {
					if p.ResultType != "" && r.ResultType != p.ResultType {
						t.Fatalf("%s is %s, asked for %s", r.CustomID, r.ResultType, p.ResultType)
					}
					out = append(out, r.CustomID)
				}
				if len(page) < pageSize {
					return out
				}
				p.AfterID = page[len(page)-1].ID
			}
		}
		for _, tc := range []struct {
			name string
			p    store.ResultsListParams
			want []string
		}{
			{"none", store.ResultsListParams{}, []string{"r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11"}},
			{"errored", store.ResultsListParams{ResultType: store.ResultErrored}, []string{"r0", "r3", "r6", "r9"}},
			{"succeeded", store.ResultsListParams{ResultType: store.ResultSucceeded}, []string{"r1", "r2", "r4", "r5", "r7", "r8", "r10", "r11"}},
			{"canceled", store.ResultsListParams{ResultType: store.ResultCanceled}, nil},
			{"prefix", store.ResultsListParams{CustomIDPrefix: "r1"}, []string{"r1", "r10", "r11"}},
			{"exact", store.ResultsListParams{CustomIDPrefix: "r11"}, []string{"r11"}},
			{"case-sensitive", store.ResultsListParams{CustomIDPrefix: "R1"}, nil},
			{"underscore is no wildcard", store.ResultsListParams{CustomIDPrefix: "_1"}, nil},
			{"prefix and type", store.ResultsListParams{CustomIDPrefix: "r1", ResultType: store.ResultSucceeded}, []string{"r1", "r10", "r11"}},
			{"prefix and errored", store.ResultsListParams{CustomIDPrefix: "r", ResultType: store.ResultErrored}, []string{"r0", "r3", "r6", "r9"}},
		} {
			for _, size := range []int{1, 2, 100} {
				if got := ids(tc.p, size); !slices.Equal(got, tc.want) {
					t.Errorf("%s, pages of %d: %v, want %v", tc.name, size, got, tc.want)
				}
			}
		}
		if n, err := b.st.ResultsList(b.ctx, store.ResultsListParams{BatchSeq: other.Seq, Limit: 10, ResultType: store.ResultErrored}); err != nil || len(n) != 0 {
			t.Fatalf("other batch errored: %v %v", n, err)
		}
	})
}
