package postgres

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/store"
)

// The SQL of requests: insert, claim, settle, retry, rescue, reroute,
// purge, list results.
const (
	// Request ids are drawn from the sequence up front and sorted, so a
	// batch's ids grow in the order its requests were given (results list
	// in that order) even while other batches insert beside it.
	qRequestIDs = `SELECT nextval('requests_id_seq') FROM generate_series(1, $1) ORDER BY 1`

	// qClaim leases up to $4 pending requests of backend $2, due at $3, in
	// one statement. Fairness: every open batch offers its first $4 due
	// requests (read through tasks_pending, no lock), ranked within the
	// batch; the picks take rank 1 of every batch, then rank 2, and so on
	// (a random order among batches of one rank), so each batch gets an
	// equal share and a batch with fewer leaves its share to the others.
	// No row that every claim updates. Only the picks are locked, skipping
	// those another claimer holds, and re-checked as still pending.
	qClaim = `WITH open AS (
			SELECT seq, id, expires_at, betas FROM batches
			WHERE status = 'in_progress' AND expires_at > $3),
		offered AS (
			SELECT t.id, t.batch_seq, row_number() OVER (PARTITION BY t.batch_seq ORDER BY t.next_at, t.id) AS rank
			FROM open b CROSS JOIN LATERAL (
				SELECT id, batch_seq, next_at FROM tasks
				WHERE batch_seq = b.seq AND backend = $2 AND state = 0 AND next_at <= $3
				ORDER BY next_at, id LIMIT $4) t),
		picked AS (
			SELECT id, rank, random() AS tiebreak FROM offered ORDER BY rank, tiebreak LIMIT $4),
		locked AS (
			SELECT t.id, p.rank, p.tiebreak FROM tasks t JOIN picked p ON p.id = t.id
			WHERE t.state = 0 FOR UPDATE OF t SKIP LOCKED),
		claimed AS (
			UPDATE tasks t SET state = 1, lease_owner = $1, lease_expires = $5, attempts = t.attempts + 1
			FROM locked l WHERE t.id = l.id
			RETURNING t.id, t.batch_seq, t.attempts, l.rank, l.tiebreak)
		SELECT c.id, c.batch_seq, c.attempts, b.id, b.expires_at, b.betas, r.custom_id, r.params
		FROM claimed c JOIN open b ON b.seq = c.batch_seq JOIN requests r ON r.id = c.id
		ORDER BY c.rank, c.tiebreak`

	// qCancelingHeld lists the canceling batches of which owner $1 holds
	// running requests.
	qCancelingHeld = `SELECT b.seq FROM batches b WHERE b.status = 'canceling'
		AND EXISTS (SELECT 1 FROM tasks t WHERE t.lease_owner = $1 AND t.state = 1 AND t.batch_seq = b.seq)
		ORDER BY b.seq`

	qBatchStates = `SELECT seq, status, expires_at FROM batches WHERE seq = ANY($1) ORDER BY seq FOR NO KEY UPDATE`

	// qRetry: only the current attempt of the lease holder, while the
	// request is still running, goes back to pending.
	qRetry = `UPDATE tasks t SET state = 0, next_at = u.next_at, last_error = u.last_error,
			lease_owner = NULL, lease_expires = NULL, upstream = NULL
		FROM unnest($2::bigint[], $3::integer[], $4::bigint[], $5::bytea[]) AS u(id, attempt, next_at, last_error)
		WHERE t.id = u.id AND t.state = 1 AND t.lease_owner = $1 AND t.attempts = u.attempt`

	// qSettle is the guard: only the current attempt of the lease holder,
	// and only while the request is still running, settles it. The result
	// is written in the same statement, for the tasks it deleted only, and
	// from the outcome of the attempt that won: one call may also hold a
	// stale attempt of the same request (see settleOutcomes).
	qSettle = `WITH o AS (
			SELECT DISTINCT ON (id, attempt) * FROM unnest($2::bigint[], $3::integer[], $4::bigint[], $5::text[], $6::text[], $7::bytea[])
				AS u(id, attempt, batch_seq, custom_id, result_type, result)),
		won AS (
			DELETE FROM tasks t USING o
			WHERE t.id = o.id AND t.state = 1 AND t.lease_owner = $1 AND t.attempts = o.attempt
			RETURNING t.id, t.attempts),
		ins AS (
			INSERT INTO results (id, batch_seq, custom_id, result_type, result)
			SELECT o.id, o.batch_seq, o.custom_id, o.result_type, o.result FROM o JOIN won ON won.id = o.id AND won.attempts = o.attempt)
		SELECT id, attempts FROM won`

	// Requests in an upstream batch are held by its row's lease instead.
	qHeartbeat = `UPDATE tasks SET lease_expires = $1 WHERE state = 1 AND lease_owner = $2 AND upstream IS NULL`

	// Rescue: lost requests (lease lapsed)
	// not handed to an upstream batch. Those of canceling batches settle
	// canceled; the others go back to pending.
	qCancelingBatches = `SELECT seq FROM batches WHERE status = 'canceling' ORDER BY seq FOR NO KEY UPDATE`
	qRescueCanceled   = `WITH lost AS (
			DELETE FROM tasks t USING requests r, batches b
			WHERE r.id = t.id AND b.seq = t.batch_seq AND b.status = 'canceling'
			AND t.state = 1 AND t.upstream IS NULL AND t.lease_expires < $1
			RETURNING t.id, t.batch_seq, r.custom_id)
		INSERT INTO results (id, batch_seq, custom_id, result_type, result)
		SELECT id, batch_seq, custom_id, 'canceled', NULL FROM lost RETURNING batch_seq`
	qRescuePending = `UPDATE tasks SET state = 0, lease_owner = NULL, lease_expires = NULL
		WHERE state = 1 AND upstream IS NULL AND lease_expires < $1`

	// The inner min per batch is one index seek on tasks_pending.
	qNextDue = `SELECT min((SELECT min(t.next_at) FROM tasks t WHERE t.batch_seq = b.seq AND t.backend = $1 AND t.state = 0))
		FROM batches b WHERE b.status = 'in_progress'`

	qRoutes  = `SELECT DISTINCT r.model, t.backend FROM tasks t JOIN requests r ON r.id = t.id WHERE t.state = 0`
	qReroute = `UPDATE tasks t SET backend = $1 FROM requests r
		WHERE r.id = t.id AND t.state = 0 AND t.backend = $2 AND r.model = $3`

	qPurgeNext   = `SELECT batch_seq FROM purges LIMIT 1 FOR UPDATE SKIP LOCKED`
	qPurgeDone   = `DELETE FROM purges WHERE batch_seq = $1`
	qResults     = `SELECT res.id, res.custom_id, res.result_type, res.result, NULL::bytea FROM results res`
	qResultsWith = `SELECT res.id, res.custom_id, res.result_type, res.result, req.params
		FROM results res JOIN requests req ON req.id = res.id`
)

// qPurgeSteps delete a purged batch's rows, a bounded number per step.
var qPurgeSteps = []string{
	`DELETE FROM results WHERE id IN (SELECT id FROM results WHERE batch_seq = $1 LIMIT $2)`,
	`DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE batch_seq = $1 AND state = 0 LIMIT $2)`,
	`DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE batch_seq = $1 LIMIT $2)`,
}

// RequestsInsert implements store.Store. Requests and tasks go in with
// COPY, the fastest way PostgreSQL takes many rows.
func (s *Store) RequestsInsert(ctx context.Context, p store.RequestsInsertParams) error {
	if len(p.Requests) == 0 {
		return nil
	}
	return s.tx(ctx, "insert requests", func(tx pgx.Tx) error {
		ids, err := querySeqs(ctx, tx, qRequestIDs, len(p.Requests))
		if err != nil {
			return err
		}
		if len(ids) != len(p.Requests) {
			return errors.New("request ids: short read")
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"requests"}, []string{"id", "batch_seq", "custom_id", "model", "params"},
			pgx.CopyFromSlice(len(p.Requests), func(i int) ([]any, error) {
				r := p.Requests[i]
				return []any{ids[i], p.BatchSeq, r.CustomID, r.Model, []byte(r.Params)}, nil
			})); err != nil {
			return err
		}
		_, err = tx.CopyFrom(ctx, pgx.Identifier{"tasks"}, []string{"id", "batch_seq", "backend"},
			pgx.CopyFromSlice(len(p.Requests), func(i int) ([]any, error) {
				return []any{ids[i], p.BatchSeq, p.Requests[i].Backend}, nil
			}))
		return err
	})
}

// RequestsClaim implements store.Store.
func (s *Store) RequestsClaim(ctx context.Context, p store.RequestsClaimParams) ([]store.ClaimedRequest, error) {
	var out []store.ClaimedRequest
	err := s.tx(ctx, "claim requests", func(tx pgx.Tx) error {
		var err error
		out, err = claimTx(ctx, tx, p)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func claimTx(ctx context.Context, tx pgx.Tx, p store.RequestsClaimParams) ([]store.ClaimedRequest, error) {
	if p.Limit <= 0 {
		return nil, nil
	}
	rows, err := tx.Query(ctx, qClaim, p.Owner, p.Backend, micros(p.Now), p.Limit, micros(p.LeaseUntil))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.ClaimedRequest
	for rows.Next() {
		var c store.ClaimedRequest
		var expires int64
		var betas string
		if err := rows.Scan(&c.ID, &c.BatchSeq, &c.Attempt, &c.BatchID, &expires, &betas, &c.CustomID, &c.Params); err != nil {
			return nil, err
		}
		c.ExpiresAt, c.Betas = fromMicros(expires), splitList(betas)
		out = append(out, c)
	}
	return out, rows.Err()
}

// RequestsComplete implements store.Store.
func (s *Store) RequestsComplete(ctx context.Context, p store.RequestsCompleteParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	err := s.tx(ctx, "complete requests", func(tx pgx.Tx) error {
		var err error
		out, err = completeTx(ctx, tx, p)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// RequestsCompleteAndClaim implements store.Store: one transaction, one
// round of statements for both.
func (s *Store) RequestsCompleteAndClaim(ctx context.Context, c store.RequestsCompleteParams, p store.RequestsClaimParams) ([]*store.BatchChange, []store.ClaimedRequest, error) {
	var changes []*store.BatchChange
	var claimed []store.ClaimedRequest
	err := s.tx(ctx, "complete and claim requests", func(tx pgx.Tx) error {
		var err error
		if changes, err = completeTx(ctx, tx, c); err != nil {
			return err
		}
		claimed, err = claimTx(ctx, tx, p)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return changes, claimed, nil
}

func completeTx(ctx context.Context, tx pgx.Tx, p store.RequestsCompleteParams) ([]*store.BatchChange, error) {
	if len(p.Outcomes) == 0 {
		return nil, nil
	}
	// Whether each touched batch can still retry: only in_progress and
	// unexpired ones can. The rows are locked, so no cancel can slip
	// between the check and the write.
	type batchState struct {
		retryable bool
		expires   int64
	}
	var seqs []int64
	for _, o := range p.Outcomes {
		if !slices.Contains(seqs, o.BatchSeq) {
			seqs = append(seqs, o.BatchSeq)
		}
	}
	sorted := slices.Sorted(slices.Values(seqs))
	states := map[int64]batchState{}
	rows, err := tx.Query(ctx, qBatchStates, sorted)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var seq, expires int64
		var status string
		if err := rows.Scan(&seq, &status, &expires); err != nil {
			rows.Close()
			return nil, err
		}
		states[seq] = batchState{retryable: status == store.StatusInProgress, expires: expires}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}

	var retry struct {
		ids, nextAt []int64
		attempts    []int32
		errs        [][]byte
	}
	var settling []store.Outcome
	for _, o := range p.Outcomes {
		st := states[o.BatchSeq]
		if o.Retry && st.retryable && micros(o.RetryAt) < st.expires {
			retry.ids = append(retry.ids, o.RequestID)
			retry.attempts = append(retry.attempts, int32(o.Attempt))
			retry.nextAt = append(retry.nextAt, micros(o.RetryAt))
			retry.errs = append(retry.errs, []byte(o.Result))
			continue
		}
		settling = append(settling, o)
	}
	if len(retry.ids) > 0 {
		if _, err := tx.Exec(ctx, qRetry, p.Owner, retry.ids, retry.attempts, retry.nextAt, retry.errs); err != nil {
			return nil, err
		}
	}
	settled, err := settleOutcomes(ctx, tx, p.Owner, settling)
	if err != nil {
		return nil, err
	}
	if err := addUsage(ctx, tx, store.UsageDeltas(settled, p.Now)); err != nil {
		return nil, err
	}
	deltas := map[int64]*store.Counts{}
	var order []int64
	for _, o := range settled {
		d := deltas[o.BatchSeq]
		if d == nil {
			d = &store.Counts{}
			deltas[o.BatchSeq] = d
			order = append(order, o.BatchSeq)
		}
		d.Add(o.ResultType, 1)
	}
	var out []*store.BatchChange
	for _, seq := range order {
		ch, err := settle(ctx, tx, seq, *deltas[seq], p.Now)
		if err != nil {
			return nil, err
		}
		out = append(out, ch)
	}
	return out, nil
}

// settleOutcomes deletes the tasks of outcomes that still hold their lease
// and writes their results, in one statement, returning the outcomes that
// did.
func settleOutcomes(ctx context.Context, tx pgx.Tx, owner string, os []store.Outcome) ([]store.Outcome, error) {
	if len(os) == 0 {
		return nil, nil
	}
	ids := make([]int64, len(os))
	attempts := make([]int32, len(os))
	seqs := make([]int64, len(os))
	customIDs := make([]string, len(os))
	types := make([]string, len(os))
	results := make([][]byte, len(os))
	for i, o := range os {
		ids[i], attempts[i], seqs[i], customIDs[i], types[i] = o.RequestID, int32(o.Attempt), o.BatchSeq, o.CustomID, o.ResultType
		if len(o.Result) > 0 {
			results[i] = o.Result
		}
	}
	rows, err := tx.Query(ctx, qSettle, owner, ids, attempts, seqs, customIDs, types, results)
	if err != nil {
		return nil, err
	}
	// Keyed by attempt, not by request: a dispatcher whose lease lapsed
	// and which claimed a request again may settle both attempts in one
	// call (a cancel settles every claimed-ahead copy at once), and only
	// the current one writes a result. The stale one's duplicate result
	// failed the whole call, every time it was retried.
	type attempt struct {
		id int64
		n  int32
	}
	won := map[attempt]bool{}
	for rows.Next() {
		var a attempt
		if err := rows.Scan(&a.id, &a.n); err != nil {
			rows.Close()
			return nil, err
		}
		won[a] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	settled := make([]store.Outcome, 0, len(won))
	for _, o := range os {
		if a := (attempt{o.RequestID, int32(o.Attempt)}); won[a] {
			settled = append(settled, o)
			delete(won, a) // the same attempt twice is written once (DISTINCT ON)
		}
	}
	return settled, nil
}

// RequestsHeartbeat implements store.Store.
func (s *Store) RequestsHeartbeat(ctx context.Context, p store.RequestsHeartbeatParams) error {
	_, err := s.execAffected(ctx, "heartbeat", qHeartbeat, micros(p.LeaseUntil), p.Owner)
	return err
}

// RequestsRescue implements store.Store.
func (s *Store) RequestsRescue(ctx context.Context, p store.RequestsRescueParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	err := s.tx(ctx, "rescue requests", func(tx pgx.Tx) error {
		out = nil
		// The canceling batches first, as every transition locks batches
		// before tasks.
		if _, err := tx.Exec(ctx, qCancelingBatches); err != nil {
			return err
		}
		seqs, err := querySeqs(ctx, tx, qRescueCanceled, micros(p.Now))
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, qRescuePending, micros(p.Now)); err != nil {
			return err
		}
		deltas := map[int64]int64{}
		var order []int64
		for _, seq := range seqs {
			if deltas[seq] == 0 {
				order = append(order, seq)
			}
			deltas[seq]++
		}
		slices.Sort(order)
		for _, seq := range order {
			ch, err := settle(ctx, tx, seq, store.Counts{Canceled: deltas[seq]}, p.Now)
			if err != nil {
				return err
			}
			out = append(out, ch)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// RequestNextDue implements store.Store.
func (s *Store) RequestNextDue(ctx context.Context, backend string) (time.Time, error) {
	return s.minTime(ctx, "next due", qNextDue, backend)
}

// BatchesCancelingHeld implements store.Store: canceling batches are few,
// and each is looked up in the owner's running tasks (tasks_owner).
func (s *Store) BatchesCancelingHeld(ctx context.Context, p store.BatchesCancelingHeldParams) ([]int64, error) {
	var seqs []int64
	err := s.read(ctx, "list canceling batches", func(q querier) error {
		var err error
		seqs, err = querySeqs(ctx, q, qCancelingHeld, p.Owner)
		return err
	})
	return seqs, err
}

// RequestsReroute implements store.Store.
func (s *Store) RequestsReroute(ctx context.Context, route func(model string) string) (int, error) {
	moved := 0
	err := s.tx(ctx, "reroute requests", func(tx pgx.Tx) error {
		moved = 0
		rows, err := tx.Query(ctx, qRoutes)
		if err != nil {
			return err
		}
		type pair struct{ model, backend string }
		pairs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (pair, error) {
			var p pair
			return p, r.Scan(&p.model, &p.backend)
		})
		if err != nil {
			return err
		}
		for _, p := range pairs {
			to := route(p.model)
			if to == p.backend {
				continue
			}
			tag, err := tx.Exec(ctx, qReroute, to, p.backend, p.model)
			if err != nil {
				return err
			}
			moved += int(tag.RowsAffected())
		}
		return nil
	})
	return moved, err
}

// RequestsPurge implements store.Store.
func (s *Store) RequestsPurge(ctx context.Context, p store.RequestsPurgeParams) (int, error) {
	n, limit := 0, p.Limit
	err := s.tx(ctx, "purge requests", func(tx pgx.Tx) error {
		n = 0
		if err := checkLead(ctx, tx, p.Lead, micros(p.Now)); err != nil {
			return err
		}
		var seq int64
		err := tx.QueryRow(ctx, qPurgeNext).Scan(&seq)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		left := limit
		for _, q := range qPurgeSteps {
			tag, err := tx.Exec(ctx, q, seq, left)
			if err != nil {
				return err
			}
			left -= int(tag.RowsAffected())
			if left == 0 {
				break
			}
		}
		n = limit - left
		if left > 0 {
			_, err = tx.Exec(ctx, qPurgeDone, seq)
		}
		return err
	})
	return n, err
}

// ResultsList implements store.Store.
func (s *Store) ResultsList(ctx context.Context, p store.ResultsListParams) ([]store.Result, error) {
	q := qResults
	if p.WithParams {
		q = qResultsWith
	}
	q += ` WHERE res.batch_seq = $1 AND res.id > $2`
	// The filters are always bound and empty means none, so the statement
	// text stays one per shape; starts_with, not LIKE, as '_' is a LIKE
	// wildcard and may be in a custom_id.
	q += ` AND ($3 = '' OR res.result_type = $3) AND ($4 = '' OR starts_with(res.custom_id, $4))`
	args := []any{p.BatchSeq, p.AfterID, p.ResultType, p.CustomIDPrefix, p.Limit}
	if p.SkipSucceeded {
		q += ` AND res.result_type != 'succeeded'`
	}
	q += ` ORDER BY res.id LIMIT $5`
	var out []store.Result
	err := s.read(ctx, "list results", func(qr querier) error {
		out = make([]store.Result, 0, min(p.Limit, 1000))
		rows, err := qr.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		var size int64
		for rows.Next() {
			var r store.Result
			var result, params []byte
			if err := rows.Scan(&r.ID, &r.CustomID, &r.ResultType, &result, &params); err != nil {
				return err
			}
			r.Result, r.Params = result, params
			out = append(out, r)
			if size += int64(len(result) + len(params)); p.MaxBytes > 0 && size >= p.MaxBytes {
				break
			}
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
