package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/batchd/batchd/internal/store"
)

// Groups are flushed to the store at whichever limit comes first, which
// bounds the memory of a create whatever the body's size.
const (
	groupRequests = 1000
	groupBytes    = 4 << 20
)

// ErrBodyTooLarge is returned by the reader that enforces MaxBodyBytes.
var errBodyTooLarge = errors.New("body too large")

type limitedReader struct {
	r    io.Reader
	left int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		// Tell a body that ends exactly at the limit from one that goes on.
		var one [1]byte
		n, err := l.r.Read(one[:])
		if n > 0 {
			return 0, errBodyTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// Create reads a create body ({"requests":[{custom_id, params}, …]}) as a
// stream, validates the envelope, and stores the requests in groups, so a
// 256 MiB body never sits in memory. Any envelope error rejects the whole
// batch with a message naming the field, like Anthropic's
// "requests.0.custom_id: String should have at most 64 characters".
// Validation inside params is left to the dispatcher (errored results), as
// on Anthropic's API.
//
// betas are the create request's anthropic-beta values; backends that speak
// to Anthropic send them with every request of the batch.
func (s *Service) Create(ctx context.Context, workspace string, betas []string, body io.Reader) (*store.Batch, error) {
	now := s.cfg.Now()
	b, err := s.store.BatchInsert(ctx, store.BatchInsertParams{
		ID:            NewID("msgbatch_"),
		Workspace:     workspace,
		Betas:         betas,
		CreatedAt:     now,
		ExpiresAt:     now.Add(s.cfg.ExpireAfter),
		UploadUntil:   now.Add(s.cfg.UploadLease),
		MaxInProgress: s.cfg.MaxInProgress,
	})
	if err != nil {
		return nil, mapStore(err, "")
	}
	stop := s.holdUpload(ctx, b.Seq)
	// A workspace with a budget has each request estimated as it streams
	// in, so the batch's most possible cost is known at publish.
	limit, budgeted := s.cfg.Budgets[workspace]
	var est *estimator
	if budgeted {
		est = s.newEstimator()
	}
	total, err := s.ingest(ctx, b.Seq, newBodyGuard(&limitedReader{r: body, left: s.cfg.MaxBodyBytes}, s.cfg.MaxParamsBytes), est)
	stop()
	var budget *store.Budget
	if err == nil && budgeted {
		budget, err = s.budget(ctx, workspace, limit, est.result(int(total)))
	}
	return s.publish(ctx, b.Seq, total, err, budget)
}

// DefaultUploadLease is the default Config.UploadLease.
const DefaultUploadLease = time.Minute

// holdUpload renews the upload lease of batch seq every third of it until
// stop is called, so that however slowly the requests arrive the leader
// never discards a batch whose creator is alive.
func (s *Service) holdUpload(ctx context.Context, seq int64) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(s.cfg.UploadLease / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				// A failed renewal is not fatal: the next one may succeed
				// in time, and a discarded batch fails its publish.
				s.store.BatchUploadRenew(ctx, store.BatchUploadRenewParams{BatchSeq: seq, Until: s.cfg.Now().Add(s.cfg.UploadLease)})
			}
		}
	}()
	return func() { close(done); <-exited }
}

// publish ends the making of batch seq, by Create and Retry alike: when
// filling it succeeded (fillErr nil) it becomes visible with total
// requests; otherwise, or if publishing fails, it is discarded, so a failed
// create leaves nothing behind.
func (s *Service) publish(ctx context.Context, seq, total int64, fillErr error, budget *store.Budget) (*store.Batch, error) {
	err := fillErr
	var b *store.Batch
	if err == nil {
		b, err = s.store.BatchPublish(ctx, store.BatchPublishParams{BatchSeq: seq, Total: total, Budget: budget})
		var over *store.BudgetError
		if errors.As(err, &over) {
			err = &Error{Kind: KindInvalid, Message: fmt.Sprintf("max_cost_usd: this batch could cost up to $%.4f at batch price; with $%.4f spent this month and $%.4f held by batches in progress, it would pass the workspace's monthly budget of $%.4f",
				over.CostUSD, over.SpentUSD, over.ReservedUSD, over.LimitUSD)}
		}
	}
	if err != nil {
		// Use a fresh context: the request's may be what failed.
		if derr := s.store.BatchDiscard(context.WithoutCancel(ctx), seq); derr != nil {
			err = errors.Join(err, fmt.Errorf("discard batch: %w", derr))
		}
		return nil, err
	}
	s.cfg.OnCreated()
	return b, nil
}

// ingest stores a create body's requests in groups; est, when not nil,
// counts each of them too.
func (s *Service) ingest(ctx context.Context, seq int64, r io.Reader, est *estimator) (int64, error) {
	group := make([]store.NewRequest, 0, groupRequests)
	groupSize := 0
	flush := func() error {
		if len(group) == 0 {
			return nil
		}
		if err := s.store.RequestsInsert(ctx, store.RequestsInsertParams{BatchSeq: seq, Requests: group}); err != nil {
			return err
		}
		group, groupSize = group[:0], 0
		return nil
	}
	count, err := s.eachRequest(r, func(req store.NewRequest) error {
		if est != nil {
			est.add(req)
		}
		group = append(group, req)
		groupSize += len(req.Params)
		if len(group) >= groupRequests || groupSize >= groupBytes {
			return flush()
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := flush(); err != nil {
		return 0, err
	}
	return int64(count), nil
}

// eachRequest reads a create body as a stream and hands each request to
// fn, validated, with its model and backend, in order; fn may keep the
// request. Any envelope error ends the read with a message naming the
// field; the count is of the requests handed over.
func (s *Service) eachRequest(r io.Reader, fn func(store.NewRequest) error) (int, error) {
	dec := jsontext.NewDecoder(r)
	seen := make(map[string]int)
	if err := expectDelim(dec, '{', "body", "Input should be a valid dictionary"); err != nil {
		return 0, err
	}
	sawRequests := false
	count := 0
	for dec.PeekKind() != '}' {
		key, err := dec.ReadToken()
		if err != nil {
			return 0, syntaxError(err)
		}
		if key.String() != "requests" {
			if err := dec.SkipValue(); err != nil {
				return 0, syntaxError(err)
			}
			continue
		}
		if sawRequests {
			return 0, invalid("requests: duplicate key")
		}
		sawRequests = true
		if err := expectDelim(dec, '[', "requests", "Input should be a valid list"); err != nil {
			return 0, err
		}
		for dec.PeekKind() != ']' {
			if count >= s.cfg.MaxRequests {
				return 0, invalid("requests: List should have at most %d items after validation", s.cfg.MaxRequests)
			}
			req, err := readRequest(dec, count)
			if err != nil {
				return 0, err
			}
			if prev, dup := seen[req.CustomID]; dup {
				return 0, invalid("requests.%d.custom_id: custom_id %q is not unique (also used by requests.%d)", count, req.CustomID, prev)
			}
			seen[req.CustomID] = count
			req.Model = paramsModel(req.Params)
			req.Backend = s.cfg.Route(req.Model)
			if err := fn(req); err != nil {
				return 0, err
			}
			count++
		}
		if _, err := dec.ReadToken(); err != nil { // ']'
			return 0, syntaxError(err)
		}
	}
	if _, err := dec.ReadToken(); err != nil { // '}'
		return 0, syntaxError(err)
	}
	// Nothing but white space may follow the object.
	if _, err := dec.ReadToken(); err != io.EOF {
		if err == nil {
			return 0, invalid("body: unexpected data after the JSON object")
		}
		return 0, syntaxError(err)
	}
	if !sawRequests {
		return 0, invalid("requests: Field required")
	}
	if count == 0 {
		return 0, invalid("requests: List should have at least 1 item after validation, not 0")
	}
	return count, nil
}

func expectDelim(dec *jsontext.Decoder, want jsontext.Kind, field, msg string) error {
	kind := dec.PeekKind()
	if kind == 0 {
		// Peek failed: let ReadToken report why.
		_, err := dec.ReadToken()
		return syntaxError(err)
	}
	if kind != want {
		return invalid("%s: %s", field, msg)
	}
	_, err := dec.ReadToken()
	return syntaxError(err)
}

// readRequest reads one {custom_id, params} element in a single pass.
func readRequest(dec *jsontext.Decoder, i int) (store.NewRequest, error) {
	var req store.NewRequest
	// Not expectDelim: the field's name is formatted only for an error, not
	// for every request.
	switch dec.PeekKind() {
	case '{':
		if _, err := dec.ReadToken(); err != nil {
			return req, syntaxError(err)
		}
	case 0:
		_, err := dec.ReadToken() // Peek failed: let ReadToken report why.
		return req, syntaxError(err)
	default:
		return req, invalid("requests.%d: Input should be a valid dictionary", i)
	}
	var haveID, haveParams bool
	for dec.PeekKind() != '}' {
		key, err := dec.ReadToken()
		if err != nil {
			return req, syntaxError(err)
		}
		switch key.String() {
		case "custom_id":
			if dec.PeekKind() != '"' {
				if err := dec.SkipValue(); err != nil {
					return req, syntaxError(err)
				}
				return req, invalid("requests.%d.custom_id: Input should be a valid string", i)
			}
			tok, err := dec.ReadToken()
			if err != nil {
				return req, syntaxError(err)
			}
			req.CustomID = tok.String()
			haveID = true
		case "params":
			if dec.PeekKind() != '{' {
				if err := dec.SkipValue(); err != nil {
					return req, syntaxError(err)
				}
				return req, invalid("requests.%d.params: Input should be a valid dictionary", i)
			}
			v, err := dec.ReadValue()
			if err != nil {
				return req, syntaxError(err)
			}
			req.Params = append([]byte(nil), v...)
			haveParams = true
		default:
			if err := dec.SkipValue(); err != nil {
				return req, syntaxError(err)
			}
		}
	}
	if _, err := dec.ReadToken(); err != nil { // '}'
		return req, syntaxError(err)
	}
	if !haveID {
		return req, invalid("requests.%d.custom_id: Field required", i)
	}
	if err := checkCustomID(req.CustomID); err != "" {
		return req, invalid("requests.%d.custom_id: %s", i, err)
	}
	if !haveParams {
		return req, invalid("requests.%d.params: Field required", i)
	}
	return req, nil
}

// checkCustomID enforces ^[a-zA-Z0-9_-]{1,64}$ with Anthropic's messages.
func checkCustomID(id string) string {
	switch {
	case len(id) == 0:
		return "String should have at least 1 character"
	case len(id) > 64:
		return "String should have at most 64 characters"
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return "String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"
		}
	}
	return ""
}

// syntaxError turns a decoder failure into the client's error; a body over
// the size limit becomes a 413.
func syntaxError(err error) error {
	var domain *Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &domain): // the body guard's
		return domain
	case errors.Is(err, errBodyTooLarge):
		return &Error{Kind: KindTooLarge, Message: "request body is too large for a message batch"}
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return invalid("body: unexpected end of JSON input")
	}
	var se *jsontext.SyntacticError
	if errors.As(err, &se) {
		msg := strings.TrimPrefix(se.Error(), "jsontext: ")
		return invalid("body: invalid JSON: %s", msg)
	}
	// A read error from the connection: not the client's JSON.
	return fmt.Errorf("read body: %w", err)
}
