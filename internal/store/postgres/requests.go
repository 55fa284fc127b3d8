package postgres

import (
	"cmp"
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
	// one statement. Fairness: of the open batches with due requests, each
	// offers an equal quota of its first due requests, ranked within the
	// batch; the picks take rank 1 of every batch, then rank 2, and so on (a
	// random order among batches of one rank), so each batch gets an equal
	// share. No row that every claim updates. The offers are locked as they
	// are read, skipping rows another claimer holds, so that two claimers at
	// once take different requests instead of the same ones (the second
	// then finding them taken and leaving with none); the quota keeps what
	// is locked to about $4 rows. A batch with fewer due than its quota
	// leaves its share to the batches that filled theirs: a second pass
	// shares the rest among them, each going on from where its first
	// stopped (by the index, without reading the first's rows again).
	// The update finds each picked row by the ctid it was locked at (this
	// transaction holds the lock, so the row stays there) instead of
	// descending the primary key again.
	qClaim = `WITH open AS (
			SELECT seq, id, expires_at, betas FROM batches
			WHERE status = 'in_progress' AND expires_at > $3),
		due AS (
			SELECT b.seq FROM open b WHERE EXISTS (
				SELECT 1 FROM tasks t WHERE t.batch_seq = b.seq AND t.backend = $2 AND t.state = 0 AND t.next_at <= $3)),
		quota AS (
			SELECT ceil($4::float8 / greatest(count(*), 1))::bigint AS n FROM due),
		pass1 AS (
			SELECT t.id, t.ctid, t.batch_seq, t.next_at, row_number() OVER (PARTITION BY t.batch_seq ORDER BY t.next_at, t.id) AS rank
			FROM due b CROSS JOIN LATERAL (
				SELECT id, ctid, batch_seq, next_at FROM tasks
				WHERE batch_seq = b.seq AND backend = $2 AND state = 0 AND next_at <= $3
				ORDER BY next_at, id LIMIT (SELECT n FROM quota)
				FOR UPDATE SKIP LOCKED) t),
		full_ AS (
			SELECT batch_seq, next_at, id FROM pass1 WHERE rank = (SELECT n FROM quota)),
		more AS (
			SELECT greatest(0, ceil(($4 - (SELECT count(*) FROM pass1))::float8 / greatest((SELECT count(*) FROM full_), 1)))::bigint AS n),
		pass2 AS (
			SELECT t.id, t.ctid, (SELECT n FROM quota) + row_number() OVER (PARTITION BY t.batch_seq ORDER BY t.next_at, t.id) AS rank
			FROM full_ l CROSS JOIN LATERAL (
				SELECT id, ctid, batch_seq, next_at FROM tasks
				WHERE batch_seq = l.batch_seq AND backend = $2 AND state = 0 AND next_at <= $3 AND (next_at, id) > (l.next_at, l.id)
				ORDER BY next_at, id LIMIT (SELECT n FROM more)
				FOR UPDATE SKIP LOCKED) t),
		offered AS (
			SELECT id, ctid, rank FROM pass1 UNION ALL SELECT id, ctid, rank FROM pass2),
		picked AS (
			SELECT id, ctid, rank, random() AS tiebreak FROM offered ORDER BY rank, tiebreak LIMIT $4),
		claimed AS (
			UPDATE tasks t SET state = 1, lease_owner = $1, lease_expires = $5, attempts = t.attempts + 1
			FROM picked p WHERE t.ctid = p.ctid
			RETURNING t.id, t.batch_seq, t.attempts, p.rank, p.tiebreak)
		SELECT c.id, c.batch_seq, c.attempts, b.id, b.expires_at, b.betas, r.custom_id, r.params
		FROM claimed c JOIN open b ON b.seq = c.batch_seq JOIN requests r ON r.id = c.id
		ORDER BY c.rank, c.tiebreak`

	// qCancelingHeld lists the canceling batches of which owner $1 holds
	// running requests.
	qCancelingHeld = `SELECT b.seq FROM batches b WHERE b.status = 'canceling'
		AND EXISTS (SELECT 1 FROM tasks t WHERE t.lease_owner = $1 AND t.state = 1 AND t.batch_seq = b.seq)
		ORDER BY b.seq`

	// qComplete writes the outcomes of a group of requests in one
	// statement, once qLockBatches holds their batches' rows: an outcome
	// ($2 id, $3 attempt, $4 batch, $5 custom id, $6 result type, $7
	// result, $8 retry time, 0 for none; $10-$15 its usage, store.UsageDelta
	// of one outcome, model '' for none) counts only for the current
	// attempt of the lease holder $1, while the request is still running
	// (the guard). A retry goes back to pending if its batch is in
	// progress and does not expire before it is due; every other outcome
	// deletes its task, writes its result and adds its usage (on day $16),
	// and the batches' counts grow by what was written, ending those that
	// are complete (at $9). It returns the batches it changed, status
	// 'ended' for those it ended. One call may hold a stale attempt of a
	// request beside its current one (a dispatcher whose lease lapsed
	// claimed it again), or the same attempt twice: only the attempt that
	// won writes, once (a DELETE deletes a row once, whichever of the
	// outcomes joined to it it returns).
	// The task's delete returns what the rest writes (result, usage), so
	// that the outcomes are read once, not joined again to what won.
	// "state <> 0" (running: a task is 0 or 1) rather than "state = 1",
	// which would let the planner read the tasks by tasks_running: its
	// statistics cannot know how many of them this owner holds, and taking
	// them for a handful it compared each with each outcome. By id, each
	// outcome is one probe of the primary key.
	// qCompleteRetry is the same for a group with retries in it; the
	// group without (nearly every group) skips their statement and check.
	qComplete      = `WITH ` + qCompleteWon + `, ` + qCompleteRest
	qCompleteRetry = `WITH ` + qCompleteWonRetry + `, ` + qCompleteRetried + `, ` + qCompleteRest

	qCompleteOutcomes = `unnest($2::bigint[], $3::integer[], $4::bigint[], $5::text[], $6::text[], $7::bytea[], $8::bigint[],
			$10::text[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[])
			AS u(id, attempt, batch_seq, custom_id, result_type, result, retry_at, model, i, o, w5, w1, r)`
	qCompleteGuard     = `t.id = u.id AND t.state <> 0 AND t.lease_owner = $1 AND t.attempts = u.attempt`
	qCompleteReturning = `RETURNING t.id, t.batch_seq, u.custom_id, u.result_type, u.result, u.model, u.i, u.o, u.w5, u.w1, u.r`
	qCompleteWon       = `won AS (
			DELETE FROM tasks t USING ` + qCompleteOutcomes + `
			WHERE ` + qCompleteGuard + `
			` + qCompleteReturning + `)`
	qCompleteWonRetry = `won AS (
			DELETE FROM tasks t USING ` + qCompleteOutcomes + `
			WHERE ` + qCompleteGuard + `
			AND (u.retry_at = 0 OR NOT EXISTS (SELECT 1 FROM batches b
				WHERE b.seq = t.batch_seq AND b.status = 'in_progress' AND u.retry_at < b.expires_at))
			` + qCompleteReturning + `)`
	qCompleteRetried = `retried AS (
			UPDATE tasks t SET state = 0, next_at = u.retry_at, last_error = COALESCE(u.result, t.last_error),
				lease_owner = NULL, lease_expires = NULL, upstream = NULL
			FROM unnest($2::bigint[], $3::integer[], $4::bigint[], $8::bigint[], $7::bytea[]) AS u(id, attempt, batch_seq, retry_at, result),
				batches b
			WHERE u.retry_at > 0 AND b.seq = u.batch_seq AND b.status = 'in_progress' AND u.retry_at < b.expires_at
			AND ` + qCompleteGuard + `)`
	qCompleteRest = `written AS (
			INSERT INTO results (id, batch_seq, custom_id, result_type, result)
			SELECT id, batch_seq, custom_id, result_type, result FROM won),
		used AS (
			SELECT batch_seq, model, sum(i) AS i, sum(o) AS o, sum(w5) AS w5, sum(w1) AS w1, sum(r) AS r
			FROM won WHERE model <> '' GROUP BY batch_seq, model),
		usage AS (
			INSERT INTO batch_usage (batch_seq, workspace, batch_id, model, day,
				input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens)
			SELECT b.seq, b.workspace, b.id, x.model, $16, x.i, x.o, x.w5, x.w1, x.r
			FROM used x JOIN batches b ON b.seq = x.batch_seq ORDER BY b.seq, x.model
			ON CONFLICT (batch_seq, model, day) DO UPDATE SET
				input_tokens = batch_usage.input_tokens + excluded.input_tokens,
				output_tokens = batch_usage.output_tokens + excluded.output_tokens,
				cache_write_5m_tokens = batch_usage.cache_write_5m_tokens + excluded.cache_write_5m_tokens,
				cache_write_1h_tokens = batch_usage.cache_write_1h_tokens + excluded.cache_write_1h_tokens,
				cache_read_tokens = batch_usage.cache_read_tokens + excluded.cache_read_tokens),
		d AS (
			SELECT batch_seq AS d_seq, count(*) AS d_n,
				count(*) FILTER (WHERE result_type = 'succeeded') AS d_succeeded,
				count(*) FILTER (WHERE result_type = 'errored') AS d_errored,
				count(*) FILTER (WHERE result_type = 'canceled') AS d_canceled,
				count(*) FILTER (WHERE result_type = 'expired') AS d_expired
			FROM won GROUP BY batch_seq)
		UPDATE batches b SET n_succeeded = b.n_succeeded + d_succeeded, n_errored = b.n_errored + d_errored,
			n_canceled = b.n_canceled + d_canceled, n_expired = b.n_expired + d_expired,
			status = CASE WHEN ` + qDone + ` THEN 'ended' ELSE b.status END,
			ended_at = CASE WHEN ` + qDone + ` THEN $9 ELSE b.ended_at END
		FROM d WHERE b.seq = d_seq
		RETURNING ` + batchCols

	qGenericPlans = `SET LOCAL plan_cache_mode = force_generic_plan`
	qLockBatches  = `SELECT seq FROM batches WHERE seq = ANY($1) ORDER BY seq FOR NO KEY UPDATE`

	// qDone: batch b is complete with the d_n results just written.
	qDone = `b.status IN ('in_progress', 'canceling') AND b.n_succeeded + b.n_errored + b.n_canceled + b.n_expired + d_n >= b.total`

	// Requests in an upstream batch are held by its row's lease instead.
	qHeartbeat = `UPDATE tasks SET lease_expires = $1 WHERE state = 1 AND lease_owner = $2 AND upstream IS NULL AND lease_expires > $3`

	// Rescue: lost requests (lease lapsed)
	// not handed to an upstream batch. Those of canceling batches settle
	// canceled; the others go back to pending. The batches of the lost
	// requests are locked first, as every transition locks batches before
	// tasks, and only their requests are rescued: a cancel that began
	// beside the rescue and had not seen a request moved back to pending
	// (its settling of the pending ones would skip it as still running)
	// would leave it pending in a canceling batch, where nothing claims it.
	qLostBatches    = `SELECT DISTINCT batch_seq FROM tasks WHERE state = 1 AND upstream IS NULL AND lease_expires < $1 ORDER BY 1`
	qRescueCanceled = `WITH lost AS (
			DELETE FROM tasks t USING requests r, batches b
			WHERE r.id = t.id AND b.seq = t.batch_seq AND b.status = 'canceling' AND t.batch_seq = ANY($2)
			AND t.state = 1 AND t.upstream IS NULL AND t.lease_expires < $1
			RETURNING t.id, t.batch_seq, r.custom_id)
		INSERT INTO results (id, batch_seq, custom_id, result_type, result)
		SELECT id, batch_seq, custom_id, 'canceled', NULL FROM lost RETURNING batch_seq`
	qRescuePending = `UPDATE tasks SET state = 0, lease_owner = NULL, lease_expires = NULL
		WHERE state = 1 AND upstream IS NULL AND lease_expires < $1 AND batch_seq = ANY($2)`

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
		_, out, err = completeAndClaimTx(ctx, tx, store.RequestsCompleteParams{}, p)
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
	return scanClaimed(rows)
}

// scanClaimed reads the rows of qClaim and closes them.
func scanClaimed(rows pgx.Rows) ([]store.ClaimedRequest, error) {
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
		out, _, err = completeAndClaimTx(ctx, tx, p, store.RequestsClaimParams{})
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// RequestsCompleteAndClaim implements store.Store: one transaction, and
// one round trip for its statements (a pipeline), as on SQLite.
func (s *Store) RequestsCompleteAndClaim(ctx context.Context, c store.RequestsCompleteParams, p store.RequestsClaimParams) ([]*store.BatchChange, []store.ClaimedRequest, error) {
	var changes []*store.BatchChange
	var claimed []store.ClaimedRequest
	err := s.tx(ctx, "complete and claim requests", func(tx pgx.Tx) error {
		var err error
		changes, claimed, err = completeAndClaimTx(ctx, tx, c, p)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return changes, claimed, nil
}

// completeAndClaimTx writes the outcomes of c and then claims as p asks
// (nothing if p.Limit is 0), sending the statements in one pipeline:
// the batches' rows locked (in seq order, before any task, as every
// transition does), qComplete, qClaim. Only an ended batch costs more
// round trips, for its event, whose notification wakes every process.
//
// Results written without an end notify nothing, on purpose: nothing in
// another process waits for them. The event streams read the counts of
// their batches every streamTick (250 ms) whether woken or not, as they do
// in the writing process, which wakes them only at an end too; results are
// read once a batch has ended or, with partial=true, as they are at the
// request (nothing waits for more); and a retry is found by the claimers'
// polling of RequestNextDue. A notification per group written would wake
// every process's streams and deliverer a hundred times a second for
// nothing.
func completeAndClaimTx(ctx context.Context, tx pgx.Tx, c store.RequestsCompleteParams, p store.RequestsClaimParams) ([]*store.BatchChange, []store.ClaimedRequest, error) {
	var b pgx.Batch
	// The planner would plan qClaim and qComplete afresh at every run (their
	// plans for given values look cheaper than one for any values), which
	// costs more than running them for a group of a hundred requests. The
	// plan for any values is the same: the CTEs fix its shape, and every
	// row is found by an index.
	b.Queue(qGenericPlans)
	if len(c.Outcomes) > 0 {
		n := len(c.Outcomes)
		ids, attempts, seqs, retryAt := make([]int64, n), make([]int32, n), make([]int64, n), make([]int64, n)
		customIDs, types, results := make([]string, n), make([]string, n), make([][]byte, n)
		retries := false
		for i, o := range c.Outcomes {
			ids[i], attempts[i], seqs[i], customIDs[i], types[i] = o.RequestID, int32(o.Attempt), o.BatchSeq, o.CustomID, o.ResultType
			if len(o.Result) > 0 {
				results[i] = o.Result
			}
			if o.Retry {
				retryAt[i] = max(micros(o.RetryAt), 1)
				retries = true
			}
		}
		// The usage of each outcome, summed in SQL over those that win.
		models := make([]string, n)
		in, out, w5, w1, rd := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		for i, o := range c.Outcomes {
			if o.Retry {
				continue
			}
			if model, t, ok := o.MessageUsage(); ok {
				models[i] = model
				in[i], out[i], w5[i], w1[i], rd[i] = t.Input, t.Output, t.CacheWrite5m, t.CacheWrite1h, t.CacheRead
			}
		}
		day := store.UsageDay(c.Now)
		locks := slices.Compact(slices.Sorted(slices.Values(seqs)))
		b.Queue(qLockBatches, locks)
		q := qComplete
		if retries {
			q = qCompleteRetry
		}
		b.Queue(q, c.Owner, ids, attempts, seqs, customIDs, types, results, retryAt, micros(c.Now),
			models, in, out, w5, w1, rd, micros(day))
	}
	if p.Limit > 0 {
		b.Queue(qClaim, p.Owner, p.Backend, micros(p.Now), p.Limit, micros(p.LeaseUntil))
	}
	if b.Len() == 1 {
		return nil, nil, nil
	}
	br := tx.SendBatch(ctx, &b)
	var changes []*store.BatchChange
	var claimed []store.ClaimedRequest
	err := func() error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		if len(c.Outcomes) > 0 {
			if _, err := br.Exec(); err != nil {
				return err
			}
			rows, err := br.Query()
			if err != nil {
				return err
			}
			for rows.Next() {
				bt, err := scanBatch(rows)
				if err != nil {
					rows.Close()
					return err
				}
				changes = append(changes, &store.BatchChange{Batch: bt, Ended: bt.Status == store.StatusEnded})
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		if p.Limit > 0 {
			rows, err := br.Query()
			if err != nil {
				return err
			}
			if claimed, err = scanClaimed(rows); err != nil {
				return err
			}
		}
		return nil
	}()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, err
	}
	slices.SortFunc(changes, func(a, b *store.BatchChange) int { return cmp.Compare(a.Batch.Seq, b.Batch.Seq) })
	for _, ch := range changes {
		if ch.Ended {
			if err := recordEvent(ctx, tx, ch.Batch, store.EventBatchEnded, c.Now); err != nil {
				return nil, nil, err
			}
		}
	}
	return changes, claimed, nil
}

// RequestsHeartbeat implements store.Store.
func (s *Store) RequestsHeartbeat(ctx context.Context, p store.RequestsHeartbeatParams) error {
	_, err := s.execAffected(ctx, "heartbeat", qHeartbeat, micros(p.LeaseUntil), p.Owner, micros(p.Now))
	return err
}

// RequestsRescue implements store.Store.
func (s *Store) RequestsRescue(ctx context.Context, p store.RequestsRescueParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	err := s.tx(ctx, "rescue requests", func(tx pgx.Tx) error {
		out = nil
		// The batches first, as every transition locks batches before
		// tasks.
		lost, err := querySeqs(ctx, tx, qLostBatches, micros(p.Now))
		if err != nil || len(lost) == 0 {
			return err
		}
		if err := lockBatches(ctx, tx, lost); err != nil {
			return err
		}
		seqs, err := querySeqs(ctx, tx, qRescueCanceled, micros(p.Now), lost)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, qRescuePending, micros(p.Now), lost); err != nil {
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
