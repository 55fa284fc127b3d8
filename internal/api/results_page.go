package api

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/store"
)

// resultsPageParams are the query parameters that turn the results
// endpoint into one bounded JSON page (a batchd extension, used by the
// dashboard); without any of them it streams all of the JSONL, as on
// Anthropic.
var resultsPageParams = []string{"limit", "after", "result_type", "custom_id"}

// defaultResultsPage is the page size when a page is asked for without a
// limit.
const defaultResultsPage = 100

func wantsResultsPage(q url.Values) bool {
	for _, k := range resultsPageParams {
		if q.Has(k) {
			return true
		}
	}
	return false
}

// resultLine is one result as in the JSONL stream.
type resultLine struct {
	CustomID string          `json:"custom_id"`
	Result   json.RawMessage `json:"result"`
}

// resultsPage answers one page: {"data":[…lines…],"has_more":…,"next_after":…};
// next_after is the cursor to pass as ?after= for the next page (null at
// the end).
func (a *API) resultsPage(w http.ResponseWriter, r *http.Request, b *store.Batch) error {
	q := r.URL.Query()
	p := batch.ResultsPageParams{Limit: defaultResultsPage, ResultType: q.Get("result_type"), CustomID: q.Get("custom_id")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return invalidf("limit: Input should be a valid integer, got %q", v)
		}
		p.Limit = n
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return invalidf("after: not a cursor this endpoint returned")
		}
		p.After = n
	}
	rows, more, err := a.svc.ResultsPage(r.Context(), b, p)
	if err != nil {
		return err
	}
	out := struct {
		Data      []resultLine `json:"data"`
		HasMore   bool         `json:"has_more"`
		NextAfter *string      `json:"next_after"`
	}{Data: make([]resultLine, 0, len(rows)), HasMore: more}
	for _, row := range rows {
		res := row.Result
		if len(res) == 0 {
			res, _ = json.Marshal(map[string]string{"type": row.ResultType})
		}
		out.Data = append(out.Data, resultLine{row.CustomID, res})
	}
	if more {
		c := strconv.FormatInt(rows[len(rows)-1].ID, 10)
		out.NextAfter = &c
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, out)
}
