// The verbs below are written from store.Store one for one (TestEveryVerbCanFail
// fails when a verb is missing): each checks for a fault, then delegates.

package faultstore

import (
	"context"
	"time"

	"github.com/batchd/batchd/internal/cost"
	"github.com/batchd/batchd/internal/store"
)

// BatchInsert fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchInsert(ctx context.Context, p store.BatchInsertParams) (*store.Batch, error) {
	if err := s.check("BatchInsert"); err != nil {
		return nil, err
	}
	return s.Store.BatchInsert(ctx, p)
}

// RequestsInsert fails when a fault is set for it, else calls the wrapped store.
func (s *Store) RequestsInsert(ctx context.Context, p store.RequestsInsertParams) error {
	if err := s.check("RequestsInsert"); err != nil {
		return err
	}
	return s.Store.RequestsInsert(ctx, p)
}

// BatchPublish fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchPublish(ctx context.Context, p store.BatchPublishParams) (*store.Batch, error) {
	if err := s.check("BatchPublish"); err != nil {
		return nil, err
	}
	return s.Store.BatchPublish(ctx, p)
}

// BatchDiscard fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchDiscard(ctx context.Context, batchSeq int64) error {
	if err := s.check("BatchDiscard"); err != nil {
		return err
	}
	return s.Store.BatchDiscard(ctx, batchSeq)
}

// BatchesDiscardStale fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchesDiscardStale(ctx context.Context, p store.BatchesDiscardStaleParams) (int, error) {
	if err := s.check("BatchesDiscardStale"); err != nil {
		return 0, err
	}
	return s.Store.BatchesDiscardStale(ctx, p)
}

// BatchUploadRenew fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchUploadRenew(ctx context.Context, p store.BatchUploadRenewParams) error {
	if err := s.check("BatchUploadRenew"); err != nil {
		return err
	}
	return s.Store.BatchUploadRenew(ctx, p)
}

// BatchGet fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchGet(ctx context.Context, p store.BatchGetParams) (*store.Batch, error) {
	if err := s.check("BatchGet"); err != nil {
		return nil, err
	}
	return s.Store.BatchGet(ctx, p)
}

// BatchList fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchList(ctx context.Context, p store.BatchListParams) (*store.BatchPage, error) {
	if err := s.check("BatchList"); err != nil {
		return nil, err
	}
	return s.Store.BatchList(ctx, p)
}

// BatchCancel fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchCancel(ctx context.Context, p store.BatchCancelParams) (*store.BatchChange, error) {
	if err := s.check("BatchCancel"); err != nil {
		return nil, err
	}
	return s.Store.BatchCancel(ctx, p)
}

// BatchDelete fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchDelete(ctx context.Context, p store.BatchGetParams) error {
	if err := s.check("BatchDelete"); err != nil {
		return err
	}
	return s.Store.BatchDelete(ctx, p)
}

// BatchesExpire fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchesExpire(ctx context.Context, p store.BatchesExpireParams) ([]*store.BatchChange, error) {
	if err := s.check("BatchesExpire"); err != nil {
		return nil, err
	}
	return s.Store.BatchesExpire(ctx, p)
}

// BatchesArchive fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchesArchive(ctx context.Context, p store.BatchesArchiveParams) (int, error) {
	if err := s.check("BatchesArchive"); err != nil {
		return 0, err
	}
	return s.Store.BatchesArchive(ctx, p)
}

// BatchNextExpiry fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchNextExpiry(ctx context.Context) (time.Time, error) {
	if err := s.check("BatchNextExpiry"); err != nil {
		return time.Time{}, err
	}
	return s.Store.BatchNextExpiry(ctx)
}

// RequestsClaim fails when a fault is set for it, else calls the wrapped store.
func (s *Store) RequestsClaim(ctx context.Context, p store.RequestsClaimParams) ([]store.ClaimedRequest, error) {
	if err := s.check("RequestsClaim"); err != nil {
		return nil, err
	}
	return s.Store.RequestsClaim(ctx, p)
}

// RequestsComplete fails when a fault is set for it, else calls the wrapped store.
func (s *Store) RequestsComplete(ctx context.Context, p store.RequestsCompleteParams) ([]*store.BatchChange, error) {
	if err := s.check("RequestsComplete"); err != nil {
		return nil, err
	}
	return s.Store.RequestsComplete(ctx, p)
}

// RequestsCompleteAndClaim fails when a fault is set for it, else calls the wrapped store.
func (s *Store) RequestsCompleteAndClaim(ctx context.Context, c store.RequestsCompleteParams, p store.RequestsClaimParams) ([]*store.BatchChange, []store.ClaimedRequest, error) {
	if err := s.check("RequestsCompleteAndClaim"); err != nil {
		return nil, nil, err
	}
	return s.Store.RequestsCompleteAndClaim(ctx, c, p)
}

// RequestsHeartbeat fails when a fault is set for it, else calls the wrapped store.
func (s *Store) RequestsHeartbeat(ctx context.Context, p store.RequestsHeartbeatParams) error {
	if err := s.check("RequestsHeartbeat"); err != nil {
		return err
	}
	return s.Store.RequestsHeartbeat(ctx, p)
}

// RequestsRescue fails when a fault is set for it, else calls the wrapped store.
func (s *Store) RequestsRescue(ctx context.Context, p store.RequestsRescueParams) ([]*store.BatchChange, error) {
	if err := s.check("RequestsRescue"); err != nil {
		return nil, err
	}
	return s.Store.RequestsRescue(ctx, p)
}

// RequestNextDue fails when a fault is set for it, else calls the wrapped store.
func (s *Store) RequestNextDue(ctx context.Context, backend string) (time.Time, error) {
	if err := s.check("RequestNextDue"); err != nil {
		return time.Time{}, err
	}
	return s.Store.RequestNextDue(ctx, backend)
}

// BatchesCancelingHeld fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchesCancelingHeld(ctx context.Context, p store.BatchesCancelingHeldParams) ([]int64, error) {
	if err := s.check("BatchesCancelingHeld"); err != nil {
		return nil, err
	}
	return s.Store.BatchesCancelingHeld(ctx, p)
}

// RequestsReroute fails when a fault is set for it, else calls the wrapped store.
func (s *Store) RequestsReroute(ctx context.Context, route func(model string) string) (int, error) {
	if err := s.check("RequestsReroute"); err != nil {
		return 0, err
	}
	return s.Store.RequestsReroute(ctx, route)
}

// RequestsPurge fails when a fault is set for it, else calls the wrapped store.
func (s *Store) RequestsPurge(ctx context.Context, p store.RequestsPurgeParams) (int, error) {
	if err := s.check("RequestsPurge"); err != nil {
		return 0, err
	}
	return s.Store.RequestsPurge(ctx, p)
}

// ResultsList fails when a fault is set for it, else calls the wrapped store.
func (s *Store) ResultsList(ctx context.Context, p store.ResultsListParams) ([]store.Result, error) {
	if err := s.check("ResultsList"); err != nil {
		return nil, err
	}
	return s.Store.ResultsList(ctx, p)
}

// UpstreamBatchInsert fails when a fault is set for it, else calls the wrapped store.
func (s *Store) UpstreamBatchInsert(ctx context.Context, p store.UpstreamBatchInsertParams) (*store.UpstreamBatch, error) {
	if err := s.check("UpstreamBatchInsert"); err != nil {
		return nil, err
	}
	return s.Store.UpstreamBatchInsert(ctx, p)
}

// UpstreamBatchStart fails when a fault is set for it, else calls the wrapped store.
func (s *Store) UpstreamBatchStart(ctx context.Context, p store.UpstreamBatchStartParams) error {
	if err := s.check("UpstreamBatchStart"); err != nil {
		return err
	}
	return s.Store.UpstreamBatchStart(ctx, p)
}

// UpstreamBatchesList fails when a fault is set for it, else calls the wrapped store.
func (s *Store) UpstreamBatchesList(ctx context.Context, backend string) ([]*store.UpstreamBatch, error) {
	if err := s.check("UpstreamBatchesList"); err != nil {
		return nil, err
	}
	return s.Store.UpstreamBatchesList(ctx, backend)
}

// UpstreamBatchRequests fails when a fault is set for it, else calls the wrapped store.
func (s *Store) UpstreamBatchRequests(ctx context.Context, id int64) ([]store.ClaimedRequest, error) {
	if err := s.check("UpstreamBatchRequests"); err != nil {
		return nil, err
	}
	return s.Store.UpstreamBatchRequests(ctx, id)
}

// UpstreamBatchAbandon fails when a fault is set for it, else calls the wrapped store.
func (s *Store) UpstreamBatchAbandon(ctx context.Context, p store.UpstreamBatchAbandonParams) ([]*store.BatchChange, error) {
	if err := s.check("UpstreamBatchAbandon"); err != nil {
		return nil, err
	}
	return s.Store.UpstreamBatchAbandon(ctx, p)
}

// UpstreamBatchDelete fails when a fault is set for it, else calls the wrapped store.
func (s *Store) UpstreamBatchDelete(ctx context.Context, id int64) error {
	if err := s.check("UpstreamBatchDelete"); err != nil {
		return err
	}
	return s.Store.UpstreamBatchDelete(ctx, id)
}

// EventsList fails when a fault is set for it, else calls the wrapped store.
func (s *Store) EventsList(ctx context.Context, p store.EventsListParams) ([]*store.Event, error) {
	if err := s.check("EventsList"); err != nil {
		return nil, err
	}
	return s.Store.EventsList(ctx, p)
}

// EventsLast fails when a fault is set for it, else calls the wrapped store.
func (s *Store) EventsLast(ctx context.Context, workspace string) (int64, error) {
	if err := s.check("EventsLast"); err != nil {
		return 0, err
	}
	return s.Store.EventsLast(ctx, workspace)
}

// EventTestInsert fails when a fault is set for it, else calls the wrapped store.
func (s *Store) EventTestInsert(ctx context.Context, workspace, endpointID string, now time.Time) (string, int64, error) {
	if err := s.check("EventTestInsert"); err != nil {
		return "", 0, err
	}
	return s.Store.EventTestInsert(ctx, workspace, endpointID, now)
}

// WebhookEndpointCreate fails when a fault is set for it, else calls the wrapped store.
func (s *Store) WebhookEndpointCreate(ctx context.Context, e *store.WebhookEndpoint) error {
	if err := s.check("WebhookEndpointCreate"); err != nil {
		return err
	}
	return s.Store.WebhookEndpointCreate(ctx, e)
}

// WebhookEndpointGet fails when a fault is set for it, else calls the wrapped store.
func (s *Store) WebhookEndpointGet(ctx context.Context, workspace, id string) (*store.WebhookEndpoint, error) {
	if err := s.check("WebhookEndpointGet"); err != nil {
		return nil, err
	}
	return s.Store.WebhookEndpointGet(ctx, workspace, id)
}

// WebhookEndpointList fails when a fault is set for it, else calls the wrapped store.
func (s *Store) WebhookEndpointList(ctx context.Context, workspace string) ([]*store.WebhookEndpoint, error) {
	if err := s.check("WebhookEndpointList"); err != nil {
		return nil, err
	}
	return s.Store.WebhookEndpointList(ctx, workspace)
}

// WebhookEndpointUpdate fails when a fault is set for it, else calls the wrapped store.
func (s *Store) WebhookEndpointUpdate(ctx context.Context, p store.WebhookEndpointUpdateParams) (*store.WebhookEndpoint, error) {
	if err := s.check("WebhookEndpointUpdate"); err != nil {
		return nil, err
	}
	return s.Store.WebhookEndpointUpdate(ctx, p)
}

// WebhookEndpointDelete fails when a fault is set for it, else calls the wrapped store.
func (s *Store) WebhookEndpointDelete(ctx context.Context, workspace, id string) error {
	if err := s.check("WebhookEndpointDelete"); err != nil {
		return err
	}
	return s.Store.WebhookEndpointDelete(ctx, workspace, id)
}

// WebhookKeyCheck fails when a fault is set for it, else calls the wrapped store.
func (s *Store) WebhookKeyCheck(ctx context.Context, check string) ([]string, error) {
	if err := s.check("WebhookKeyCheck"); err != nil {
		return nil, err
	}
	return s.Store.WebhookKeyCheck(ctx, check)
}

// DeliveriesPending fails when a fault is set for it, else calls the wrapped store.
func (s *Store) DeliveriesPending(ctx context.Context, endpointID string) (int, error) {
	if err := s.check("DeliveriesPending"); err != nil {
		return 0, err
	}
	return s.Store.DeliveriesPending(ctx, endpointID)
}

// DeliveriesClaim fails when a fault is set for it, else calls the wrapped store.
func (s *Store) DeliveriesClaim(ctx context.Context, p store.DeliveriesClaimParams) ([]*store.Delivery, error) {
	if err := s.check("DeliveriesClaim"); err != nil {
		return nil, err
	}
	return s.Store.DeliveriesClaim(ctx, p)
}

// DeliveryRecord fails when a fault is set for it, else calls the wrapped store.
func (s *Store) DeliveryRecord(ctx context.Context, p store.DeliveryRecordParams) error {
	if err := s.check("DeliveryRecord"); err != nil {
		return err
	}
	return s.Store.DeliveryRecord(ctx, p)
}

// DeliveryNextDue fails when a fault is set for it, else calls the wrapped store.
func (s *Store) DeliveryNextDue(ctx context.Context) (time.Time, error) {
	if err := s.check("DeliveryNextDue"); err != nil {
		return time.Time{}, err
	}
	return s.Store.DeliveryNextDue(ctx)
}

// DeliveryAttempts fails when a fault is set for it, else calls the wrapped store.
func (s *Store) DeliveryAttempts(ctx context.Context, workspace, endpointID string, limit int) ([]*store.Attempt, error) {
	if err := s.check("DeliveryAttempts"); err != nil {
		return nil, err
	}
	return s.Store.DeliveryAttempts(ctx, workspace, endpointID, limit)
}

// DeliveryResend fails when a fault is set for it, else calls the wrapped store.
func (s *Store) DeliveryResend(ctx context.Context, workspace string, deliveryID int64, now time.Time) error {
	if err := s.check("DeliveryResend"); err != nil {
		return err
	}
	return s.Store.DeliveryResend(ctx, workspace, deliveryID, now)
}

// DeliveriesRecover fails when a fault is set for it, else calls the wrapped store.
func (s *Store) DeliveriesRecover(ctx context.Context, workspace, endpointID string, since, now time.Time) (int, error) {
	if err := s.check("DeliveriesRecover"); err != nil {
		return 0, err
	}
	return s.Store.DeliveriesRecover(ctx, workspace, endpointID, since, now)
}

// IdempotencyReserve fails when a fault is set for it, else calls the wrapped store.
func (s *Store) IdempotencyReserve(ctx context.Context, p store.IdempotencyReserveParams) (*store.Idempotency, error) {
	if err := s.check("IdempotencyReserve"); err != nil {
		return nil, err
	}
	return s.Store.IdempotencyReserve(ctx, p)
}

// IdempotencyRecord fails when a fault is set for it, else calls the wrapped store.
func (s *Store) IdempotencyRecord(ctx context.Context, p store.IdempotencyRecordParams) error {
	if err := s.check("IdempotencyRecord"); err != nil {
		return err
	}
	return s.Store.IdempotencyRecord(ctx, p)
}

// IdempotencyRelease fails when a fault is set for it, else calls the wrapped store.
func (s *Store) IdempotencyRelease(ctx context.Context, workspace, key string) error {
	if err := s.check("IdempotencyRelease"); err != nil {
		return err
	}
	return s.Store.IdempotencyRelease(ctx, workspace, key)
}

// KeyCreate fails when a fault is set for it, else calls the wrapped store.
func (s *Store) KeyCreate(ctx context.Context, p store.KeyCreateParams) (*store.Key, error) {
	if err := s.check("KeyCreate"); err != nil {
		return nil, err
	}
	return s.Store.KeyCreate(ctx, p)
}

// KeyList fails when a fault is set for it, else calls the wrapped store.
func (s *Store) KeyList(ctx context.Context) ([]*store.Key, error) {
	if err := s.check("KeyList"); err != nil {
		return nil, err
	}
	return s.Store.KeyList(ctx)
}

// KeyRevoke fails when a fault is set for it, else calls the wrapped store.
func (s *Store) KeyRevoke(ctx context.Context, idOrPrefix string, now time.Time) (*store.Key, error) {
	if err := s.check("KeyRevoke"); err != nil {
		return nil, err
	}
	return s.Store.KeyRevoke(ctx, idOrPrefix, now)
}

// KeyLookup fails when a fault is set for it, else calls the wrapped store.
func (s *Store) KeyLookup(ctx context.Context, hash string) (string, error) {
	if err := s.check("KeyLookup"); err != nil {
		return "", err
	}
	return s.Store.KeyLookup(ctx, hash)
}

// KeysActive fails when a fault is set for it, else calls the wrapped store.
func (s *Store) KeysActive(ctx context.Context) (bool, error) {
	if err := s.check("KeysActive"); err != nil {
		return false, err
	}
	return s.Store.KeysActive(ctx)
}

// UpstreamBatchesHeartbeat fails when a fault is set for it, else calls the wrapped store.
func (s *Store) UpstreamBatchesHeartbeat(ctx context.Context, p store.UpstreamBatchesHeartbeatParams) error {
	if err := s.check("UpstreamBatchesHeartbeat"); err != nil {
		return err
	}
	return s.Store.UpstreamBatchesHeartbeat(ctx, p)
}

// UpstreamBatchAdopt fails when a fault is set for it, else calls the wrapped store.
func (s *Store) UpstreamBatchAdopt(ctx context.Context, p store.UpstreamBatchAdoptParams) error {
	if err := s.check("UpstreamBatchAdopt"); err != nil {
		return err
	}
	return s.Store.UpstreamBatchAdopt(ctx, p)
}

// LeaderAcquire fails when a fault is set for it, else calls the wrapped store.
func (s *Store) LeaderAcquire(ctx context.Context, p store.LeaderAcquireParams) (*store.Leader, error) {
	if err := s.check("LeaderAcquire"); err != nil {
		return nil, err
	}
	return s.Store.LeaderAcquire(ctx, p)
}

// LeaderRelease fails when a fault is set for it, else calls the wrapped store.
func (s *Store) LeaderRelease(ctx context.Context, l store.Lead) error {
	if err := s.check("LeaderRelease"); err != nil {
		return err
	}
	return s.Store.LeaderRelease(ctx, l)
}

// DeliveriesHeartbeat fails when a fault is set for it, else calls the wrapped store.
func (s *Store) DeliveriesHeartbeat(ctx context.Context, p store.DeliveriesHeartbeatParams) error {
	if err := s.check("DeliveriesHeartbeat"); err != nil {
		return err
	}
	return s.Store.DeliveriesHeartbeat(ctx, p)
}

// LimitSharesRenew fails when a fault is set for it, else calls the wrapped store.
func (s *Store) LimitSharesRenew(ctx context.Context, p store.LimitSharesRenewParams) ([]store.Amounts, error) {
	if err := s.check("LimitSharesRenew"); err != nil {
		return nil, err
	}
	return s.Store.LimitSharesRenew(ctx, p)
}

// LimitSharesRelease fails when a fault is set for it, else calls the wrapped store.
func (s *Store) LimitSharesRelease(ctx context.Context, owner string) error {
	if err := s.check("LimitSharesRelease"); err != nil {
		return err
	}
	return s.Store.LimitSharesRelease(ctx, owner)
}

// Stats fails when a fault is set for it, else calls the wrapped store.
func (s *Store) Stats(ctx context.Context) (*store.Stats, error) {
	if err := s.check("Stats"); err != nil {
		return nil, err
	}
	return s.Store.Stats(ctx)
}

// BatchUsage fails when a fault is set for it, else calls the wrapped store.
func (s *Store) BatchUsage(ctx context.Context, p store.BatchGetParams) (map[string]cost.Tokens, error) {
	if err := s.check("BatchUsage"); err != nil {
		return nil, err
	}
	return s.Store.BatchUsage(ctx, p)
}

// UsageList fails when a fault is set for it, else calls the wrapped store.
func (s *Store) UsageList(ctx context.Context, p store.UsageListParams) ([]store.UsageRow, error) {
	if err := s.check("UsageList"); err != nil {
		return nil, err
	}
	return s.Store.UsageList(ctx, p)
}
