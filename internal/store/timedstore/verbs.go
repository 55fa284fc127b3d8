// The verbs below are written from store.Store one for one, as faultstore's
// are (TestEveryVerbIsTimed fails when a verb is missing): each observes its
// time, then returns what the wrapped store did.

package timedstore

import (
	"context"
	"time"

	"github.com/batchd/batchd/internal/cost"
	"github.com/batchd/batchd/internal/store"
)

// BatchInsert times the wrapped store's BatchInsert.
func (s *Store) BatchInsert(ctx context.Context, p store.BatchInsertParams) (*store.Batch, error) {
	defer s.observe("BatchInsert", time.Now())
	return s.Store.BatchInsert(ctx, p)
}

// RequestsInsert times the wrapped store's RequestsInsert.
func (s *Store) RequestsInsert(ctx context.Context, p store.RequestsInsertParams) error {
	defer s.observe("RequestsInsert", time.Now())
	return s.Store.RequestsInsert(ctx, p)
}

// BatchPublish times the wrapped store's BatchPublish.
func (s *Store) BatchPublish(ctx context.Context, p store.BatchPublishParams) (*store.Batch, error) {
	defer s.observe("BatchPublish", time.Now())
	return s.Store.BatchPublish(ctx, p)
}

// BatchDiscard times the wrapped store's BatchDiscard.
func (s *Store) BatchDiscard(ctx context.Context, batchSeq int64) error {
	defer s.observe("BatchDiscard", time.Now())
	return s.Store.BatchDiscard(ctx, batchSeq)
}

// BatchesDiscardStale times the wrapped store's BatchesDiscardStale.
func (s *Store) BatchesDiscardStale(ctx context.Context, p store.BatchesDiscardStaleParams) (int, error) {
	defer s.observe("BatchesDiscardStale", time.Now())
	return s.Store.BatchesDiscardStale(ctx, p)
}

// BatchUploadRenew times the wrapped store's BatchUploadRenew.
func (s *Store) BatchUploadRenew(ctx context.Context, p store.BatchUploadRenewParams) error {
	defer s.observe("BatchUploadRenew", time.Now())
	return s.Store.BatchUploadRenew(ctx, p)
}

// BatchGet times the wrapped store's BatchGet.
func (s *Store) BatchGet(ctx context.Context, p store.BatchGetParams) (*store.Batch, error) {
	defer s.observe("BatchGet", time.Now())
	return s.Store.BatchGet(ctx, p)
}

// BatchList times the wrapped store's BatchList.
func (s *Store) BatchList(ctx context.Context, p store.BatchListParams) (*store.BatchPage, error) {
	defer s.observe("BatchList", time.Now())
	return s.Store.BatchList(ctx, p)
}

// BatchCancel times the wrapped store's BatchCancel.
func (s *Store) BatchCancel(ctx context.Context, p store.BatchCancelParams) (*store.BatchChange, error) {
	defer s.observe("BatchCancel", time.Now())
	return s.Store.BatchCancel(ctx, p)
}

// BatchDelete times the wrapped store's BatchDelete.
func (s *Store) BatchDelete(ctx context.Context, p store.BatchGetParams) error {
	defer s.observe("BatchDelete", time.Now())
	return s.Store.BatchDelete(ctx, p)
}

// BatchesExpire times the wrapped store's BatchesExpire.
func (s *Store) BatchesExpire(ctx context.Context, p store.BatchesExpireParams) ([]*store.BatchChange, error) {
	defer s.observe("BatchesExpire", time.Now())
	return s.Store.BatchesExpire(ctx, p)
}

// BatchesArchive times the wrapped store's BatchesArchive.
func (s *Store) BatchesArchive(ctx context.Context, p store.BatchesArchiveParams) (int, error) {
	defer s.observe("BatchesArchive", time.Now())
	return s.Store.BatchesArchive(ctx, p)
}

// BatchNextExpiry times the wrapped store's BatchNextExpiry.
func (s *Store) BatchNextExpiry(ctx context.Context) (time.Time, error) {
	defer s.observe("BatchNextExpiry", time.Now())
	return s.Store.BatchNextExpiry(ctx)
}

// RequestsClaim times the wrapped store's RequestsClaim.
func (s *Store) RequestsClaim(ctx context.Context, p store.RequestsClaimParams) ([]store.ClaimedRequest, error) {
	defer s.observe("RequestsClaim", time.Now())
	return s.Store.RequestsClaim(ctx, p)
}

// RequestsComplete times the wrapped store's RequestsComplete.
func (s *Store) RequestsComplete(ctx context.Context, p store.RequestsCompleteParams) ([]*store.BatchChange, error) {
	defer s.observe("RequestsComplete", time.Now())
	return s.Store.RequestsComplete(ctx, p)
}

// RequestsCompleteAndClaim times the wrapped store's RequestsCompleteAndClaim.
func (s *Store) RequestsCompleteAndClaim(ctx context.Context, c store.RequestsCompleteParams, p store.RequestsClaimParams) ([]*store.BatchChange, []store.ClaimedRequest, error) {
	defer s.observe("RequestsCompleteAndClaim", time.Now())
	return s.Store.RequestsCompleteAndClaim(ctx, c, p)
}

// RequestsHeartbeat times the wrapped store's RequestsHeartbeat.
func (s *Store) RequestsHeartbeat(ctx context.Context, p store.RequestsHeartbeatParams) error {
	defer s.observe("RequestsHeartbeat", time.Now())
	return s.Store.RequestsHeartbeat(ctx, p)
}

// RequestsRescue times the wrapped store's RequestsRescue.
func (s *Store) RequestsRescue(ctx context.Context, p store.RequestsRescueParams) ([]*store.BatchChange, error) {
	defer s.observe("RequestsRescue", time.Now())
	return s.Store.RequestsRescue(ctx, p)
}

// RequestNextDue times the wrapped store's RequestNextDue.
func (s *Store) RequestNextDue(ctx context.Context, backend string) (time.Time, error) {
	defer s.observe("RequestNextDue", time.Now())
	return s.Store.RequestNextDue(ctx, backend)
}

// BatchesCancelingHeld times the wrapped store's BatchesCancelingHeld.
func (s *Store) BatchesCancelingHeld(ctx context.Context, p store.BatchesCancelingHeldParams) ([]int64, error) {
	defer s.observe("BatchesCancelingHeld", time.Now())
	return s.Store.BatchesCancelingHeld(ctx, p)
}

// RequestsReroute times the wrapped store's RequestsReroute.
func (s *Store) RequestsReroute(ctx context.Context, route func(model string) string) (int, error) {
	defer s.observe("RequestsReroute", time.Now())
	return s.Store.RequestsReroute(ctx, route)
}

// RequestsPurge times the wrapped store's RequestsPurge.
func (s *Store) RequestsPurge(ctx context.Context, p store.RequestsPurgeParams) (int, error) {
	defer s.observe("RequestsPurge", time.Now())
	return s.Store.RequestsPurge(ctx, p)
}

// ResultsList times the wrapped store's ResultsList.
func (s *Store) ResultsList(ctx context.Context, p store.ResultsListParams) ([]store.Result, error) {
	defer s.observe("ResultsList", time.Now())
	return s.Store.ResultsList(ctx, p)
}

// UpstreamBatchInsert times the wrapped store's UpstreamBatchInsert.
func (s *Store) UpstreamBatchInsert(ctx context.Context, p store.UpstreamBatchInsertParams) (*store.UpstreamBatch, error) {
	defer s.observe("UpstreamBatchInsert", time.Now())
	return s.Store.UpstreamBatchInsert(ctx, p)
}

// UpstreamBatchStart times the wrapped store's UpstreamBatchStart.
func (s *Store) UpstreamBatchStart(ctx context.Context, p store.UpstreamBatchStartParams) error {
	defer s.observe("UpstreamBatchStart", time.Now())
	return s.Store.UpstreamBatchStart(ctx, p)
}

// UpstreamBatchesList times the wrapped store's UpstreamBatchesList.
func (s *Store) UpstreamBatchesList(ctx context.Context, backend string) ([]*store.UpstreamBatch, error) {
	defer s.observe("UpstreamBatchesList", time.Now())
	return s.Store.UpstreamBatchesList(ctx, backend)
}

// UpstreamBatchRequests times the wrapped store's UpstreamBatchRequests.
func (s *Store) UpstreamBatchRequests(ctx context.Context, id int64) ([]store.ClaimedRequest, error) {
	defer s.observe("UpstreamBatchRequests", time.Now())
	return s.Store.UpstreamBatchRequests(ctx, id)
}

// UpstreamBatchAbandon times the wrapped store's UpstreamBatchAbandon.
func (s *Store) UpstreamBatchAbandon(ctx context.Context, p store.UpstreamBatchAbandonParams) ([]*store.BatchChange, error) {
	defer s.observe("UpstreamBatchAbandon", time.Now())
	return s.Store.UpstreamBatchAbandon(ctx, p)
}

// UpstreamBatchDelete times the wrapped store's UpstreamBatchDelete.
func (s *Store) UpstreamBatchDelete(ctx context.Context, id int64) error {
	defer s.observe("UpstreamBatchDelete", time.Now())
	return s.Store.UpstreamBatchDelete(ctx, id)
}

// EventsList times the wrapped store's EventsList.
func (s *Store) EventsList(ctx context.Context, p store.EventsListParams) ([]*store.Event, error) {
	defer s.observe("EventsList", time.Now())
	return s.Store.EventsList(ctx, p)
}

// EventsLast times the wrapped store's EventsLast.
func (s *Store) EventsLast(ctx context.Context, workspace string) (int64, error) {
	defer s.observe("EventsLast", time.Now())
	return s.Store.EventsLast(ctx, workspace)
}

// EventTestInsert times the wrapped store's EventTestInsert.
func (s *Store) EventTestInsert(ctx context.Context, workspace, endpointID string, now time.Time) (string, int64, error) {
	defer s.observe("EventTestInsert", time.Now())
	return s.Store.EventTestInsert(ctx, workspace, endpointID, now)
}

// WebhookEndpointCreate times the wrapped store's WebhookEndpointCreate.
func (s *Store) WebhookEndpointCreate(ctx context.Context, e *store.WebhookEndpoint) error {
	defer s.observe("WebhookEndpointCreate", time.Now())
	return s.Store.WebhookEndpointCreate(ctx, e)
}

// WebhookEndpointGet times the wrapped store's WebhookEndpointGet.
func (s *Store) WebhookEndpointGet(ctx context.Context, workspace, id string) (*store.WebhookEndpoint, error) {
	defer s.observe("WebhookEndpointGet", time.Now())
	return s.Store.WebhookEndpointGet(ctx, workspace, id)
}

// WebhookEndpointList times the wrapped store's WebhookEndpointList.
func (s *Store) WebhookEndpointList(ctx context.Context, workspace string) ([]*store.WebhookEndpoint, error) {
	defer s.observe("WebhookEndpointList", time.Now())
	return s.Store.WebhookEndpointList(ctx, workspace)
}

// WebhookEndpointUpdate times the wrapped store's WebhookEndpointUpdate.
func (s *Store) WebhookEndpointUpdate(ctx context.Context, p store.WebhookEndpointUpdateParams) (*store.WebhookEndpoint, error) {
	defer s.observe("WebhookEndpointUpdate", time.Now())
	return s.Store.WebhookEndpointUpdate(ctx, p)
}

// WebhookEndpointDelete times the wrapped store's WebhookEndpointDelete.
func (s *Store) WebhookEndpointDelete(ctx context.Context, workspace, id string) error {
	defer s.observe("WebhookEndpointDelete", time.Now())
	return s.Store.WebhookEndpointDelete(ctx, workspace, id)
}

// WebhookKeyCheck times the wrapped store's WebhookKeyCheck.
func (s *Store) WebhookKeyCheck(ctx context.Context, check string) ([]string, error) {
	defer s.observe("WebhookKeyCheck", time.Now())
	return s.Store.WebhookKeyCheck(ctx, check)
}

// DeliveriesPending times the wrapped store's DeliveriesPending.
func (s *Store) DeliveriesPending(ctx context.Context, endpointID string) (int, error) {
	defer s.observe("DeliveriesPending", time.Now())
	return s.Store.DeliveriesPending(ctx, endpointID)
}

// DeliveriesClaim times the wrapped store's DeliveriesClaim.
func (s *Store) DeliveriesClaim(ctx context.Context, p store.DeliveriesClaimParams) ([]*store.Delivery, error) {
	defer s.observe("DeliveriesClaim", time.Now())
	return s.Store.DeliveriesClaim(ctx, p)
}

// DeliveryRecord times the wrapped store's DeliveryRecord.
func (s *Store) DeliveryRecord(ctx context.Context, p store.DeliveryRecordParams) error {
	defer s.observe("DeliveryRecord", time.Now())
	return s.Store.DeliveryRecord(ctx, p)
}

// DeliveryNextDue times the wrapped store's DeliveryNextDue.
func (s *Store) DeliveryNextDue(ctx context.Context) (time.Time, error) {
	defer s.observe("DeliveryNextDue", time.Now())
	return s.Store.DeliveryNextDue(ctx)
}

// DeliveryAttempts times the wrapped store's DeliveryAttempts.
func (s *Store) DeliveryAttempts(ctx context.Context, workspace, endpointID string, limit int) ([]*store.Attempt, error) {
	defer s.observe("DeliveryAttempts", time.Now())
	return s.Store.DeliveryAttempts(ctx, workspace, endpointID, limit)
}

// DeliveryResend times the wrapped store's DeliveryResend.
func (s *Store) DeliveryResend(ctx context.Context, workspace string, deliveryID int64, now time.Time) error {
	defer s.observe("DeliveryResend", time.Now())
	return s.Store.DeliveryResend(ctx, workspace, deliveryID, now)
}

// DeliveriesRecover times the wrapped store's DeliveriesRecover.
func (s *Store) DeliveriesRecover(ctx context.Context, workspace, endpointID string, since, now time.Time) (int, error) {
	defer s.observe("DeliveriesRecover", time.Now())
	return s.Store.DeliveriesRecover(ctx, workspace, endpointID, since, now)
}

// IdempotencyReserve times the wrapped store's IdempotencyReserve.
func (s *Store) IdempotencyReserve(ctx context.Context, p store.IdempotencyReserveParams) (*store.Idempotency, error) {
	defer s.observe("IdempotencyReserve", time.Now())
	return s.Store.IdempotencyReserve(ctx, p)
}

// IdempotencyRecord times the wrapped store's IdempotencyRecord.
func (s *Store) IdempotencyRecord(ctx context.Context, p store.IdempotencyRecordParams) error {
	defer s.observe("IdempotencyRecord", time.Now())
	return s.Store.IdempotencyRecord(ctx, p)
}

// IdempotencyRelease times the wrapped store's IdempotencyRelease.
func (s *Store) IdempotencyRelease(ctx context.Context, workspace, key string) error {
	defer s.observe("IdempotencyRelease", time.Now())
	return s.Store.IdempotencyRelease(ctx, workspace, key)
}

// KeyCreate times the wrapped store's KeyCreate.
func (s *Store) KeyCreate(ctx context.Context, p store.KeyCreateParams) (*store.Key, error) {
	defer s.observe("KeyCreate", time.Now())
	return s.Store.KeyCreate(ctx, p)
}

// KeyList times the wrapped store's KeyList.
func (s *Store) KeyList(ctx context.Context) ([]*store.Key, error) {
	defer s.observe("KeyList", time.Now())
	return s.Store.KeyList(ctx)
}

// KeyRevoke times the wrapped store's KeyRevoke.
func (s *Store) KeyRevoke(ctx context.Context, idOrPrefix string, now time.Time) (*store.Key, error) {
	defer s.observe("KeyRevoke", time.Now())
	return s.Store.KeyRevoke(ctx, idOrPrefix, now)
}

// KeyLookup times the wrapped store's KeyLookup.
func (s *Store) KeyLookup(ctx context.Context, hash string) (string, error) {
	defer s.observe("KeyLookup", time.Now())
	return s.Store.KeyLookup(ctx, hash)
}

// KeysActive times the wrapped store's KeysActive.
func (s *Store) KeysActive(ctx context.Context) (bool, error) {
	defer s.observe("KeysActive", time.Now())
	return s.Store.KeysActive(ctx)
}

// UpstreamBatchesHeartbeat times the wrapped store's UpstreamBatchesHeartbeat.
func (s *Store) UpstreamBatchesHeartbeat(ctx context.Context, p store.UpstreamBatchesHeartbeatParams) error {
	defer s.observe("UpstreamBatchesHeartbeat", time.Now())
	return s.Store.UpstreamBatchesHeartbeat(ctx, p)
}

// UpstreamBatchAdopt times the wrapped store's UpstreamBatchAdopt.
func (s *Store) UpstreamBatchAdopt(ctx context.Context, p store.UpstreamBatchAdoptParams) error {
	defer s.observe("UpstreamBatchAdopt", time.Now())
	return s.Store.UpstreamBatchAdopt(ctx, p)
}

// LeaderAcquire times the wrapped store's LeaderAcquire.
func (s *Store) LeaderAcquire(ctx context.Context, p store.LeaderAcquireParams) (*store.Leader, error) {
	defer s.observe("LeaderAcquire", time.Now())
	return s.Store.LeaderAcquire(ctx, p)
}

// LeaderRelease times the wrapped store's LeaderRelease.
func (s *Store) LeaderRelease(ctx context.Context, l store.Lead) error {
	defer s.observe("LeaderRelease", time.Now())
	return s.Store.LeaderRelease(ctx, l)
}

// DeliveriesHeartbeat times the wrapped store's DeliveriesHeartbeat.
func (s *Store) DeliveriesHeartbeat(ctx context.Context, p store.DeliveriesHeartbeatParams) error {
	defer s.observe("DeliveriesHeartbeat", time.Now())
	return s.Store.DeliveriesHeartbeat(ctx, p)
}

// LimitSharesRenew times the wrapped store's LimitSharesRenew.
func (s *Store) LimitSharesRenew(ctx context.Context, p store.LimitSharesRenewParams) ([]store.Amounts, error) {
	defer s.observe("LimitSharesRenew", time.Now())
	return s.Store.LimitSharesRenew(ctx, p)
}

// LimitSharesRelease times the wrapped store's LimitSharesRelease.
func (s *Store) LimitSharesRelease(ctx context.Context, owner string) error {
	defer s.observe("LimitSharesRelease", time.Now())
	return s.Store.LimitSharesRelease(ctx, owner)
}

// Stats times the wrapped store's Stats.
func (s *Store) Stats(ctx context.Context) (*store.Stats, error) {
	defer s.observe("Stats", time.Now())
	return s.Store.Stats(ctx)
}

// BatchUsage times the wrapped store's BatchUsage.
func (s *Store) BatchUsage(ctx context.Context, p store.BatchGetParams) (map[string]cost.Tokens, error) {
	defer s.observe("BatchUsage", time.Now())
	return s.Store.BatchUsage(ctx, p)
}

// UsageList times the wrapped store's UsageList.
func (s *Store) UsageList(ctx context.Context, p store.UsageListParams) ([]store.UsageRow, error) {
	defer s.observe("UsageList", time.Now())
	return s.Store.UsageList(ctx, p)
}
