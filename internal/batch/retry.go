package batch

import (
	"context"

	"github.com/batchd/batchd/internal/store"
)

// Retry creates a new batch of exactly the requests of an ended batch that
// did not succeed (errored, canceled or expired), with their custom_ids and
// params, so a user can re-run failures with one call. It is a batchd
// extension; Anthropic's API has no equivalent.
func (s *Service) Retry(ctx context.Context, workspace, id string) (*store.Batch, error) {
	src, err := s.Get(ctx, workspace, id)
	if err != nil {
		return nil, err
	}
	if src.Status != store.StatusEnded {
		return nil, invalid("message batch %s has not ended; only an ended batch can be retried", id)
	}
	if src.ArchivedAt != nil {
		return nil, invalid("message batch %s was archived; its requests are no longer stored", id)
	}
	if src.Counts.Errored+src.Counts.Canceled+src.Counts.Expired == 0 {
		return nil, invalid("message batch %s has no failed, canceled or expired requests to retry", id)
	}
	now := s.cfg.Now()
	b, err := s.store.BatchInsert(ctx, store.BatchInsertParams{
		ID:            NewID("msgbatch_"),
		Workspace:     workspace,
		Betas:         src.Betas,
		CreatedAt:     now,
		ExpiresAt:     now.Add(s.cfg.ExpireAfter),
		UploadUntil:   now.Add(s.cfg.UploadLease),
		MaxInProgress: s.cfg.MaxInProgress,
	})
	if err != nil {
		return nil, mapStore(err, id)
	}
	stop := s.holdUpload(ctx, b.Seq)
	// A retry is held to the workspace's budget as a create is.
	limit, budgeted := s.cfg.Budgets[workspace]
	var est *estimator
	if budgeted {
		est = s.newEstimator()
	}
	total, err := s.copyFailed(ctx, src.Seq, b.Seq, est)
	stop()
	if err == nil && total == 0 {
		err = invalid("message batch %s has no failed, canceled or expired requests to retry", id)
	}
	var budget *store.Budget
	if err == nil && budgeted {
		budget, err = s.budget(ctx, workspace, limit, est.result(int(total)))
	}
	return s.publish(ctx, b.Seq, total, err, budget)
}

// copyFailed copies the failed requests of batch from into batch to, in
// groups bounded by count and bytes as a create's are, so a retry of big
// requests holds one group in memory.
// est, when not nil, counts each copied request.
func (s *Service) copyFailed(ctx context.Context, from, to int64, est *estimator) (int64, error) {
	var after, total int64
	for {
		rows, err := s.store.ResultsList(ctx, store.ResultsListParams{BatchSeq: from, AfterID: after, Limit: groupRequests, MaxBytes: groupBytes, WithParams: true, SkipSucceeded: true})
		if err != nil {
			return 0, err
		}
		if len(rows) == 0 {
			return total, nil
		}
		reqs := make([]store.NewRequest, len(rows))
		for i, r := range rows {
			model := paramsModel(r.Params)
			reqs[i] = store.NewRequest{CustomID: r.CustomID, Params: r.Params, Model: model, Backend: s.cfg.Route(model)}
			if est != nil {
				est.add(reqs[i])
			}
		}
		if err := s.store.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: to, Requests: reqs}); err != nil {
			return 0, err
		}
		total += int64(len(rows))
		after = rows[len(rows)-1].ID
	}
}
