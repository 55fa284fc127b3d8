package api

import (
	"fmt"
	"net/http"
	"time"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/cost"
)

// batchUsage is GET /v1/messages/batches/{id}/usage (extension).
type batchUsage struct {
	Type    string `json:"type"`
	BatchID string `json:"batch_id"`
	cost.Report
}

// usageReport is GET /v1/usage (extension).
type usageReport struct {
	Type string  `json:"type"`
	From *string `json:"from"`
	To   *string `json:"to"`
	*batch.UsageReport
}

func (a *API) handleUsage() {
	a.handle("GET /v1/messages/batches/{id}/usage", a.batchUsage)
	a.handle("GET /v1/usage", a.usage)
	a.handle("POST /v1/messages/batches/estimate", a.estimate)
}

func (a *API) batchUsage(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	rep, err := a.svc.Usage(r.Context(), workspace(r), id)
	if err != nil {
		return err
	}
	return writeJSON(w, batchUsage{Type: "message_batch_usage", BatchID: id, Report: rep})
}

func (a *API) usage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	now := a.svc.Config().Now()
	from, err := batch.ParseUsageDay("from", q.Get("from"), now)
	if err != nil {
		return err
	}
	to, err := batch.ParseUsageDay("to", q.Get("to"), now)
	if err != nil {
		return err
	}
	rep, err := a.svc.UsageList(r.Context(), workspace(r), batch.UsageQuery{From: from, To: to, GroupBy: q.Get("group_by")})
	if err != nil {
		return err
	}
	day := func(t time.Time) *string {
		if t.IsZero() {
			return nil
		}
		s := t.UTC().Format(time.DateOnly)
		return &s
	}
	return writeJSON(w, usageReport{Type: "usage_report", From: day(from), To: day(to), UsageReport: rep})
}

// estimate is POST /v1/messages/batches/estimate (extension): a create body
// read with the same limits as a create, priced before anything runs.
func (a *API) estimate(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength > a.svc.Config().MaxBodyBytes {
		return &batch.Error{Kind: batch.KindTooLarge, Message: fmt.Sprintf("request body of %d bytes is over the %d-byte limit for a message batch", r.ContentLength, a.svc.Config().MaxBodyBytes)}
	}
	body, release, err := a.upload(w, r)
	if err != nil {
		return err
	}
	est, err := a.svc.Estimate(r.Context(), workspace(r), body)
	release()
	if err != nil {
		return err
	}
	return writeJSON(w, struct {
		Type string `json:"type"`
		*batch.Estimate
	}{"message_batch_estimate", est})
}
