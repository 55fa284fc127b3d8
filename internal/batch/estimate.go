package batch

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/batchd/batchd/internal/cost"
	"github.com/batchd/batchd/internal/store"
)

// BytesPerToken is the estimate's guess of input tokens: about four bytes
// of params a token, as the rate limiter guesses before a call. It counts
// the JSON around the text too, so it errs high for short prompts.
const BytesPerToken = 4

// ModelEstimate is one model's share of an estimate.
type ModelEstimate struct {
	Model    string `json:"model"`
	Requests int    `json:"requests"`
	// InputTokens is estimated from the params' size; MaxOutputTokens is
	// the sum of max_tokens, the most the requests can produce.
	InputTokens     int64 `json:"input_tokens"`
	MaxOutputTokens int64 `json:"max_output_tokens"`
	Priced          bool  `json:"priced"`
	// MinUSD is the cost at batch price with no output at all, MaxUSD with
	// every request writing its max_tokens.
	MinUSD float64 `json:"min_usd"`
	MaxUSD float64 `json:"max_usd"`
}

// Rejection is one reason requests would end errored without running, with
// how many and the first of them.
type Rejection struct {
	Reason        string `json:"reason"`
	Requests      int    `json:"requests"`
	FirstCustomID string `json:"first_custom_id"`
}

// Estimate is what a create body would cost before anything runs.
type Estimate struct {
	Requests int             `json:"requests"`
	Models   []ModelEstimate `json:"models"`
	MinUSD   float64         `json:"min_usd"`
	MaxUSD   float64         `json:"max_usd"`
	// Rejected counts the requests that would end errored without being
	// sent (a params error, a model no backend serves), by reason.
	Rejected   int         `json:"rejected"`
	Rejections []Rejection `json:"rejections"`
	Unpriced   []string    `json:"unpriced"`
}

// maxRejectionReasons bounds the distinct reasons an estimate lists, so a
// body of 100,000 differently broken requests stays a small answer.
const maxRejectionReasons = 20

// Estimate reads a create body with the same limits and envelope checks as
// Create, stores nothing, and returns the tokens and cost range per model
// and the requests that would be rejected. An envelope error (one that
// would refuse the create) is returned as that error.
func (s *Service) Estimate(ctx context.Context, workspace string, body io.Reader) (*Estimate, error) {
	est, err := s.estimate(newBodyGuard(&limitedReader{r: body, left: s.cfg.MaxBodyBytes}, s.cfg.MaxParamsBytes))
	if err != nil {
		return nil, err
	}
	return est, ctx.Err()
}

func (s *Service) estimate(r io.Reader) (*Estimate, error) {
	e := s.newEstimator()
	n, err := s.eachRequest(r, func(req store.NewRequest) error {
		e.add(req)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return e.result(n), nil
}

// estimator sums an estimate one request at a time, holding no params.
type estimator struct {
	s        *Service
	byModel  map[string]*ModelEstimate
	rejected map[string]*Rejection
	order    []string
	total    int
}

func (s *Service) newEstimator() *estimator {
	return &estimator{s: s, byModel: map[string]*ModelEstimate{}, rejected: map[string]*Rejection{}}
}

func (e *estimator) reject(reason, customID string) {
	e.total++
	if rj := e.rejected[reason]; rj != nil {
		rj.Requests++
		return
	}
	if len(e.rejected) >= maxRejectionReasons {
		reason = "other reasons"
		if rj := e.rejected[reason]; rj != nil {
			rj.Requests++
			return
		}
	}
	e.rejected[reason] = &Rejection{Reason: reason, Requests: 1, FirstCustomID: customID}
	e.order = append(e.order, reason)
}

// add counts one request as the dispatcher would run it.
func (e *estimator) add(req store.NewRequest) {
	model, maxTokens, reason := e.s.check(req.Params)
	switch {
	case reason != "":
		e.reject(reason, req.CustomID)
		return
	case req.Backend == "" && e.s.routed:
		e.reject(fmt.Sprintf("model: no backend serves %q", model), req.CustomID)
		return
	}
	m := e.byModel[model]
	if m == nil {
		m = &ModelEstimate{Model: model}
		e.byModel[model] = m
	}
	m.Requests++
	m.InputTokens += int64(max(1, len(req.Params)/BytesPerToken))
	m.MaxOutputTokens += maxTokens
}

// result prices the sums, for n requests in all.
func (e *estimator) result(n int) *Estimate {
	est := &Estimate{Requests: n, Models: []ModelEstimate{}, Rejections: []Rejection{}, Unpriced: []string{}, Rejected: e.total}
	prices := e.s.prices()
	for _, name := range slices.Sorted(maps.Keys(e.byModel)) {
		m := e.byModel[name]
		if p, ok := prices.Lookup(name); ok {
			m.Priced = true
			m.MinUSD = p.Batch(cost.Tokens{Input: m.InputTokens})
			m.MaxUSD = p.Batch(cost.Tokens{Input: m.InputTokens, Output: m.MaxOutputTokens})
			est.MinUSD += m.MinUSD
			est.MaxUSD += m.MaxUSD
		} else {
			est.Unpriced = append(est.Unpriced, name)
		}
		est.Models = append(est.Models, *m)
	}
	for _, reason := range e.order {
		est.Rejections = append(est.Rejections, *e.rejected[reason])
	}
	return est
}

// check is the dispatcher's check of params (Config.CheckParams), or only
// the model when none is configured.
func (s *Service) check(params json.RawMessage) (model string, maxTokens int64, reason string) {
	if s.cfg.CheckParams != nil {
		return s.cfg.CheckParams(params)
	}
	return paramsModel(params), 0, ""
}

// budget is what a publish checks for a batch estimated as est in a
// workspace whose monthly limit is limit. A model without a price cannot
// be held to a budget, so its requests are refused.
func (s *Service) budget(ctx context.Context, workspace string, limit float64, est *Estimate) (*store.Budget, error) {
	if len(est.Unpriced) > 0 {
		return nil, invalid("max_cost_usd: this workspace has a budget, and %s has no price to hold it to; add one under [[prices]] in the configuration", est.Unpriced[0])
	}
	now := s.cfg.Now().UTC()
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	rep, err := s.UsageList(ctx, workspace, UsageQuery{From: month})
	if err != nil {
		return nil, fmt.Errorf("check budget: %w", err)
	}
	return &store.Budget{LimitUSD: limit, SpentUSD: rep.Total.BatchUSD, CostUSD: est.MaxUSD}, nil
}
