package batch

import (
	"context"
	"fmt"
	"strings"

	"github.com/batchd/batchd/internal/store"
)

// ResultsPageParams ask for one bounded page of a batch's results (a
// batchd extension of the results endpoint, which the dashboard pages
// with): at most Limit results after the cursor After, optionally only of
// one ResultType and only those whose custom_id starts with CustomID.
type ResultsPageParams struct {
	Limit      int
	After      int64
	ResultType string
	CustomID   string
}

// MaxResultsPage is the largest page ResultsPage returns.
const MaxResultsPage = 1000

// ResultsPage returns one page of the results of b, which ResultsReady
// approved, and whether more follow. Its cursor is the last result's ID.
func (s *Service) ResultsPage(ctx context.Context, b *store.Batch, p ResultsPageParams) ([]store.Result, bool, error) {
	if p.Limit < 1 || p.Limit > MaxResultsPage {
		return nil, false, invalid("limit: Input should be between 1 and %d", MaxResultsPage)
	}
	switch p.ResultType {
	case "", store.ResultSucceeded, store.ResultErrored, store.ResultCanceled, store.ResultExpired:
	default:
		return nil, false, invalid("result_type: Input should be 'succeeded', 'errored', 'canceled' or 'expired'")
	}
	if len(p.CustomID) > 64 || strings.IndexFunc(p.CustomID, func(r rune) bool { return !customIDRune(r) }) >= 0 {
		return nil, false, invalid("custom_id: a custom_id (prefix) matches ^[a-zA-Z0-9_-]{1,64}$")
	}
	if p.After < 0 {
		return nil, false, invalid("after: not a cursor this endpoint returned")
	}
	rows, err := s.store.ResultsList(ctx, store.ResultsListParams{BatchSeq: b.Seq, AfterID: p.After, Limit: p.Limit + 1,
		ResultType: p.ResultType, CustomIDPrefix: p.CustomID})
	if err != nil {
		return nil, false, fmt.Errorf("results page of %s: %w", b.ID, err)
	}
	if len(rows) > p.Limit {
		return rows[:p.Limit], true, nil
	}
	return rows, false, nil
}

func customIDRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-'
}
