package batch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/batchd/batchd/internal/store"
)

// IdempotencyTTL is how long an Idempotency-Key keeps returning the batch
// its first request made.
const IdempotencyTTL = 24 * time.Hour

// idempotencyStale is how long a reservation left by a request that never
// finished (the server died under it) blocks its key.
const idempotencyStale = time.Hour

// Idempotent runs create at most once per Idempotency-Key: the official
// SDKs resend a POST whose answer was lost, and a second create of a large
// batch would run (and be paid for) twice. The same key with the same body
// within IdempotencyTTL returns the first batch; with another body it is a
// 400 naming the header; while the first request still runs, a 429 tells
// the client to try again shortly. An empty key runs create as it is.
func (s *Service) Idempotent(ctx context.Context, workspace, key string, body io.Reader, create func(io.Reader) (*store.Batch, error)) (*store.Batch, error) {
	if key == "" {
		return create(body)
	}
	if len(key) > 255 {
		return nil, invalid("Idempotency-Key: header should have at most 255 characters")
	}
	held, err := s.store.IdempotencyReserve(ctx, store.IdempotencyReserveParams{
		Workspace: workspace, Key: key, Now: s.cfg.Now(), TTL: IdempotencyTTL, StaleAfter: idempotencyStale,
	})
	if err != nil {
		return nil, err
	}
	if held != nil {
		if held.BatchID == "" {
			return nil, &Error{Kind: KindRateLimited, RetryAfter: 2 * time.Second,
				Message: "Idempotency-Key: a request with this key is still being processed; retry it shortly"}
		}
		h := sha256.New()
		if _, err := io.Copy(h, &limitedReader{r: body, left: s.cfg.MaxBodyBytes}); err != nil {
			return nil, syntaxError(err)
		}
		if hex.EncodeToString(h.Sum(nil)) != held.BodyHash {
			return nil, invalid("Idempotency-Key: this key was used in the last %s with a different request body; use a new key for a new request", IdempotencyTTL)
		}
		b, err := s.store.BatchGet(ctx, store.BatchGetParams{Workspace: workspace, ID: held.BatchID})
		if errors.Is(err, store.ErrNotFound) {
			return nil, invalid("Idempotency-Key: the message batch %s this key created has been deleted", held.BatchID)
		}
		return b, err
	}
	hb := &hashingReader{r: body, h: sha256.New()}
	b, err := create(hb)
	if err != nil {
		if rerr := s.store.IdempotencyRelease(context.WithoutCancel(ctx), workspace, key); rerr != nil {
			err = errors.Join(err, fmt.Errorf("release idempotency key: %w", rerr))
		}
		return nil, err
	}
	// A create reads its body to the end; a retry's "body" is its source id.
	io.Copy(io.Discard, hb)
	// If recording fails the batch still exists and is the answer; a
	// resend with this key then waits for the reservation to lapse rather
	// than creating the batch twice. A fresh context: a client that went
	// away as the batch was made is the very one that resends.
	_ = s.store.IdempotencyRecord(context.WithoutCancel(ctx), store.IdempotencyRecordParams{
		Workspace: workspace, Key: key, BodyHash: hex.EncodeToString(hb.h.Sum(nil)), BatchID: b.ID,
	})
	return b, nil
}

type hashingReader struct {
	r io.Reader
	h hash.Hash
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	return n, err
}
