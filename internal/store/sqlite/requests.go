package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// Hot statements, prepared once at Open so that the claim and complete paths
// never pay for parsing SQL.
const (
	qOpenBatches = `SELECT seq, id, expires_at, betas FROM batches
		WHERE status != 'ended' AND status = 'in_progress' AND expires_at > ?
		ORDER BY last_claimed_at, seq`
	// The LIMIT is "? + 0", not a bare "?": SQLite plans a bare LIMIT
	// parameter with its bound value and so re-prepares the statement
	// whenever the next claim asks for another number of requests, which
	// the dispatcher's do nearly every time (BenchmarkClaimComplete, vary).
	qClaim = `UPDATE OR FAIL tasks SET state = 1, lease_owner = ?, lease_expires = ?, attempts = attempts + 1
		WHERE id IN (SELECT id FROM tasks WHERE batch_seq = ? AND backend = ? AND state = 0 AND next_at <= ? ORDER BY next_at, id LIMIT ? + 0)
		RETURNING id, attempts`
	qClaimParams = `SELECT id, custom_id, params FROM requests WHERE id IN (SELECT value FROM json_each(?))`
	// qClaimParamsRange is qClaimParams for a claim of consecutive ids.
	qClaimParamsRange = `SELECT id, custom_id, params FROM requests WHERE id >= ? AND id <= ?`
	qTouchBatch       = `UPDATE batches SET last_claimed_at = ? WHERE seq = ?`
	qBatchState       = `SELECT status, expires_at FROM batches WHERE seq = ?`
	qRetry            = `UPDATE tasks SET state = 0, next_at = ?, last_error = COALESCE(?, last_error), lease_owner = NULL, lease_expires = NULL, upstream = NULL
		WHERE id = ? AND state = 1 AND lease_owner = ? AND attempts = ?`
)

// qSettle is the guard: only the current attempt of the lease holder, and
// only while the request is still running, settles it. It returns the
// attempt with the id: one call may hold a stale attempt of the same
// request beside the current one (see settleOutcomes).
func qSettle(n int) string {
	return `DELETE FROM tasks WHERE state = 1 AND lease_owner = ? AND (id, attempts) IN (VALUES ` +
		strings.TrimSuffix(strings.Repeat("(?,?),", n), ",") + `) RETURNING id, attempts`
}

func qAddResults(n int) string {
	return `INSERT OR FAIL INTO results (id, batch_seq, custom_id, result_type, result) VALUES ` +
		strings.TrimSuffix(strings.Repeat("(?,?,?,?,?),", n), ",")
}

const qMaxRequestID = `SELECT coalesce(max(id), 0) FROM requests`

func qInsertRequests(n int) string {
	return `INSERT OR FAIL INTO requests (batch_seq, custom_id, model, params) VALUES ` +
		strings.TrimSuffix(strings.Repeat("(?,?,?,?),", n), ",")
}

func qInsertTasks(n int) string {
	return `INSERT OR FAIL INTO tasks (id, batch_seq, backend) VALUES ` + strings.TrimSuffix(strings.Repeat("(?,?,?),", n), ",")
}

// RequestsInsert implements store.Store.
func (s *Store) RequestsInsert(ctx context.Context, p store.RequestsInsertParams) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var before int64
		if err := s.stmt(ctx, tx, qMaxRequestID).QueryRowContext(ctx).Scan(&before); err != nil {
			return err
		}
		// One multi-row INSERT per chunk: far fewer trips through the driver
		// than a statement per row.
		args := make([]any, 0, insertChunkSizes[0]*4)
		for start := 0; start < len(p.Requests); {
			n := chunkLen(len(p.Requests)-start, insertChunkSizes)
			args = args[:0]
			for _, r := range p.Requests[start : start+n] {
				args = append(args, p.BatchSeq, r.CustomID, r.Model, []byte(r.Params))
			}
			if _, err := s.stmt(ctx, tx, qInsertRequests(n)).ExecContext(ctx, args...); err != nil {
				return err
			}
			start += n
		}
		// This transaction is the only writer, so the group's ids follow the
		// old maximum in order; the tasks take their backends in that order.
		var after int64
		if err := s.stmt(ctx, tx, qMaxRequestID).QueryRowContext(ctx).Scan(&after); err != nil {
			return err
		}
		if after-before != int64(len(p.Requests)) {
			return fmt.Errorf("request ids not contiguous: %d new ids for %d requests", after-before, len(p.Requests))
		}
		for start := 0; start < len(p.Requests); {
			n := chunkLen(len(p.Requests)-start, insertChunkSizes)
			args = args[:0]
			for i, r := range p.Requests[start : start+n] {
				args = append(args, before+int64(start+i)+1, p.BatchSeq, r.Backend)
			}
			if _, err := s.stmt(ctx, tx, qInsertTasks(n)).ExecContext(ctx, args...); err != nil {
				return err
			}
			start += n
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("insert requests: %w", err)
	}
	return nil
}

// RequestsClaim implements store.Store. Claims go batch by batch, least
// recently served first, each batch getting an equal share of the limit and
// leftovers going round again: a small batch behind a huge one is served in
// the very next claim instead of after the huge one drains.
func (s *Store) RequestsClaim(ctx context.Context, p store.RequestsClaimParams) ([]store.ClaimedRequest, error) {
	var out []store.ClaimedRequest
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = s.claimTx(ctx, tx, p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("claim requests: %w", err)
	}
	return out, nil
}

func (s *Store) claimTx(ctx context.Context, tx *sql.Tx, p store.RequestsClaimParams) ([]store.ClaimedRequest, error) {
	var out []store.ClaimedRequest
	type open struct {
		seq     int64
		id      string
		expires int64
		betas   []string
	}
	rows, err := s.stmt(ctx, tx, qOpenBatches).QueryContext(ctx, micros(p.Now))
	if err != nil {
		return nil, err
	}
	var batches []open
	for rows.Next() {
		var b open
		var betas string
		if err := rows.Scan(&b.seq, &b.id, &b.expires, &betas); err != nil {
			rows.Close()
			return nil, err
		}
		b.betas = splitBetas(betas)
		batches = append(batches, b)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	claim := s.stmt(ctx, tx, qClaim)
	var id int64
	var attempt int
	remaining := p.Limit
	served := map[int64]bool{}
	for remaining > 0 && len(batches) > 0 {
		share := max(1, remaining/len(batches))
		next := batches[:0]
		for _, b := range batches {
			if remaining == 0 {
				break
			}
			want := min(share, remaining)
			rows, err := claim.QueryContext(ctx, p.Owner, micros(p.LeaseUntil), b.seq, p.Backend, micros(p.Now), want)
			if err != nil {
				return nil, err
			}
			got := 0
			for rows.Next() {
				// Scanned into id and attempt, not into the request: what
				// Scan points into escapes, once per claim, not per row.
				if err := rows.Scan(&id, &attempt); err != nil {
					rows.Close()
					return nil, err
				}
				out = append(out, store.ClaimedRequest{ID: id, Attempt: attempt, BatchID: b.id, BatchSeq: b.seq, Betas: b.betas, ExpiresAt: fromMicros(b.expires)})
				got++
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return nil, err
			}
			remaining -= got
			if got > 0 {
				served[b.seq] = true
			}
			if got == want {
				next = append(next, b)
			}
		}
		batches = next
	}
	for seq := range served {
		if _, err := s.stmt(ctx, tx, qTouchBatch).ExecContext(ctx, micros(p.Now), seq); err != nil {
			return nil, err
		}
	}
	return out, s.fillParams(ctx, tx, out)
}

// fillParams reads the custom_id and params of claimed requests in one
// statement. Claimed ids are most often one run of consecutive ids (a
// batch's requests, claimed in order), read as a range of rowids: the
// list of ids, parsed by json_each into a temporary index, cost more than
// reading the rows.
func (s *Store) fillParams(ctx context.Context, tx *sql.Tx, claimed []store.ClaimedRequest) error {
	if len(claimed) == 0 {
		return nil
	}
	lo, hi := claimed[0].ID, claimed[0].ID
	for _, c := range claimed[1:] {
		lo, hi = min(lo, c.ID), max(hi, c.ID)
	}
	// A claim holds each id once, so a span as long as the claim is
	// exactly its ids.
	var rows *sql.Rows
	var err error
	var at func(id int64) int
	if hi-lo+1 == int64(len(claimed)) {
		pos := make([]int32, len(claimed))
		for i, c := range claimed {
			pos[c.ID-lo] = int32(i)
		}
		at = func(id int64) int { return int(pos[id-lo]) }
		rows, err = s.stmt(ctx, tx, qClaimParamsRange).QueryContext(ctx, lo, hi)
	} else {
		idx := make(map[int64]int, len(claimed))
		ids := make([]byte, 0, len(claimed)*8)
		ids = append(ids, '[')
		for i, c := range claimed {
			if i > 0 {
				ids = append(ids, ',')
			}
			ids = strconv.AppendInt(ids, c.ID, 10)
			idx[c.ID] = i
		}
		ids = append(ids, ']')
		at = func(id int64) int { return idx[id] }
		rows, err = s.stmt(ctx, tx, qClaimParams).QueryContext(ctx, string(ids))
	}
	if err != nil {
		return err
	}
	defer rows.Close()
	var id int64
	var customID string
	var params []byte
	for rows.Next() {
		if err := rows.Scan(&id, &customID, &params); err != nil {
			return err
		}
		c := &claimed[at(id)]
		c.CustomID, c.Params = customID, params
	}
	return rows.Err()
}

// RequestsComplete implements store.Store.
func (s *Store) RequestsComplete(ctx context.Context, p store.RequestsCompleteParams) ([]*store.BatchChange, error) {
	// Outcomes are written even while the store is full, with the reserve
	// if need be: a canceled batch ends only once its claimed requests
	// are written, and only an ended batch can be deleted to free space.
	var out []*store.BatchChange
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = s.completeTx(ctx, tx, p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("complete requests: %w", err)
	}
	return out, nil
}

// RequestsCompleteAndClaim implements store.Store: one transaction writes
// both, and the pages both touch (the tasks, the batch rows) once.
func (s *Store) RequestsCompleteAndClaim(ctx context.Context, c store.RequestsCompleteParams, p store.RequestsClaimParams) ([]*store.BatchChange, []store.ClaimedRequest, error) {
	var changes []*store.BatchChange
	var claimed []store.ClaimedRequest
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if changes, err = s.completeTx(ctx, tx, c); err != nil {
			return err
		}
		claimed, err = s.claimTx(ctx, tx, p)
		return err
	})
	if errors.Is(err, store.ErrFull) {
		// No claims on a full disk, but the outcomes are written.
		changes, err := s.RequestsComplete(ctx, c)
		return changes, nil, err
	}
	if err != nil {
		return nil, nil, fmt.Errorf("complete and claim requests: %w", err)
	}
	return changes, claimed, nil
}

func (s *Store) completeTx(ctx context.Context, tx *sql.Tx, p store.RequestsCompleteParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	// Whether each touched batch can still retry: only in_progress and
	// unexpired ones can; read inside the write transaction, so no
	// cancel can slip between the check and the write.
	type batchState struct {
		retryable bool
		expires   int64
	}
	states := map[int64]batchState{}
	for _, o := range p.Outcomes {
		if _, ok := states[o.BatchSeq]; ok {
			continue
		}
		var status string
		var expires int64
		err := s.stmt(ctx, tx, qBatchState).QueryRowContext(ctx, o.BatchSeq).Scan(&status, &expires)
		if errors.Is(err, sql.ErrNoRows) {
			states[o.BatchSeq] = batchState{}
			continue
		}
		if err != nil {
			return nil, err
		}
		states[o.BatchSeq] = batchState{retryable: status == store.StatusInProgress, expires: expires}
	}
	retryStmt := s.stmt(ctx, tx, qRetry)
	settling := make([]store.Outcome, 0, len(p.Outcomes))
	for _, o := range p.Outcomes {
		st := states[o.BatchSeq]
		if o.Retry && st.retryable && micros(o.RetryAt) < st.expires {
			// A retry without a result (a request given back unsent) keeps
			// the error of the last attempt that was made.
			var lastError any
			if len(o.Result) > 0 {
				lastError = []byte(o.Result)
			}
			if _, err := retryStmt.ExecContext(ctx, micros(o.RetryAt), lastError, o.RequestID, p.Owner, o.Attempt); err != nil {
				return nil, err
			}
			continue
		}
		settling = append(settling, o)
	}
	settled, err := s.settleOutcomes(ctx, tx, p.Owner, settling)
	if err != nil {
		return nil, err
	}
	if err := s.addUsage(ctx, tx, store.UsageDeltas(settled, p.Now)); err != nil {
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
	for _, seq := range order {
		ch, err := s.settle(ctx, tx, seq, *deltas[seq], p.Now)
		if err != nil {
			return nil, err
		}
		out = append(out, ch)
	}
	return out, nil
}

// settleOutcomes deletes the tasks of outcomes that still hold their lease
// and writes their results, returning the outcomes that did.
func (s *Store) settleOutcomes(ctx context.Context, tx *sql.Tx, owner string, os []store.Outcome) ([]store.Outcome, error) {
	// Keyed by attempt, not by request: a dispatcher whose lease lapsed
	// and which claimed a request again may settle both attempts in one
	// call (a cancel settles every claimed-ahead copy at once), and only
	// the current one may write a result; the stale one's duplicate
	// result failed the whole call, every time it was retried.
	type attempt struct {
		id int64
		n  int
	}
	won := make(map[attempt]bool, len(os))
	var a attempt // scanned into; declared once, as what Scan points into escapes
	args := make([]any, 0, 1+2*chunkSizes[0])
	for rest := os; len(rest) > 0; {
		n := chunkSizes[len(chunkSizes)-1]
		for _, size := range chunkSizes {
			if len(rest) >= size {
				n = size
				break
			}
		}
		chunk := rest[:n]
		rest = rest[n:]
		args = append(args[:0], owner)
		for _, o := range chunk {
			args = append(args, o.RequestID, o.Attempt)
		}
		rows, err := s.stmt(ctx, tx, qSettle(n)).QueryContext(ctx, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
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
	}
	settled := make([]store.Outcome, 0, len(won))
	for _, o := range os {
		if a := (attempt{o.RequestID, o.Attempt}); won[a] {
			settled = append(settled, o)
			delete(won, a) // the same attempt twice writes once
		}
	}
	args = make([]any, 0, 5*chunkSizes[0])
	for rest := settled; len(rest) > 0; {
		n := chunkSizes[len(chunkSizes)-1]
		for _, size := range chunkSizes {
			if len(rest) >= size {
				n = size
				break
			}
		}
		args = args[:0]
		for _, o := range rest[:n] {
			var result []byte
			if len(o.Result) > 0 {
				result = o.Result
			}
			args = append(args, o.RequestID, o.BatchSeq, o.CustomID, resultTypeArg(o.ResultType), result)
		}
		rest = rest[n:]
		if _, err := s.stmt(ctx, tx, qAddResults(n)).ExecContext(ctx, args...); err != nil {
			return nil, err
		}
	}
	return settled, nil
}

// resultTypeArg is a result type as a statement argument: the known ones
// boxed once, as boxing a string in an interface allocates, and this runs
// for every row written.
func resultTypeArg(typ string) any {
	switch typ {
	case store.ResultSucceeded:
		return argSucceeded
	case store.ResultErrored:
		return argErrored
	case store.ResultCanceled:
		return argCanceled
	case store.ResultExpired:
		return argExpired
	}
	return typ
}

var argSucceeded, argErrored, argCanceled, argExpired any = store.ResultSucceeded, store.ResultErrored, store.ResultCanceled, store.ResultExpired

// RequestsHeartbeat implements store.Store.
func (s *Store) RequestsHeartbeat(ctx context.Context, p store.RequestsHeartbeatParams) error {
	// Even on a full disk: a lapsed lease sends the running requests again.
	// Requests in an upstream batch are held by its row's lease instead.
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE tasks SET lease_expires = ? WHERE state = 1 AND lease_owner = ? AND upstream IS NULL AND lease_expires > ?`,
			micros(p.LeaseUntil), p.Owner, micros(p.Now))
		return err
	})
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

// RequestsRescue implements store.Store.
func (s *Store) RequestsRescue(ctx context.Context, p store.RequestsRescueParams) ([]*store.BatchChange, error) {
	var out []*store.BatchChange
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		out = nil
		// Requests handed to an upstream batch are not lost when a lease
		// lapses: the upstream holds them and the delegator resumes polling.
		cond := `t.state = 1 AND t.upstream IS NULL AND t.lease_expires < ?`
		args := []any{micros(p.Now)}
		// A lost request of a canceling batch will never be sent again, so
		// it settles as canceled; every other one goes back to pending.
		canceling := ` AND t.batch_seq IN (SELECT seq FROM batches WHERE status = 'canceling')`
		seqs, err := querySeqs(ctx, tx, `INSERT INTO results (id, batch_seq, custom_id, result_type, result)
			SELECT t.id, t.batch_seq, r.custom_id, 'canceled', NULL FROM tasks t JOIN requests r ON r.id = t.id
			WHERE `+cond+canceling+` RETURNING batch_seq`, args...)
		if err != nil {
			return err
		}
		plain := strings.ReplaceAll(cond+canceling, "t.", "")
		if _, err := tx.ExecContext(ctx, `DELETE FROM tasks WHERE `+plain, args...); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE tasks SET state = 0, lease_owner = NULL, lease_expires = NULL WHERE `+
			strings.ReplaceAll(cond, "t.", ""), args...); err != nil {
			return err
		}
		deltas := map[int64]int64{}
		for _, seq := range seqs {
			deltas[seq]++
		}
		for seq, n := range deltas {
			ch, err := s.settle(ctx, tx, seq, store.Counts{Canceled: n}, p.Now)
			if err != nil {
				return err
			}
			out = append(out, ch)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rescue requests: %w", err)
	}
	return out, nil
}

// BatchesCancelingHeld implements store.Store. Canceling batches are few;
// each is looked up in its own tasks.
func (s *Store) BatchesCancelingHeld(ctx context.Context, p store.BatchesCancelingHeldParams) ([]int64, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT b.seq FROM batches b WHERE b.status = 'canceling'
		AND EXISTS (SELECT 1 FROM tasks t WHERE t.batch_seq = b.seq AND t.state = 1 AND t.lease_owner = ?)
		ORDER BY b.seq`, p.Owner)
	if err != nil {
		return nil, fmt.Errorf("list canceling batches: %w", err)
	}
	defer rows.Close()
	var seqs []int64
	for rows.Next() {
		var seq int64
		if err := rows.Scan(&seq); err != nil {
			return nil, fmt.Errorf("list canceling batches: %w", err)
		}
		seqs = append(seqs, seq)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list canceling batches: %w", err)
	}
	return seqs, nil
}

// RequestNextDue implements store.Store. The inner min per batch is one
// index seek on tasks_pending; a join would scan every pending request.
func (s *Store) RequestNextDue(ctx context.Context, backend string) (time.Time, error) {
	var v sql.NullInt64
	err := s.r.QueryRowContext(ctx, `SELECT min((SELECT min(t.next_at) FROM tasks t WHERE t.batch_seq = b.seq AND t.backend = ? AND t.state = 0))
		FROM batches b WHERE b.status != 'ended' AND b.status = 'in_progress'`, backend).Scan(&v)
	if err != nil {
		return time.Time{}, fmt.Errorf("next due: %w", err)
	}
	if !v.Valid {
		return time.Time{}, nil
	}
	return fromMicros(v.Int64), nil
}

// RequestsReroute implements store.Store.
func (s *Store) RequestsReroute(ctx context.Context, route func(model string) string) (int, error) {
	moved := 0
	err := s.tx(ctx, func(tx *sql.Tx) error {
		moved = 0
		rows, err := tx.QueryContext(ctx, `SELECT DISTINCT r.model, t.backend FROM tasks t JOIN requests r ON r.id = t.id WHERE t.state = 0`)
		if err != nil {
			return err
		}
		type pair struct{ model, backend string }
		var pairs []pair
		for rows.Next() {
			var p pair
			if err := rows.Scan(&p.model, &p.backend); err != nil {
				rows.Close()
				return err
			}
			pairs = append(pairs, p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, p := range pairs {
			to := route(p.model)
			if to == p.backend {
				continue
			}
			res, err := tx.ExecContext(ctx, `UPDATE tasks SET backend = ? WHERE state = 0 AND backend = ?
				AND (SELECT model FROM requests r WHERE r.id = tasks.id) = ?`, to, p.backend, p.model)
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			moved += int(n)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("reroute requests: %w", err)
	}
	return moved, nil
}

// RequestsPurge implements store.Store.
func (s *Store) RequestsPurge(ctx context.Context, p store.RequestsPurgeParams) (int, error) {
	n, limit := 0, p.Limit
	err := s.txFreeing(ctx, func(tx *sql.Tx) error {
		n = 0
		if err := checkLead(ctx, tx, p.Lead, p.Now); err != nil {
			return err
		}
		var seq int64
		err := tx.QueryRowContext(ctx, `SELECT batch_seq FROM purges LIMIT 1`).Scan(&seq)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		left := limit
		for _, q := range []string{
			`DELETE FROM results WHERE id IN (SELECT id FROM results WHERE batch_seq = ? LIMIT ?)`,
			`DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE batch_seq = ? AND state = 0 LIMIT ?)`,
			`DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE batch_seq = ? LIMIT ?)`,
		} {
			res, err := tx.ExecContext(ctx, q, seq, left)
			if err != nil {
				return err
			}
			deleted, _ := res.RowsAffected()
			left -= int(deleted)
			if left == 0 {
				break
			}
		}
		n = limit - left
		if left > 0 {
			_, err = tx.ExecContext(ctx, `DELETE FROM purges WHERE batch_seq = ?`, seq)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("purge requests: %w", err)
	}
	return n, nil
}

// ResultsList implements store.Store.
func (s *Store) ResultsList(ctx context.Context, p store.ResultsListParams) ([]store.Result, error) {
	q := `SELECT res.id, res.custom_id, res.result_type, res.result FROM results res`
	if p.WithParams {
		q = `SELECT res.id, res.custom_id, res.result_type, res.result, req.params FROM results res JOIN requests req ON req.id = res.id`
	}
	q += ` WHERE res.batch_seq = ? AND res.id > ?`
	args := []any{p.BatchSeq, p.AfterID}
	if p.SkipSucceeded {
		q += ` AND res.result_type != 'succeeded'`
	}
	if p.ResultType != "" {
		q += ` AND res.result_type = ?`
		args = append(args, p.ResultType)
	}
	if p.CustomIDPrefix != "" {
		// substr, not LIKE: LIKE is case-insensitive here and '_' is a
		// wildcard, and a custom_id may hold '_'.
		q += ` AND substr(res.custom_id, 1, ?) = ?`
		args = append(args, len(p.CustomIDPrefix), p.CustomIDPrefix)
	}
	q += ` ORDER BY res.id LIMIT ?`
	rows, err := s.r.QueryContext(ctx, q, append(args, p.Limit)...)
	if err != nil {
		return nil, fmt.Errorf("list results: %w", err)
	}
	defer rows.Close()
	out := make([]store.Result, 0, min(p.Limit, 1000))
	var size int64
	for rows.Next() {
		var r store.Result
		var result, params []byte
		dest := []any{&r.ID, &r.CustomID, &r.ResultType, &result}
		if p.WithParams {
			dest = append(dest, &params)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("list results: %w", err)
		}
		r.Result, r.Params = result, params
		out = append(out, r)
		if size += int64(len(result) + len(params)); p.MaxBytes > 0 && size >= p.MaxBytes {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list results: %w", err)
	}
	return out, nil
}
